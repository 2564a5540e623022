"""SQS queues: ingest, urgent, backfill and the scaler's nudges, each with its dead-letter queue.

Per role: the queue (SSE-KMS with the component's customer key, redriving to its DLQ after
``max_receive_count`` receives), the DLQ, and the DLQ's redrive-allow policy naming that queue alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from ctfleet.settings import QueueSpec, Settings
from infra.components.keys import customer_key
from infra.components.policies import account_administers, policy_document, statement

# SQS limits (standard queues); checked here so a bad setting fails at
# `pulumi preview` with a message naming it, not halfway through `pulumi up`.
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_MAX_VISIBILITY_S = 12 * 3600
_MAX_LONG_POLL_S = 20
_MIN_RETENTION_S = 60
_MAX_RETENTION_S = 14 * 24 * 3600
_MAX_RECEIVE_COUNT = 1000
# How long SQS reuses a data key before asking KMS again (fewer KMS calls, at the same protection).
DATA_KEY_REUSE_S = 300


def _check_queue(role: str, spec: QueueSpec) -> None:
    """Raise ``ValueError`` if ``spec`` is outside what SQS accepts.

    Parameters
    ----------
    role
        The queue's role (``ingest``, ``urgent``, ``backfill``), for the message.
    spec
        The queue's settings.

    Raises
    ------
    ValueError
        Naming the first attribute out of range.
    """
    for name in (spec.name, spec.dlq_name):
        if not _QUEUE_NAME.match(name):
            raise ValueError(f"{role} queue name {name!r}: SQS allows 1-80 letters, digits, '-' and '_'")
    if not 0 <= spec.visibility_timeout_s <= _MAX_VISIBILITY_S:
        raise ValueError(f"{role} queue visibility_timeout_s {spec.visibility_timeout_s} not in 0..{_MAX_VISIBILITY_S}")
    if not 0 <= spec.long_poll_s <= _MAX_LONG_POLL_S:
        raise ValueError(f"{role} queue long_poll_s {spec.long_poll_s} not in 0..{_MAX_LONG_POLL_S}")
    if not 1 <= spec.max_receive_count <= _MAX_RECEIVE_COUNT:
        raise ValueError(f"{role} queue max_receive_count {spec.max_receive_count} not in 1..{_MAX_RECEIVE_COUNT}")
    for what, seconds in (("retention_s", spec.retention_s), ("dlq_retention_s", spec.dlq_retention_s)):
        if not _MIN_RETENTION_S <= seconds <= _MAX_RETENTION_S:
            raise ValueError(f"{role} queue {what} {seconds} not in {_MIN_RETENTION_S}..{_MAX_RETENTION_S}")
    # A standard queue's message keeps its original enqueue time when it moves
    # to the DLQ, so a DLQ that keeps messages for less time than the source
    # would drop dead letters before anyone looks at them.
    if spec.dlq_retention_s < spec.retention_s:
        raise ValueError(f"{role} queue dlq_retention_s {spec.dlq_retention_s} < retention_s {spec.retention_s}")


@dataclass(frozen=True)
class QueuesArgs:
    """What :class:`Queues` declares.

    Attributes
    ----------
    queues
        Queue settings by role (``ingest``, ``urgent``, ``backfill``); the role
        names the Pulumi resources, the spec names the AWS queues.
    tags
        Tags put on every queue.
    """

    queues: Mapping[str, QueueSpec]
    account_id: pulumi.Input[str] = ""
    partition: pulumi.Input[str] = "aws"
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role, spec in self.queues.items():
            _check_queue(role, spec)

    @classmethod
    def from_settings(cls, settings: Settings, tags: Mapping[str, str] | None = None, *,
                      account_id: pulumi.Input[str] = "", partition: pulumi.Input[str] = "aws") -> "QueuesArgs":
        """The queues ``settings`` names.

        Parameters
        ----------
        settings
            The stack's settings.
        tags
            Tags put on every queue.

        Returns
        -------
        QueuesArgs
        """
        return cls(
            queues={
                "ingest": settings.ingest_queue,
                "urgent": settings.urgent_queue,
                "backfill": settings.backfill_queue,
                "scaler": settings.scaler_queue,
            },
            account_id=account_id,
            partition=partition,
            tags=dict(tags or {}),
        )


class Queues(pulumi.ComponentResource):
    """Each queue in :class:`QueuesArgs` with its dead-letter queue.

    Every queue is encrypted at rest with the component's customer KMS key (``key``). Its key
    policy leaves its use to IAM in this account and lets S3 encrypt the upload notifications it
    sends to the ingest queue (for this account's buckets only); the roles that send and receive
    hold ``kms:GenerateDataKey`` / ``kms:Decrypt`` on it through SQS.

    Attributes
    ----------
    queues
        The queues by role.
    dlqs
        Their dead-letter queues by role.
    """

    def __init__(self, name: str, args: QueuesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        """Declare the queues.

        Parameters
        ----------
        name
            The component's Pulumi name.
        args
            What to declare.
        opts
            Pulumi options for the component.
        """
        super().__init__("ctfleet:infra:Queues", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        self.key: aws.kms.Key = customer_key(
            name, description="ctfleet job queues", alias=f"alias/{next(iter(args.queues.values())).name}-queues",
            tags=tags, opts=child,
            policy=policy_document(
                account_administers(args.partition, args.account_id),
                statement("S3Notifies", "Allow", {"Service": "s3.amazonaws.com"},
                          ["kms:Decrypt", "kms:GenerateDataKey"], "*",
                          {"StringEquals": {"aws:SourceAccount": args.account_id}}),
            ))
        encryption = {"kms_master_key_id": self.key.arn, "kms_data_key_reuse_period_seconds": DATA_KEY_REUSE_S}
        self.queues: dict[str, aws.sqs.Queue] = {}
        self.dlqs: dict[str, aws.sqs.Queue] = {}
        for role, spec in args.queues.items():
            dlq = aws.sqs.Queue(
                f"{name}-{role}-dlq",
                name=spec.dlq_name,
                message_retention_seconds=spec.dlq_retention_s,
                **encryption,
                tags=tags,
                opts=child,
            )
            queue = aws.sqs.Queue(
                f"{name}-{role}",
                name=spec.name,
                visibility_timeout_seconds=spec.visibility_timeout_s,
                receive_wait_time_seconds=spec.long_poll_s,
                message_retention_seconds=spec.retention_s,
                redrive_policy=pulumi.Output.json_dumps(
                    {"deadLetterTargetArn": dlq.arn, "maxReceiveCount": spec.max_receive_count}
                ),
                **encryption,
                tags=tags,
                opts=child,
            )
            # Only this queue may dead-letter into its DLQ. A separate resource,
            # because the queue already needs the DLQ's ARN (a cycle otherwise).
            aws.sqs.RedriveAllowPolicy(
                f"{name}-{role}-dlq-allow",
                queue_url=dlq.url,
                redrive_allow_policy=pulumi.Output.json_dumps(
                    {"redrivePermission": "byQueue", "sourceQueueArns": [queue.arn]}
                ),
                opts=child,
            )
            self.queues[role] = queue
            self.dlqs[role] = dlq
        self.register_outputs(
            {
                **{f"{role}_url": q.url for role, q in self.queues.items()},
                **{f"{role}_dlq_url": q.url for role, q in self.dlqs.items()},
            }
        )
