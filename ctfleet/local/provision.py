"""Create the stack's resources through the AWS API, from the same settings as ``infra/``.

Used by the local stack (against moto). On AWS, ``infra/`` (Pulumi) owns the
resources; this module declares nothing the Pulumi program does not, and the
tests check that both read the same names and attributes.
"""

from __future__ import annotations

import json
import secrets as pysecrets
from typing import Any

from botocore.exceptions import ClientError

from ctfleet.aws.clients import Clients
from ctfleet.aws.failures import error_code
from ctfleet.aws.facilities import FacilityConfig, FacilityConfigs
from ctfleet.aws.records import Table
from ctfleet.settings import QueueSpec, Settings, TableSpec


def provision(clients: Clients, facility_secrets: dict[str, bytes] | None = None,
              web_origins: tuple[str, ...] = ()) -> dict[str, Any]:
    """Create buckets, queues (+DLQs), tables (+stream, GSIs, TTL), topic and secrets.

    Idempotent: existing resources are left as they are.

    Returns
    -------
    dict
        Queue URLs, the stream ARN and the topic ARN by role.
    """
    s = clients.settings
    out: dict[str, Any] = {"queues": {}}
    for bucket in s.buckets:
        _create_bucket(clients, bucket)
    if web_origins:
        # The browser POSTs files straight to the raw bucket from the web page's origin.
        clients.s3.put_bucket_cors(Bucket=s.raw_bucket, CORSConfiguration={"CORSRules": [
            {"AllowedOrigins": list(web_origins), "AllowedMethods": ["POST"], "AllowedHeaders": ["*"],
             "MaxAgeSeconds": 3600}]})
    for spec in s.queues:
        out["queues"][spec.name] = _create_queue(clients, spec)
    out["streams"] = {}
    for table in s.tables:
        arn = _create_table(clients, table)
        if table.stream_view_type:
            out["streams"][table.name] = arn
    out["stream_arn"] = out["streams"][s.studies_table.name]
    out["queues"][s.scaler_queue.name] = _create_queue(clients, s.scaler_queue)
    out["topic_arn"] = clients.sns.create_topic(Name=s.alerts_topic)["TopicArn"]
    out["facility_topics"] = {}
    configs = FacilityConfigs(Table(clients.dynamodb, s.facilities_table), default_threshold=s.high_threshold)
    for facility in s.facilities:
        topic = clients.sns.create_topic(Name=s.facility_topic(facility))["TopicArn"]
        out["facility_topics"][facility] = topic
        configs.put(FacilityConfig(facility, high_threshold=s.high_threshold, topic_arn=topic))
    _create_fleet(clients, s)
    _notify_on_manifest(clients, s, out["queues"][s.ingest_queue.name])
    for facility in s.facilities:
        secret = (facility_secrets or {}).get(facility) or pysecrets.token_hex(32).encode()
        try:
            clients.secrets.create_secret(Name=s.facility_secret_name(facility), SecretBinary=secret)
        except ClientError as exc:
            if error_code(exc) != "ResourceExistsException":
                raise
    return out


def _create_bucket(clients: Clients, name: str) -> None:
    kwargs: dict[str, Any] = {"Bucket": name}
    if clients.settings.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": clients.settings.region}
    try:
        clients.s3.create_bucket(**kwargs)
    except ClientError as exc:
        if error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    clients.s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )


def _create_queue(clients: Clients, spec: QueueSpec) -> str:
    sqs = clients.sqs
    dlq_url = sqs.create_queue(
        QueueName=spec.dlq_name, Attributes={"MessageRetentionPeriod": str(spec.dlq_retention_s)}
    )["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(
        QueueName=spec.name,
        Attributes={
            "VisibilityTimeout": str(spec.visibility_timeout_s),
            "ReceiveMessageWaitTimeSeconds": str(spec.long_poll_s),
            "MessageRetentionPeriod": str(spec.retention_s),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": spec.max_receive_count}),
        },
    )["QueueUrl"]
    return str(url)


def _create_table(clients: Clients, spec: TableSpec) -> str | None:
    db = clients.dynamodb
    attrs = {spec.partition_key}
    for index in spec.indexes:
        attrs.update((index.partition_key, index.sort_key))
    kwargs: dict[str, Any] = {
        "TableName": spec.name,
        "BillingMode": "PAY_PER_REQUEST",
        "KeySchema": [{"AttributeName": spec.partition_key, "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"} for a in sorted(attrs)],
    }
    if spec.indexes:
        kwargs["GlobalSecondaryIndexes"] = [
            {
                "IndexName": i.name,
                "KeySchema": [
                    {"AttributeName": i.partition_key, "KeyType": "HASH"},
                    {"AttributeName": i.sort_key, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for i in spec.indexes
        ]
    if spec.stream_view_type:
        kwargs["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": spec.stream_view_type}
    try:
        desc = db.create_table(**kwargs)["TableDescription"]
    except ClientError as exc:
        if error_code(exc) != "ResourceInUseException":
            raise
        desc = db.describe_table(TableName=spec.name)["Table"]
    if spec.ttl_attribute:
        db.update_time_to_live(
            TableName=spec.name, TimeToLiveSpecification={"Enabled": True, "AttributeName": spec.ttl_attribute}
        )
    return desc.get("LatestStreamArn")


def _notify_on_manifest(clients: Clients, s: Settings, ingest_url: str) -> None:
    """S3 -> SQS: every object created in raw/. A manifest means an upload is complete; any other
    object is a file, kept while its upload is open and deleted if it arrives after (a presigned
    POST used again once the upload was ingested)."""
    arn = clients.sqs.get_queue_attributes(QueueUrl=ingest_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    clients.s3.put_bucket_notification_configuration(
        Bucket=s.raw_bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "raw-to-ingest",
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {
                        "Key": {
                            "FilterRules": [{"Name": "prefix", "Value": "raw/"}]
                        }
                    },
                }
            ]
        },
    )


def _create_fleet(clients: Clients, s: Settings) -> None:
    """The GPU Auto Scaling group, min 0 and at zero, from a launch template (any AMI does locally)."""
    spec = s.fleet
    ec2, autoscaling = clients.ec2, clients.autoscaling
    template = f"{spec.group_name}-template"
    if not ec2.describe_launch_templates(Filters=[{"Name": "launch-template-name", "Values": [template]}])[
            "LaunchTemplates"]:
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        ec2.create_launch_template(LaunchTemplateName=template, LaunchTemplateData={
            "ImageId": image, "InstanceType": spec.instance_types[0],
            "InstanceMarketOptions": {"MarketType": "spot"}})
    if autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[spec.group_name])["AutoScalingGroups"]:
        return
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=spec.group_name, MinSize=0, MaxSize=spec.max_size, DesiredCapacity=0,
        LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
        AvailabilityZones=[f"{s.region}a"], NewInstancesProtectedFromScaleIn=False)
    autoscaling.put_lifecycle_hook(
        LifecycleHookName=spec.termination_hook, AutoScalingGroupName=spec.group_name,
        LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING", HeartbeatTimeout=int(spec.termination_hook_s),
        DefaultResult="CONTINUE")
