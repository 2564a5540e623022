"""The GPU fleet: launch template, instance role and the spot Auto Scaling group the scaler sizes.

* **Launch template**: the prebuilt AMI (``ctfleet:amiId``; ``ami/README.md``), IMDSv2 only with a
  hop limit of 1 (a container on the host cannot reach the instance's credentials through a
  second hop), an encrypted gp3 root volume, the workers' security group, and user data that
  only writes the stack's settings and starts the worker unit baked into the AMI: no image,
  package or model is pulled at boot. Instances and volumes carry the cost allocation tags.
* **Instance role**: least privilege. Its two job queues (and their dead-letter queues, to set a
  poison message aside), ``studies/`` in the studies bucket read-only, ``results/`` in the results
  bucket write-only, never the raw bucket; the studies, facility and ledger tables; its own log
  group; scale-in protection and the termination hook on its own group. EC2's two read-only calls
  (the instance's launch time, the spot price) accept no resource but ``*`` in IAM; they are
  limited to the stack's region.
* **Group**: min 0 and the settings' maximum; a mixed instances policy over the settings' GPU types
  with price-capacity-optimized spot, capacity rebalancing and an on-demand base of 0 (the scaler
  raises the base when spot is short for urgent work, so the program ignores changes to it and
  to the desired capacity, which the scaler owns); the termination lifecycle hook the worker
  completes when it has finished or handed back its job.

Imports pulumi, pulumi_aws, ``ctfleet.settings`` and ``infra.components.policies``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from ctfleet.settings import FleetSpec
from infra.components.policies import allow, assumed_by, policy_document

# EC2 actions IAM defines without resource types: they can only be granted on "*".
UNSCOPED_READS = ("ec2:DescribeInstances", "ec2:DescribeSpotPriceHistory")
WORKER_ENV_FILE = "/etc/ctfleet/worker.env"
WORKER_UNIT = "ctfleet-worker.service"


@dataclass(frozen=True)
class FleetArgs:
    """What :class:`Fleet` declares.

    Attributes
    ----------
    fleet
        The group's name, maximum, instance types and hook (``Settings.fleet``).
    ami_id
        The worker AMI (``ami/``).
    env
        The runtime's settings (``Settings.to_env()``), written to the worker's environment file.
    log_group
        The workers' CloudWatch log group name.
    log_retention_days
        How long worker logs are kept.
    subnet_ids, security_group_id
        Where the instances run (:class:`~infra.components.network.Network`).
    job_queue_arns, dead_letter_arns
        The urgent and backfill queues the workers take jobs from, and their dead-letter queues.
    studies_bucket_arn, results_bucket_arn
        The de-identified studies (read ``studies/``) and the results (write ``results/``).
    key_arn, queue_key_arn
        The storage KMS key those buckets are encrypted with, and the queues' key.
    table_arns
        Tables the workers read and write: studies, facilities, ledger.
    root_volume_gb, root_device
        The root volume's size and device name (the AMI's).
    tags
        Cost allocation tags on every resource, instance and volume.
    """

    fleet: FleetSpec
    ami_id: str
    env: Mapping[str, str]
    log_group: str
    subnet_ids: Sequence[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    job_queue_arns: Sequence[pulumi.Input[str]]
    dead_letter_arns: Sequence[pulumi.Input[str]]
    studies_bucket_arn: pulumi.Input[str]
    results_bucket_arn: pulumi.Input[str]
    key_arn: pulumi.Input[str]
    queue_key_arn: pulumi.Input[str]
    table_arns: Sequence[pulumi.Input[str]]
    region: str
    log_retention_days: int = 30
    root_volume_gb: int = 100
    root_device: str = "/dev/xvda"
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ami_id.startswith("ami-"):
            raise ValueError(f"ctfleet:amiId {self.ami_id!r} is no AMI id (ami-...); ami/README.md builds one")
        if len(set(self.fleet.instance_types)) < 3:
            raise ValueError(f"fleet instance types {list(self.fleet.instance_types)}: spot needs at least three to "
                             "choose from when one type's capacity runs short")
        if self.fleet.max_size < 1:
            raise ValueError(f"fleet max_size {self.fleet.max_size}: at least 1")


def user_data(env: Mapping[str, str]) -> str:
    """The boot script: the worker's environment file, then the worker unit baked into the AMI.

    Nothing is pulled: no image, package or model (they are in the AMI), so a new instance
    takes work as soon as the unit is up.
    """
    # Plain KEY=value lines: docker's --env-file takes values literally (quotes would become part of
    # them) and systemd's EnvironmentFile reads the same lines the same way.
    for key, value in env.items():
        if "\n" in value or "\r" in value or value[:1] in ("'", '"') or value != value.strip():
            raise ValueError(f"{key}={value!r} cannot be written to an environment file")
    lines = "\n".join(f"{k}={v}" for k, v in sorted(env.items()))
    return "\n".join([
        "#!/bin/bash",
        "# ctfleet worker boot: settings only; the worker image and model are baked into the AMI.",
        "set -euo pipefail",
        "install -d -m 0755 /etc/ctfleet",
        f"cat > {WORKER_ENV_FILE} <<'CTFLEET_ENV'",
        lines,
        "CTFLEET_ENV",
        f"chmod 0644 {WORKER_ENV_FILE}",
        f"systemctl enable --now {WORKER_UNIT}",
        "",
    ])


def worker_policy(args: FleetArgs, group_arn: pulumi.Input[str], log_group_arn: pulumi.Input[str]) -> pulumi.Output[str]:
    """The instance role's policy: each statement names its resources; see the module docstring."""
    studies = pulumi.Output.concat(args.studies_bucket_arn, "/studies/*")
    results = pulumi.Output.concat(args.results_bucket_arn, "/results/*")
    return policy_document(
        allow("Jobs", ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                       "sqs:GetQueueAttributes", "sqs:GetQueueUrl"], args.job_queue_arns),
        allow("DeadLetters", ["sqs:SendMessage", "sqs:GetQueueUrl"], args.dead_letter_arns),
        allow("ReadStudies", ["s3:GetObject"], [studies]),
        allow("WriteResults", ["s3:PutObject"], [results]),
        allow("StorageKey", ["kms:Decrypt", "kms:GenerateDataKey"], [args.key_arn],
              {"StringEquals": {"kms:ViaService": f"s3.{args.region}.amazonaws.com"}}),
        allow("QueueKey", ["kms:Decrypt", "kms:GenerateDataKey"], [args.queue_key_arn],
              {"StringEquals": {"kms:ViaService": f"sqs.{args.region}.amazonaws.com"}}),
        allow("Tables", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"], args.table_arns),
        allow("Logs", ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
              [log_group_arn, pulumi.Output.concat(log_group_arn, ":log-stream:*")]),
        allow("OwnGroup", ["autoscaling:SetInstanceProtection", "autoscaling:CompleteLifecycleAction",
                           "autoscaling:RecordLifecycleActionHeartbeat"], [group_arn]),
        allow("UnscopedReads", list(UNSCOPED_READS), ["*"], {"StringEquals": {"aws:RequestedRegion": args.region}}),
    )


