"""The Lambda functions: api, ingest, scaler, triage, sweeper and audit, from one code asset.

* **Code**: one zip (``python -m infra.asset``: ``ctfleet/`` and ``dispatcher/`` with their pinned
  dependencies, no torch), over Lambda's 50 MB direct-upload limit, so it is uploaded to the
  code bucket under its sha256 (a new key only when the code or a pin changes) and every function
  points at that object. The code bucket holds no study data: SSE-S3, public access blocked,
  TLS only, versioned.
* **Triggers**: ingest takes the ingest queue (partial batch responses); the scaler runs on a
  one-minute EventBridge schedule and on the nudges ingest sends to the scaler queue (one pass at a
  time: reserved concurrency 1); triage takes the studies table's stream and audit both tables'
  streams, with bisect-on-error, partial batch responses and a failure destination (the stream
  failures queue, which raises an alarm); the sweeper runs on a schedule.
* **Roles**: one per function, each statement naming its resources. The scaler's Auto Scaling reads
  (``autoscaling:Describe*``) accept no resource but ``*`` in IAM; they are limited to the stack's
  region.
* **Environment**: the runtime's settings (``Settings.to_env()``) less the variables Lambda reserves,
  plus the user pool the API trusts.

Imports pulumi, pulumi_aws, ``ctfleet.settings`` and ``infra.components.policies``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.components.policies import allow, assumed_by, policy_document, statement

RUNTIME = "python3.12"
ARCHITECTURE = "x86_64"
# Set by Lambda itself; a function may not declare them.
RESERVED_ENV = frozenset({"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                          "AWS_SESSION_TOKEN", "AWS_LAMBDA_FUNCTION_NAME", "_HANDLER", "LAMBDA_TASK_ROOT"})
# Auto Scaling's Describe calls have no resource types in IAM: "*" only (limited by region).
UNSCOPED_READS = ("autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeAutoScalingInstances",
                  "autoscaling:DescribeScalingActivities")


@dataclass(frozen=True)
class FunctionSpec:
    """One function: its handler, limits and trigger-independent settings."""

    handler: str
    description: str
    timeout_s: int
    memory_mb: int = 512
    ephemeral_mb: int = 512
    reserved_concurrency: int | None = None


# Ingest's 60 s timeout is what the ingest queue's visibility (360 s, 6x) is sized for (Settings.ingest_queue).
FUNCTIONS: dict[str, FunctionSpec] = {
    "api": FunctionSpec("dispatcher.api.lambda_handler", "ctfleet API (uploads, worklist, results, cost)", 29,
                        memory_mb=1024),
    "ingest": FunctionSpec("dispatcher.ingest.lambda_handler", "validate and de-identify an upload, queue its job",
                           60, memory_mb=3008, ephemeral_mb=10240),
    "scaler": FunctionSpec("dispatcher.scaler.lambda_handler", "size the GPU fleet from the queues", 30,
                           reserved_concurrency=1),
    "triage": FunctionSpec("dispatcher.triage.lambda_handler", "send the triage alert of an urgent finding", 60),
    "sweeper": FunctionSpec("dispatcher.sweeper.lambda_handler", "expire uploads, retry alerts, settle dead letters",
                            300, memory_mb=1024),
    "audit": FunctionSpec("dispatcher.audit.lambda_handler", "write the audit trail from the tables' streams", 60),
}


@dataclass(frozen=True)
class FunctionsArgs:
    """What :class:`Functions` declares.

    Attributes
    ----------
    stack, region
        Name prefix (``Settings.stack``) and region.
    code_bucket
        The code bucket's name (``Settings.code_bucket``).
    code_path, code_sha256
        The built asset (``make lambda-asset``) and its sha256 (the object's key).
    env
        The functions' environment (``Settings.to_env()`` and the auth settings); Lambda's reserved
        variables are dropped.
    buckets, queues, dead_letters, tables, streams
        ARNs by role (``raw``/``studies``/``results``; ``ingest``/``urgent``/``backfill``/``scaler``;
        the table roles; ``studies``/``uploads``).
    storage_key_arn, queue_key_arn, alerts_key_arn
        The KMS keys of the buckets, the queues and the alert topics.
    alerts_topic_arn
        The alerts topic; facility topics are ``{alerts topic}-{facility}``.
    secrets_prefix_arn, secrets_key_arn
        ARN prefix of the facility secrets (``...:secret:{stack}/facility/``) and their KMS key.
    group_arn
        The fleet's group (``None``: no fleet; the scaler is declared without it).
    failures_queue
        Name of the queue that receives stream records a function gave up on.
    schedule_s, sweep_s
        The scaler's schedule (``FleetSpec.interval_s``) and the sweeper's.
    """

    stack: str
    region: str
    code_bucket: str
    code_path: str
    code_sha256: str
    env: Mapping[str, pulumi.Input[str]]
    buckets: Mapping[str, pulumi.Input[str]]
    queues: Mapping[str, pulumi.Input[str]]
    dead_letters: Mapping[str, pulumi.Input[str]]
    tables: Mapping[str, pulumi.Input[str]]
    streams: Mapping[str, pulumi.Input[str]]
    storage_key_arn: pulumi.Input[str]
    queue_key_arn: pulumi.Input[str]
    alerts_key_arn: pulumi.Input[str]
    alerts_topic_arn: pulumi.Input[str]
    secrets_prefix_arn: pulumi.Input[str]
    secrets_key_arn: pulumi.Input[str]
    failures_queue: str
    group_arn: pulumi.Input[str] | None = None
    schedule_s: float = 60.0
    sweep_s: float = 300.0
    log_retention_days: int = 30
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.code_sha256) != 64:
            raise ValueError(f"code_sha256 {self.code_sha256!r} is no sha256 (make lambda-asset builds the asset)")
        if self.schedule_s < 60 or self.sweep_s < 60:
            raise ValueError("EventBridge schedules run at most once a minute")


def _rate(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"rate({minutes} minute{'s' if minutes > 1 else ''})"


def _sub(arn: pulumi.Input[str], suffix: str) -> pulumi.Output[str]:
    return pulumi.Output.concat(arn, suffix)


def _index(table_arn: pulumi.Input[str]) -> pulumi.Output[str]:
    return _sub(table_arn, "/index/*")


def function_statements(role: str, a: FunctionsArgs, failures_arn: pulumi.Input[str]) -> list[dict[str, Any]]:
    """The statements of ``role``'s policy (its logs are added by :class:`Functions`)."""
    t, b, q, d = a.tables, a.buckets, a.queues, a.dead_letters
    via_s3 = {"StringEquals": {"kms:ViaService": f"s3.{a.region}.amazonaws.com"}}
    via_sqs = {"StringEquals": {"kms:ViaService": f"sqs.{a.region}.amazonaws.com"}}
    storage_key = allow("StorageKey", ["kms:Decrypt", "kms:GenerateDataKey"], [a.storage_key_arn], via_s3)
    queue_key = allow("QueueKey", ["kms:Decrypt", "kms:GenerateDataKey"], [a.queue_key_arn], via_sqs)
    secrets = [allow("FacilitySecrets", ["secretsmanager:GetSecretValue"], [_sub(a.secrets_prefix_arn, "*")]),
               allow("SecretsKey", ["kms:Decrypt"], [a.secrets_key_arn],
                     {"StringEquals": {"kms:ViaService": f"secretsmanager.{a.region}.amazonaws.com"}})]
    streams = allow("Streams", ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator",
                                "dynamodb:ListStreams"], [])
    failures = allow("StreamFailures", ["sqs:SendMessage"], [failures_arn])
    consume = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes",
               "sqs:GetQueueUrl"]
    topics = [a.alerts_topic_arn, _sub(a.alerts_topic_arn, "-*")]
    alerts = [allow("Alerts", ["sns:Publish"], topics),
              allow("AlertsKey", ["kms:Decrypt", "kms:GenerateDataKey"], [a.alerts_key_arn],
                    {"StringEquals": {"kms:ViaService": f"sns.{a.region}.amazonaws.com"}})]
    if role == "api":
        return [
            allow("Records", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query",
                              "dynamodb:ConditionCheckItem", "dynamodb:TransactWriteItems"],
                  [t["uploads"], _index(t["uploads"]), t["studies"], _index(t["studies"])]),
            allow("Reads", ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan"],
                  [t["facilities"], t["ledger"], _index(t["ledger"]), t["audit"], _index(t["audit"])]),
            allow("Uploads", ["s3:PutObject"], [_sub(b["raw"], "/raw/*")]),
            allow("Results", ["s3:GetObject"], [_sub(b["results"], "/results/*")]),
            storage_key, *secrets,
        ]
    if role == "ingest":
        return [
            allow("IngestQueue", consume, [q["ingest"]]),
            allow("Jobs", ["sqs:SendMessage", "sqs:GetQueueUrl"], [q["urgent"], q["backfill"], q["scaler"]]),
            allow("ReadRaw", ["s3:GetObject", "s3:DeleteObject"], [_sub(b["raw"], "/raw/*")]),
            allow("ListRaw", ["s3:ListBucket"], [b["raw"]], {"StringLike": {"s3:prefix": ["raw/*"]}}),
            allow("WriteStudies", ["s3:PutObject"], [_sub(b["studies"], "/studies/*")]),
            allow("Records", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                              "dynamodb:ConditionCheckItem", "dynamodb:TransactWriteItems"],
                  [t["uploads"], t["studies"], t["facilities"]]),
            storage_key, queue_key, *secrets,
        ]
    if role == "scaler":
        statements = [
            allow("Queues", ["sqs:GetQueueAttributes", "sqs:GetQueueUrl"], [q["urgent"], q["backfill"]]),
            allow("Nudges", consume, [q["scaler"]]),
            queue_key,
            allow("UnscopedReads", list(UNSCOPED_READS), ["*"], {"StringEquals": {"aws:RequestedRegion": a.region}}),
        ]
        if a.group_arn is not None:
            statements.append(allow("OwnGroup", ["autoscaling:SetDesiredCapacity", "autoscaling:UpdateAutoScalingGroup"],
                                    [a.group_arn]))
        return statements
    if role == "triage":
        return [
            {**streams, "Resource": [a.streams["studies"]]}, failures,
            allow("Records", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
                  [t["studies"], t["alerts"], t["facilities"]]),
            *alerts, *secrets, queue_key,
        ]
    if role == "sweeper":
        return [
            allow("Records", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"],
                  [t["uploads"], _index(t["uploads"]), t["studies"], _index(t["studies"]), t["alerts"],
                   t["facilities"]]),
            allow("Raw", ["s3:DeleteObject"], [_sub(b["raw"], "/raw/*")]),
            allow("ListRaw", ["s3:ListBucket"], [b["raw"]], {"StringLike": {"s3:prefix": ["raw/*"]}}),
            allow("DeadLetters", consume, list(d.values())),
            *alerts, *secrets, queue_key, storage_key,
        ]
    if role == "audit":
        return [
            {**streams, "Resource": [a.streams["studies"], a.streams["uploads"]]}, failures,
            allow("Trail", ["dynamodb:PutItem"], [t["audit"]]),
            queue_key,
        ]
    raise ValueError(f"unknown function {role!r}")


