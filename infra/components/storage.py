"""S3 storage: the raw (PHI), studies (de-identified) and results buckets.

Declares one customer KMS key (rotated yearly) and, per bucket, SSE-KMS
default encryption with that key, a block of every kind of public access, a
policy refusing requests that are not TLS, and lifecycle rules (incomplete
multipart uploads aborted everywhere). The raw bucket expires ``raw/`` as a
backstop to ingest's own deletes and notifies the ingest queue of every
object created under ``raw/`` (a manifest starts ingest; a file that arrives
after its upload ended is deleted), with the queue policy that lets it; the results
bucket is versioned and expires superseded versions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from ctfleet.settings import Settings
from infra.components.keys import customer_key
from infra.components.policies import policy_document, statement

# S3 general-purpose bucket naming rules (dots allowed but they break
# virtual-hosted TLS, so settings never produce them; still legal here).
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

# Where uploads land in the raw bucket: ``ctfleet.contracts.raw_prefix`` builds
# keys under it. infra/ reads only settings, so it is repeated here and a unit
# test checks the two agree.
RAW_PREFIX = "raw/"


def _check_bucket(role: str, name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a legal S3 bucket name."""
    if not _BUCKET_NAME.match(name) or ".." in name:
        raise ValueError(
            f"{role} bucket name {name!r} ({len(name)} chars) is not a legal S3 name: "
            "3-63 lowercase letters, digits, '-' or '.'; shorten the stack name or the bucket suffix"
        )


@dataclass(frozen=True)
class StorageArgs:
    """What :class:`Storage` declares.

    Attributes
    ----------
    raw_bucket, studies_bucket, results_bucket
        Exact bucket names (no Pulumi auto-suffix: the runtime finds them by name).
    raw_expiry_days
        Days after which anything under ``raw/`` is deleted.
    manifest_name
        Object name whose creation under ``raw/`` completes an upload.
    ingest_queue_arn, ingest_queue_url
        The queue S3 notifies of completed uploads.
    account_id
        This account, so only our own bucket may send to the ingest queue.
    key_alias
        Alias of the KMS key (``alias/...``), so people find it in the console.
    raw_prefix
        Key prefix of uploads in the raw bucket.
    multipart_abort_days
        Days after which incomplete multipart uploads are aborted (their parts
        are billed but invisible).
    results_noncurrent_days
        Days a superseded result version is kept: results are overwritten in
        place on a rerun, and versioning without an expiry grows forever.
    tags
        Tags put on the key and the buckets.
    """

    raw_bucket: str
    studies_bucket: str
    results_bucket: str
    raw_expiry_days: int
    manifest_name: str
    ingest_queue_arn: pulumi.Input[str]
    ingest_queue_url: pulumi.Input[str]
    account_id: pulumi.Input[str]
    key_alias: str
    raw_prefix: str = RAW_PREFIX
    multipart_abort_days: int = 1
    web_origins: tuple[str, ...] = ()
    results_noncurrent_days: int = 90
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role, name in self.buckets.items():
            _check_bucket(role, name)
        if len(set(self.buckets.values())) != 3:
            raise ValueError(f"bucket names must differ: {self.buckets}")
        if self.raw_expiry_days < 1:
            raise ValueError(f"raw_expiry_days {self.raw_expiry_days} must be >= 1 (S3 expires in whole days)")
        if not re.match(r"^alias/[A-Za-z0-9/_-]{1,250}$", self.key_alias) or self.key_alias.startswith("alias/aws/"):
            raise ValueError(f"key_alias {self.key_alias!r} must be alias/ then letters, digits, '/', '_' or '-', not alias/aws/")
        for origin in self.web_origins:
            if not re.match(r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?$", origin):
                raise ValueError(f"web origin {origin!r}: https://host[:port], no path (ctfleet:webOrigin)")
        if not self.manifest_name or "/" in self.manifest_name:
            raise ValueError(f"manifest_name {self.manifest_name!r} must be a non-empty object name without '/'")

    @property
    def buckets(self) -> dict[str, str]:
        """Bucket names by role: ``raw``, ``studies``, ``results``."""
        return {"raw": self.raw_bucket, "studies": self.studies_bucket, "results": self.results_bucket}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        ingest_queue_arn: pulumi.Input[str],
        ingest_queue_url: pulumi.Input[str],
        account_id: pulumi.Input[str],
        web_origins: tuple[str, ...] = (),
        tags: Mapping[str, str] | None = None,
    ) -> "StorageArgs":
        """The buckets ``settings`` names, notifying the given ingest queue.

        Parameters
        ----------
        settings
            The stack's settings.
        ingest_queue_arn, ingest_queue_url
            The ingest queue (from :class:`infra.components.queues.Queues`).
        account_id
            The AWS account the stack deploys to.
        tags
            Tags put on the key and the buckets.

        Returns
        -------
        StorageArgs
        """
        return cls(
            raw_bucket=settings.raw_bucket,
            studies_bucket=settings.studies_bucket,
            results_bucket=settings.results_bucket,
            raw_expiry_days=settings.raw_expiry_days,
            manifest_name=settings.manifest_name,
            ingest_queue_arn=ingest_queue_arn,
            ingest_queue_url=ingest_queue_url,
            account_id=account_id,
            key_alias=f"alias/{settings.stack}-storage",
            web_origins=tuple(web_origins),
            tags=dict(tags or {}),
        )