class Fleet(pulumi.ComponentResource):
    """The worker role, launch template and Auto Scaling group.

    Attributes
    ----------
    role, profile
        The instance role and its instance profile.
    template
        The launch template.
    group
        The Auto Scaling group (name ``FleetSpec.group_name``).
    log_group
        The workers' log group.
    """

    def __init__(self, name: str, args: FleetArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ctfleet:infra:Fleet", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        spec = args.fleet
        self.log_group = aws.cloudwatch.LogGroup(f"{name}-logs", name=args.log_group,
                                                 retention_in_days=args.log_retention_days, tags=tags, opts=child)
        self.role = aws.iam.Role(
            f"{name}-role", description="ctfleet GPU worker instances",
            assume_role_policy=assumed_by("ec2.amazonaws.com"),
            tags=tags, opts=child)
        self.profile = aws.iam.InstanceProfile(f"{name}-profile", role=self.role.name, tags=tags, opts=child)
        self.template = aws.ec2.LaunchTemplate(
            f"{name}-template", name_prefix=f"{spec.group_name}-", image_id=args.ami_id,
            update_default_version=True,
            iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=self.profile.arn),
            vpc_security_group_ids=[args.security_group_id],
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1,
                instance_metadata_tags="disabled"),
            block_device_mappings=[aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name=args.root_device,
                ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    volume_type="gp3", volume_size=args.root_volume_gb, encrypted="true",
                    delete_on_termination="true"))],
            user_data=base64.b64encode(user_data(args.env).encode()).decode(),
            tag_specifications=[aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=tags)
                                for kind in ("instance", "volume")],
            tags=tags, opts=child)
        self.group = aws.autoscaling.Group(
            f"{name}-group", name=spec.group_name, min_size=0, max_size=spec.max_size,
            vpc_zone_identifiers=list(args.subnet_ids), capacity_rebalance=True,
            health_check_type="EC2", default_cooldown=0, metrics_granularity="1Minute",
            enabled_metrics=["GroupDesiredCapacity", "GroupInServiceInstances", "GroupPendingInstances",
                             "GroupTerminatingInstances"],
            mixed_instances_policy=aws.autoscaling.GroupMixedInstancesPolicyArgs(
                instances_distribution=aws.autoscaling.GroupMixedInstancesPolicyInstancesDistributionArgs(
                    on_demand_base_capacity=0, on_demand_percentage_above_base_capacity=0,
                    spot_allocation_strategy="price-capacity-optimized"),
                launch_template=aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateArgs(
                    launch_template_specification=aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateLaunchTemplateSpecificationArgs(
                        launch_template_id=self.template.id, version="$Latest"),
                    overrides=[aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateOverrideArgs(instance_type=t)
                               for t in spec.instance_types])),
            initial_lifecycle_hooks=[aws.autoscaling.GroupInitialLifecycleHookArgs(
                name=spec.termination_hook, lifecycle_transition="autoscaling:EC2_INSTANCE_TERMINATING",
                heartbeat_timeout=int(spec.termination_hook_s), default_result="CONTINUE")],
            tags=[aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=True) for k, v in tags.items()],
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=[
                "desiredCapacity", "mixedInstancesPolicy.instancesDistribution.onDemandBaseCapacity"]))
        aws.iam.RolePolicy(f"{name}-policy", role=self.role.id,
                           policy=worker_policy(args, self.group.arn, self.log_group.arn), opts=child)
        self.register_outputs({"group_name": self.group.name, "launch_template_id": self.template.id,
                               "role_arn": self.role.arn})
