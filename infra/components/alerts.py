"""The SNS topic triage alerts (and, later, alarms) are published to, and its KMS key.

The key is a customer key whose policy lets CloudWatch alarms publish to the
encrypted topic; its alias is ``alias/{topic name}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from ctfleet.settings import Settings
from infra.components.keys import customer_key
from infra.components.policies import account_administers, policy_document, statement

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


@dataclass(frozen=True)
class AlertsArgs:
    """What :class:`Alerts` declares.

    Attributes
    ----------
    topic_name
        Exact SNS topic name.
    account_id
        This account: its root principal administers the topic's key.
    partition
        The AWS partition (``aws``, ``aws-us-gov``, ...) for ARNs built here.
    tags
        Tags put on the key and the topic.
    """

    topic_name: str
    account_id: pulumi.Input[str]
    partition: pulumi.Input[str] = "aws"
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _TOPIC_NAME.match(self.topic_name):
            raise ValueError(f"topic name {self.topic_name!r}: SNS allows 1-256 letters, digits, '-' and '_'")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        account_id: pulumi.Input[str],
        partition: pulumi.Input[str] = "aws",
        tags: Mapping[str, str] | None = None,
    ) -> "AlertsArgs":
        """The alerts topic ``settings`` names.

        Parameters
        ----------
        settings
            The stack's settings.
        account_id
            The AWS account the stack deploys to.
        partition
            The AWS partition.
        tags
            Tags put on the key and the topic.

        Returns
        -------
        AlertsArgs
        """
        return cls(
            topic_name=settings.alerts_topic,
            account_id=account_id,
            partition=partition,
            tags=dict(tags or {}),
        )


class Alerts(pulumi.ComponentResource):
    """A KMS-encrypted SNS topic for triage alerts.

    The topic uses its own customer key rather than ``aws/sns``: CloudWatch
    alarms (added with the alarms component) can only publish to an encrypted
    topic whose key policy lets ``cloudwatch.amazonaws.com`` use the key, and
    an AWS-managed key's policy cannot be changed.

    Attributes
    ----------
    key
        The topic's KMS key.
    topic
        The topic.
    """

    def __init__(self, name: str, args: AlertsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        """Declare the topic and its key.

        Parameters
        ----------
        name
            The component's Pulumi name.
        args
            What to declare.
        opts
            Pulumi options for the component.
        """
        super().__init__("ctfleet:infra:Alerts", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        self.key: aws.kms.Key = customer_key(
            name,
            description=f"ctfleet alerts topic {args.topic_name}",
            alias=f"alias/{args.topic_name}",
            tags=tags,
            opts=child,
            policy=policy_document(
                # The default key policy: IAM policies in this account decide
                # who else may use the key (the triage function's role, added later).
                account_administers(args.partition, args.account_id),
                statement(
                    "CloudWatchAlarmsPublish",
                    "Allow",
                    {"Service": "cloudwatch.amazonaws.com"},
                    ["kms:Decrypt", "kms:GenerateDataKey*"],
                    "*",
                ),
            ),
        )
        self.topic: aws.sns.Topic = aws.sns.Topic(
            f"{name}-topic",
            name=args.topic_name,
            kms_master_key_id=self.key.arn,
            tags=tags,
            opts=child,
        )
        self.register_outputs({"topic_arn": self.topic.arn})