class Storage(pulumi.ComponentResource):
    """The three buckets, their KMS key, and the raw bucket's upload notification.

    Attributes
    ----------
    key
        The customer KMS key all three buckets encrypt with.
    buckets
        The buckets by role: ``raw``, ``studies``, ``results``.
    ingest_queue_policy
        The ingest queue's policy (lets the raw bucket send to it). SQS keeps
        one policy per queue: later statements for that queue belong here.
    notification
        The raw bucket's notification (S3 keeps one configuration per bucket).
    """

    def __init__(self, name: str, args: StorageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        """Declare the storage.

        Parameters
        ----------
        name
            The component's Pulumi name.
        args
            What to declare.
        opts
            Pulumi options for the component.
        """
        super().__init__("ctfleet:infra:Storage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        # A customer key (not aws/s3) so access to PHI can be audited and
        # revoked per key. No explicit policy: the default one leaves grants to
        # IAM, where the worker and function roles (added later) get them.
        self.key: aws.kms.Key = customer_key(
            name,
            description=f"ctfleet S3 encryption ({args.raw_bucket}, {args.studies_bucket}, {args.results_bucket})",
            alias=args.key_alias,
            tags=tags,
            opts=child,
        )
        self.buckets: dict[str, aws.s3.Bucket] = {
            role: self._bucket(f"{name}-{role}", role, bucket_name, args, tags)
            for role, bucket_name in args.buckets.items()
        }
        self.ingest_queue_policy: aws.sqs.QueuePolicy = self._ingest_queue_policy(name, args)
        self.notification: aws.s3.BucketNotification = self._upload_notification(name, args)
        self.register_outputs(
            {
                "key_arn": self.key.arn,
                **{f"{role}_bucket": bucket.bucket for role, bucket in self.buckets.items()},
            }
        )

    def _bucket(
        self, prefix: str, role: str, bucket_name: str, args: StorageArgs, tags: dict[str, str]
    ) -> aws.s3.Bucket:
        """Declare one bucket (Pulumi name ``prefix``) and its sub-configurations."""
        # `bucket=` pins the exact name; v7's Bucket (ex-BucketV2) takes every
        # sub-configuration as its own resource, as below.
        bucket = aws.s3.Bucket(
            prefix, bucket=bucket_name, tags={**tags, "ctfleet:role": role}, opts=pulumi.ResourceOptions(parent=self)
        )
        self._encryption(prefix, bucket)
        self._tls_only_policy(prefix, bucket, self._public_access_block(prefix, bucket))
        if role == "results":
            self._versioning(prefix, bucket)
        if args.web_origins:
            self._cors(prefix, role, bucket, args.web_origins)
        aws.s3.BucketLifecycleConfiguration(
            f"{prefix}-lifecycle",
            bucket=bucket.id,
            rules=lifecycle_rules(role, args),
            opts=pulumi.ResourceOptions(parent=self),
        )
        return bucket

    def _cors(self, prefix: str, role: str, bucket: aws.s3.Bucket, origins: tuple[str, ...]) -> None:
        """Let the web page's origin (only) POST uploads to the raw bucket and read the other two.

        The browser sends files straight to S3 with presigned POSTs; radiologists' overlays and
        results are fetched with presigned GETs. No other origin, no other method.
        """
        methods = ["POST"] if role == "raw" else ["GET", "HEAD"]
        aws.s3.BucketCorsConfiguration(
            f"{prefix}-cors", bucket=bucket.id,
            cors_rules=[aws.s3.BucketCorsConfigurationCorsRuleArgs(
                allowed_origins=list(origins), allowed_methods=methods, allowed_headers=["*"],
                expose_headers=["ETag"], max_age_seconds=3600)],
            opts=pulumi.ResourceOptions(parent=self))

    def _encryption(self, prefix: str, bucket: aws.s3.Bucket) -> None:
        """Encrypt ``bucket`` by default with the component's key."""
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{prefix}-encryption",
            bucket=bucket.id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                        sse_algorithm="aws:kms", kms_master_key_id=self.key.arn
                    ),
                    # Bucket keys cut KMS requests (and their cost and
                    # throttling) by orders of magnitude for per-slice objects.
                    bucket_key_enabled=True,
                )
            ],
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _public_access_block(self, prefix: str, bucket: aws.s3.Bucket) -> aws.s3.BucketPublicAccessBlock:
        """Block every kind of public access to ``bucket``."""
        return aws.s3.BucketPublicAccessBlock(
            f"{prefix}-public-access-block",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _tls_only_policy(
        self, prefix: str, bucket: aws.s3.Bucket, access_block: aws.s3.BucketPublicAccessBlock
    ) -> None:
        """Refuse any request to ``bucket`` that is not TLS."""
        aws.s3.BucketPolicy(
            f"{prefix}-policy",
            bucket=bucket.id,
            policy=policy_document(
                statement(
                    "DenyInsecureTransport",
                    "Deny",
                    "*",
                    "s3:*",
                    [bucket.arn, pulumi.Output.concat(bucket.arn, "/*")],
                    {"Bool": {"aws:SecureTransport": "false"}},
                )
            ),
            # S3 rejects concurrent changes to one bucket's access settings;
            # ordering the policy after the block avoids a flaky first `up`.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[access_block]),
        )

    def _versioning(self, prefix: str, bucket: aws.s3.Bucket) -> None:
        """Keep superseded versions of ``bucket``'s objects (results are overwritten on a rerun)."""
        aws.s3.BucketVersioning(
            f"{prefix}-versioning",
            bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _ingest_queue_policy(self, name: str, args: StorageArgs) -> aws.sqs.QueuePolicy:
        """Let the raw bucket, and only it, send to the ingest queue."""
        return aws.sqs.QueuePolicy(
            f"{name}-ingest-queue-policy",
            queue_url=args.ingest_queue_url,
            policy=policy_document(
                statement(
                    "RawBucketNotifies",
                    "Allow",
                    {"Service": "s3.amazonaws.com"},
                    "sqs:SendMessage",
                    args.ingest_queue_arn,
                    # Bucket names are global and reusable once deleted: the
                    # account condition stops a same-named bucket elsewhere
                    # from sending us uploads.
                    {
                        "ArnEquals": {"aws:SourceArn": self.buckets["raw"].arn},
                        "StringEquals": {"aws:SourceAccount": args.account_id},
                    },
                )
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _upload_notification(self, name: str, args: StorageArgs) -> aws.s3.BucketNotification:
        """Tell the ingest queue of every object created in raw/: a manifest starts ingest; any
        other file is checked against its upload (deleted if the upload has ended)."""
        return aws.s3.BucketNotification(
            f"{name}-raw-notification",
            bucket=self.buckets["raw"].id,
            queues=[
                aws.s3.BucketNotificationQueueArgs(
                    id="raw-to-ingest",
                    queue_arn=args.ingest_queue_arn,
                    events=["s3:ObjectCreated:*"],
                    # Every object, not only the manifest: a file POSTed again after its upload
                    # ended must be seen to be deleted (one cheap message per file; the manifest,
                    # written last, is the one that starts the work).
                    filter_prefix=args.raw_prefix,
                )
            ],
            # S3 checks it may send to the queue when the notification is put.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.ingest_queue_policy]),
        )


def _lifecycle_rule(rule_id: str, prefix: str, **action: Any) -> aws.s3.BucketLifecycleConfigurationRuleArgs:
    """An enabled lifecycle rule applying ``action`` (one rule argument) to keys under ``prefix``."""
    return aws.s3.BucketLifecycleConfigurationRuleArgs(
        id=rule_id,
        status="Enabled",
        filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=prefix),
        **action,
    )


def lifecycle_rules(role: str, args: StorageArgs) -> list[aws.s3.BucketLifecycleConfigurationRuleArgs]:
    """The lifecycle rules of the ``role`` bucket.

    Every bucket aborts incomplete multipart uploads; the raw bucket also
    expires ``raw/``, the results bucket its superseded versions.

    Parameters
    ----------
    role
        ``raw``, ``studies`` or ``results``.
    args
        The storage's arguments (days and prefix).

    Returns
    -------
    list of aws.s3.BucketLifecycleConfigurationRuleArgs
        In a fixed order, so a rerun shows no diff.
    """
    rules = [
        _lifecycle_rule(
            "abort-incomplete-multipart",
            "",
            abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                days_after_initiation=args.multipart_abort_days
            ),
        )
    ]
    if role == "raw":
        # Ingest deletes raw objects once read; this is the backstop for
        # uploads that never complete or fail before that delete.
        rules.append(
            _lifecycle_rule(
                "expire-raw",
                args.raw_prefix,
                expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=args.raw_expiry_days),
            )
        )
    if role == "results":
        rules.append(
            _lifecycle_rule(
                "expire-noncurrent-results",
                "",
                noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                    noncurrent_days=args.results_noncurrent_days
                ),
            )
        )
    return rules