class Functions(pulumi.ComponentResource):
    """The code bucket and object, the functions, their roles, logs and triggers.

    Attributes
    ----------
    functions, roles, log_groups
        By function role (``api``, ``ingest`` ...).
    failures
        The stream failures queue.
    """

    def __init__(self, name: str, args: FunctionsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ctfleet:infra:Functions", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        code = self._code_bucket(name, args, tags, child)
        self.object = aws.s3.BucketObjectv2(
            f"{name}-code", bucket=code.bucket, key=f"lambda/{args.code_sha256}.zip",
            source=pulumi.FileAsset(args.code_path), server_side_encryption="AES256", tags=tags, opts=child)
        self.failures = aws.sqs.Queue(f"{name}-stream-failures", name=args.failures_queue,
                                      message_retention_seconds=14 * 24 * 3600, kms_master_key_id=args.queue_key_arn,
                                      tags=tags, opts=child)
        env = {k: v for k, v in args.env.items() if k not in RESERVED_ENV}
        self.functions: dict[str, aws.lambda_.Function] = {}
        self.roles: dict[str, aws.iam.Role] = {}
        self.log_groups: dict[str, aws.cloudwatch.LogGroup] = {}
        for role, spec in FUNCTIONS.items():
            fname = f"{args.stack}-{role}"
            logs = aws.cloudwatch.LogGroup(f"{name}-{role}-logs", name=f"/aws/lambda/{fname}",
                                           retention_in_days=args.log_retention_days, tags=tags, opts=child)
            iam = aws.iam.Role(f"{name}-{role}-role", description=f"ctfleet function {fname}",
                               assume_role_policy=assumed_by("lambda.amazonaws.com"), tags=tags, opts=child)
            aws.iam.RolePolicy(f"{name}-{role}-policy", role=iam.id, opts=child, policy=policy_document(
                allow("Logs", ["logs:CreateLogStream", "logs:PutLogEvents"], [_sub(logs.arn, ":log-stream:*")]),
                *function_statements(role, args, self.failures.arn)))
            self.log_groups[role], self.roles[role] = logs, iam
            self.functions[role] = aws.lambda_.Function(
                f"{name}-{role}", name=fname, description=spec.description, role=iam.arn, runtime=RUNTIME,
                architectures=[ARCHITECTURE], handler=spec.handler, timeout=spec.timeout_s,
                memory_size=spec.memory_mb,
                ephemeral_storage=aws.lambda_.FunctionEphemeralStorageArgs(size=spec.ephemeral_mb),
                reserved_concurrent_executions=spec.reserved_concurrency if spec.reserved_concurrency else -1,
                s3_bucket=self.object.bucket, s3_key=self.object.key,
                environment=aws.lambda_.FunctionEnvironmentArgs(variables=env),
                logging_config=aws.lambda_.FunctionLoggingConfigArgs(log_format="Text", log_group=logs.name),
                tags=tags, opts=pulumi.ResourceOptions(parent=self, depends_on=[logs]))
        self._triggers(name, args, tags, child)
        self.register_outputs({f"{role}_arn": f.arn for role, f in self.functions.items()})

    def _code_bucket(self, name: str, args: FunctionsArgs, tags: dict[str, str],
                     child: pulumi.ResourceOptions) -> aws.s3.Bucket:
        bucket = aws.s3.Bucket(f"{name}-code-bucket", bucket=args.code_bucket, tags=tags, opts=child)
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-code-bucket-sse", bucket=bucket.id, opts=child,
            rules=[aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=aws.s3.
                BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                    sse_algorithm="AES256"))])
        aws.s3.BucketPublicAccessBlock(f"{name}-code-bucket-pab", bucket=bucket.id, block_public_acls=True,
                                       block_public_policy=True, ignore_public_acls=True, restrict_public_buckets=True,
                                       opts=child)
        aws.s3.BucketVersioning(f"{name}-code-bucket-versioning", bucket=bucket.id, opts=child,
                                versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(
                                    status="Enabled"))
        aws.s3.BucketPolicy(f"{name}-code-bucket-policy", bucket=bucket.id, opts=child, policy=policy_document(
            statement("TlsOnly", "Deny", "*", "s3:*", [bucket.arn, _sub(bucket.arn, "/*")],
                      {"Bool": {"aws:SecureTransport": "false"}})))
        return bucket

    def _triggers(self, name: str, args: FunctionsArgs, tags: dict[str, str], child: pulumi.ResourceOptions) -> None:
        f = self.functions
        aws.lambda_.EventSourceMapping(f"{name}-ingest-queue", function_name=f["ingest"].arn,
                                       event_source_arn=args.queues["ingest"], batch_size=1,
                                       function_response_types=["ReportBatchItemFailures"], opts=child)
        aws.lambda_.EventSourceMapping(f"{name}-scaler-nudges", function_name=f["scaler"].arn,
                                       event_source_arn=args.queues["scaler"], batch_size=10,
                                       maximum_batching_window_in_seconds=0, opts=child)
        for role, sources in (("triage", ("studies",)), ("audit", ("studies", "uploads"))):
            for source in sources:
                aws.lambda_.EventSourceMapping(
                    f"{name}-{role}-{source}-stream", function_name=f[role].arn,
                    event_source_arn=args.streams[source], starting_position="TRIM_HORIZON", batch_size=100,
                    bisect_batch_on_function_error=True, function_response_types=["ReportBatchItemFailures"],
                    maximum_retry_attempts=10, maximum_record_age_in_seconds=24 * 3600,
                    destination_config=aws.lambda_.EventSourceMappingDestinationConfigArgs(
                        on_failure=aws.lambda_.EventSourceMappingDestinationConfigOnFailureArgs(
                            destination_arn=self.failures.arn)),
                    opts=child)
        self.schedules: dict[str, aws.cloudwatch.EventRule] = {}
        for role, seconds in (("scaler", args.schedule_s), ("sweeper", args.sweep_s)):
            rule = aws.cloudwatch.EventRule(f"{name}-{role}-schedule", name=f"{args.stack}-{role}",
                                            description=f"run {args.stack}-{role}",
                                            schedule_expression=_rate(seconds), tags=tags, opts=child)
            aws.cloudwatch.EventTarget(f"{name}-{role}-schedule", rule=rule.name, arn=f[role].arn, opts=child)
            aws.lambda_.Permission(f"{name}-{role}-schedule", action="lambda:InvokeFunction",
                                   function=f[role].name, principal="events.amazonaws.com", source_arn=rule.arn,
                                   opts=child)
            self.schedules[role] = rule
