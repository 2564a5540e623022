"""Pulumi's mocked engine for the infra tests: records every resource the program declares.

The program runs under :func:`pulumi.runtime.set_mocks` (no engine, no AWS, no network); the
mocks answer with the attributes AWS would compute (ARNs, URLs, ids) so that policies built from
them read as they would in a real stack. Import as ``from pulumi_mocks import ...`` (``tests/`` is
on the path, ``tests/conftest.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctfleet.settings import Settings
from infra import preview
from infra.preview import ACCOUNT, Declared

REPO = Path(__file__).resolve().parents[1]
REGION = "eu-central-1"

BUCKET = "aws:s3/bucket:Bucket"
ENCRYPTION = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
NOTIFICATION = "aws:s3/bucketNotification:BucketNotification"
QUEUE = "aws:sqs/queue:Queue"
QUEUE_POLICY = "aws:sqs/queuePolicy:QueuePolicy"
REDRIVE_ALLOW = "aws:sqs/redriveAllowPolicy:RedriveAllowPolicy"
TABLE = "aws:dynamodb/table:Table"
TOPIC = "aws:sns/topic:Topic"
KEY = "aws:kms/key:Key"
VPC = "aws:ec2/vpc:Vpc"
SUBNET = "aws:ec2/subnet:Subnet"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
GROUP = "aws:autoscaling/group:Group"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
PROFILE = "aws:iam/instanceProfile:InstanceProfile"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"


# -- the mocked engine ----------------------------------------------------------------


def bucket_names(settings: Settings) -> list[str]:
    """Every bucket the program declares for ``settings``: the runtime's three and the functions' code."""
    return sorted([*settings.buckets, settings.code_bucket])


def queue_names(settings: Settings) -> list[str]:
    """Every queue the program declares: the job queues and the scaler's nudges with their DLQs, and the
    stream failures queue."""
    specs = (*settings.queues, settings.scaler_queue)
    return sorted([*(n for q in specs for n in (q.name, q.dlq_name)), settings.stream_failures_queue])


class RecordingMocks(preview.RecordingMocks):
    """The preview's mocks (every resource recorded, AWS's computed attributes answered), with queries."""

    def __init__(self) -> None:
        super().__init__(region=REGION)

    def of_type(self, typ: str) -> list[Declared]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str, **inputs: Any) -> Declared:
        """The one resource of ``typ`` whose inputs include ``inputs``."""
        found = [r for r in self.of_type(typ) if all(r.inputs.get(k) == v for k, v in inputs.items())]
        assert len(found) == 1, f"expected one {typ} with {inputs}, found {[r.name for r in found]}"
        return found[0]

    def bucket_arn(self, name: str) -> str:
        return str(self.one(BUCKET, bucket=name).state["arn"])

    def for_bucket(self, typ: str, bucket: str) -> list[Declared]:
        """Resources of ``typ`` attached to ``bucket`` (by its id, which is its name)."""
        return [r for r in self.of_type(typ) if r.inputs.get("bucket") == bucket]


@dataclass
class Program:
    mocks: RecordingMocks
    outputs: dict[str, Any]
    # What the program logged through the engine (pulumi.log), e.g. the
    # provider SDK's "X is deprecated" warnings for arguments we pass.
    logged: list[logging.LogRecord]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run_program(program: Callable[[], dict[str, Any]], stack: str = "test") -> Program:
    """Run ``program`` in a fresh mocked engine and resolve what it returns."""
    mocks = RecordingMocks()
    records = _Records()
    logger = logging.getLogger(f"{__name__}.engine.{id(records)}")
    logger.propagate = False
    logger.addHandler(records)
    outputs = preview.run_mocked(program, mocks, stack=stack, logger=logger)
    return Program(mocks, outputs, records.records)
