"""Policy tests of the Pulumi program, run against Pulumi's mocked engine.

The program is run with :func:`pulumi.runtime.set_mocks` (no engine, no AWS,
no network); a recording ``Mocks`` keeps every resource's type, name and
inputs, and the tests check them against the same :class:`Settings` the
runtime reads: names, queue and table attributes, encryption, public-access
blocks, lifecycle and the upload notification.
"""

from __future__ import annotations

from infra.preview import PLACEHOLDER_CODE

import ast
import dataclasses
import importlib
import json
import logging
import os
import runpy
import typing
from dataclasses import replace
from typing import Any

import pulumi
import pytest
from pulumi_mocks import (
    bucket_names,
    queue_names,
    ACCESS_BLOCK, ACCOUNT, BUCKET, BUCKET_POLICY, ENCRYPTION, KEY, LIFECYCLE, NOTIFICATION, QUEUE, QUEUE_POLICY,
    REDRIVE_ALLOW, REGION, REPO, TABLE, TOPIC, VERSIONING, Program, RecordingMocks, run_program,
)

from ctfleet import contracts
from ctfleet.settings import IndexSpec, QueueSpec, Settings, TableSpec

# pulumi_aws warns about its deprecated classes when its s3 and ec2 modules are
# imported, whatever the program uses; what the program uses is checked by
# test_program_uses_no_deprecated_argument_or_resource.
pytestmark = pytest.mark.filterwarnings(r"ignore:.*deprecated in favor of:DeprecationWarning:pulumi_aws\..*")

# Non-default values everywhere the program reads settings, so a hard-coded
# name or number in infra/ cannot pass by coincidence.
SETTINGS = Settings(stack="ctfleet-t1", bucket_suffix="x9", raw_expiry_days=3, region=REGION)
AMI = "ami-0123456789abcdef0"
ZONES = (f"{REGION}a", f"{REGION}b")


@pytest.fixture(scope="module")
def program() -> Program:
    from infra.__main__ import build

    return run_program(lambda: build(SETTINGS, code=PLACEHOLDER_CODE, ami_id=AMI, zones=ZONES, web_origins=("https://ct.hospital.example",)))


# -- names ----------------------------------------------------------------------------


def test_every_name_is_the_settings_name(program: Program) -> None:
    m = program.mocks
    assert sorted(r.inputs["bucket"] for r in m.of_type(BUCKET)) == bucket_names(SETTINGS)
    assert sorted(r.inputs["name"] for r in m.of_type(QUEUE)) == queue_names(SETTINGS)
    assert sorted(r.inputs["name"] for r in m.of_type(TABLE)) == sorted(t.name for t in SETTINGS.tables)
    assert sorted(r.inputs["name"] for r in m.of_type(TOPIC)) == sorted([SETTINGS.alerts_topic, SETTINGS.operations_topic])
    # Exact names: nothing relies on Pulumi's auto-naming (which appends a suffix).
    for r in m.of_type(BUCKET):
        assert "bucketPrefix" not in r.inputs


def test_program_uses_no_deprecated_argument_or_resource(program: Program) -> None:
    warnings = [r.getMessage() for r in program.logged if r.levelno >= logging.WARNING]
    assert warnings == []
    assert not [r for r in program.mocks.resources if r.typ.endswith("V2")]


def test_runtime_reads_back_the_deployed_names(program: Program) -> None:
    """The ``env`` output, read by the runtime, names exactly what was declared."""
    runtime = Settings.from_env(program.outputs["env"])
    assert (runtime.stack, runtime.bucket_suffix, runtime.region) == (SETTINGS.stack, "x9", REGION)
    out = program.outputs
    assert (out["raw_bucket"], out["studies_bucket"], out["results_bucket"]) == runtime.buckets
    assert out["ingest_queue"] == runtime.ingest_queue.name
    assert out["urgent_queue_url"].endswith("/" + runtime.urgent_queue.name)
    assert out["backfill_dlq_url"].endswith("/" + runtime.backfill_queue.dlq_name)
    assert tuple(out[f"{role}_table"] for role in ("studies", "uploads", "ledger", "audit", "facilities", "alerts")) \
        == tuple(t.name for t in runtime.tables)
    assert out["studies_table_stream_arn"].startswith(out["studies_table_arn"])
    assert out["uploads_table_stream_arn"].startswith(out["uploads_table_arn"])
    assert out["alerts_topic"] == runtime.alerts_topic


# -- queues ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["ingest", "urgent", "backfill"])
def test_queue_attributes_and_redrive_follow_the_spec(program: Program, role: str) -> None:
    m = program.mocks
    spec: QueueSpec = getattr(SETTINGS, f"{role}_queue")
    queue = m.one(QUEUE, name=spec.name)
    dlq = m.one(QUEUE, name=spec.dlq_name)
    assert queue.inputs["visibilityTimeoutSeconds"] == spec.visibility_timeout_s
    assert queue.inputs["receiveWaitTimeSeconds"] == spec.long_poll_s
    assert queue.inputs["messageRetentionSeconds"] == spec.retention_s
    redrive = json.loads(queue.inputs["redrivePolicy"])
    assert redrive == {"deadLetterTargetArn": dlq.state["arn"], "maxReceiveCount": spec.max_receive_count}
    assert dlq.inputs["messageRetentionSeconds"] == spec.dlq_retention_s
    assert "redrivePolicy" not in dlq.inputs
    [key] = [k for k in m.of_type(KEY) if k.name == "queues-key"]
    for q in (queue, dlq):
        assert q.inputs["kmsMasterKeyId"] == key.state["arn"] and "sqsManagedSseEnabled" not in q.inputs
    allow = m.one(REDRIVE_ALLOW, queueUrl=dlq.state["url"])
    assert json.loads(allow.inputs["redriveAllowPolicy"]) == {
        "redrivePermission": "byQueue",
        "sourceQueueArns": [queue.state["arn"]],
    }


def test_queue_key_lets_s3_of_this_account_notify_and_leaves_the_rest_to_iam(program: Program) -> None:
    [key] = [k for k in program.mocks.of_type(KEY) if k.name == "queues-key"]
    statements = {st["Sid"]: st for st in json.loads(key.inputs["policy"])["Statement"]}
    assert set(statements) == {"AccountAdministers", "S3Notifies"}
    assert statements["AccountAdministers"]["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    s3 = statements["S3Notifies"]
    assert s3["Principal"] == {"Service": "s3.amazonaws.com"} and sorted(s3["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert s3["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


def test_queue_args_reject_what_sqs_would() -> None:
    from infra.components.queues import QueuesArgs

    with pytest.raises(ValueError, match="long_poll_s"):
        QueuesArgs({"q": QueueSpec("q", visibility_timeout_s=30, long_poll_s=21, max_receive_count=3)})
    with pytest.raises(ValueError, match="dlq_retention_s"):
        QueuesArgs(
            {"q": QueueSpec("q", 30, 20, 3, retention_s=14 * 24 * 3600, dlq_retention_s=4 * 24 * 3600)}
        )
    with pytest.raises(ValueError, match="name"):
        QueuesArgs({"q": QueueSpec("x" * 80, 30, 20, 3)})  # its DLQ name is 84 chars


# -- tables ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["studies", "uploads"])
def test_table_follows_the_spec(program: Program, role: str) -> None:
    spec: TableSpec = getattr(SETTINGS, f"{role}_table")
    table = program.mocks.one(TABLE, name=spec.name).inputs
    assert table["billingMode"] == "PAY_PER_REQUEST"
    assert table["hashKey"] == spec.partition_key
    assert "rangeKey" not in table
    keys = {spec.partition_key} | {k for i in spec.indexes for k in (i.partition_key, i.sort_key)}
    assert sorted(a["name"] for a in table["attributes"]) == sorted(keys)
    assert all(a["type"] == "S" for a in table["attributes"])
    indexes = {i["name"]: i for i in table.get("globalSecondaryIndexes", [])}
    assert set(indexes) == {i.name for i in spec.indexes}
    for index in spec.indexes:
        declared = indexes[index.name]
        assert declared["projectionType"] == "ALL"
        assert {k["keyType"]: k["attributeName"] for k in declared["keySchemas"]} == {
            "HASH": index.partition_key,
            "RANGE": index.sort_key,
        }
    assert table["streamEnabled"] is (spec.stream_view_type is not None)
    assert table.get("streamViewType") == spec.stream_view_type
    if spec.ttl_attribute:
        assert table["ttl"] == {"attributeName": spec.ttl_attribute, "enabled": True}
    else:
        assert "ttl" not in table
    assert table["pointInTimeRecovery"]["enabled"] is True
    assert table["serverSideEncryption"]["enabled"] is True


def test_settings_exercise_both_stream_and_ttl() -> None:
    """Guards the parametrized test above against settings that test neither branch."""
    assert SETTINGS.studies_table.stream_view_type and not SETTINGS.studies_table.ttl_attribute
    assert SETTINGS.uploads_table.ttl_attribute and SETTINGS.uploads_table.stream_view_type
    assert not SETTINGS.audit_table.ttl_attribute and not SETTINGS.audit_table.stream_view_type, "append-only, kept"


def test_custom_table_spec_is_declared_as_given() -> None:
    from infra.components.tables import Tables, TablesArgs

    spec = TableSpec(
        "t-custom",
        "pk",
        indexes=(IndexSpec("a", "facility", "created_at"), IndexSpec("b", "status", "created_at")),
        stream_view_type="KEYS_ONLY",
        ttl_attribute="gone_at",
    )
    run = run_program(lambda: {"arn": Tables("t", TablesArgs({"x": spec})).tables["x"].arn})
    table = run.mocks.one(TABLE, name="t-custom").inputs
    # created_at is shared by both indexes and declared once.
    assert [a["name"] for a in table["attributes"]] == ["pk", "facility", "created_at", "status"]
    assert table["streamViewType"] == "KEYS_ONLY"
    assert table["ttl"]["attributeName"] == "gone_at"
    with pytest.raises(ValueError, match="stream_view_type"):
        TablesArgs({"x": replace(spec, stream_view_type="NEW")})


# -- storage --------------------------------------------------------------------------


@pytest.mark.parametrize("bucket", SETTINGS.buckets)
def test_bucket_is_kms_encrypted_private_and_tls_only(program: Program, bucket: str) -> None:
    m = program.mocks
    [encryption] = m.for_bucket(ENCRYPTION, bucket)
    [rule] = encryption.inputs["rules"]
    default = rule["applyServerSideEncryptionByDefault"]
    assert default["sseAlgorithm"] == "aws:kms"
    assert rule["bucketKeyEnabled"] is True
    # A customer key (not aws/s3), rotated, shared by the three buckets.
    [key] = [r for r in m.of_type(KEY) if r.state["arn"] == default["kmsMasterKeyId"]]
    assert key.inputs["enableKeyRotation"] is True
    assert all(name in key.inputs["description"] for name in SETTINGS.buckets)

    [block] = m.for_bucket(ACCESS_BLOCK, bucket)
    for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
        assert block.inputs[flag] is True, flag

    [policy] = m.for_bucket(BUCKET_POLICY, bucket)
    [deny] = json.loads(policy.inputs["policy"])["Statement"]
    arn = m.bucket_arn(bucket)
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert sorted(deny["Resource"]) == [arn, arn + "/*"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}

    [lifecycle] = m.for_bucket(LIFECYCLE, bucket)
    abort = [r for r in lifecycle.inputs["rules"] if "abortIncompleteMultipartUpload" in r]
    assert abort and abort[0]["status"] == "Enabled" and abort[0]["filter"]["prefix"] == ""


def test_raw_objects_expire_after_the_settings_days(program: Program) -> None:
    [lifecycle] = program.mocks.for_bucket(LIFECYCLE, SETTINGS.raw_bucket)
    [expire] = [r for r in lifecycle.inputs["rules"] if "expiration" in r]
    assert expire["status"] == "Enabled"
    assert expire["filter"]["prefix"] == "raw/"
    assert expire["expiration"]["days"] == SETTINGS.raw_expiry_days
    # The rule covers the keys the runtime writes.
    assert contracts.raw_key("demo", "0" * 32, SETTINGS.manifest_name).startswith(expire["filter"]["prefix"])
    # Only raw data expires.
    for bucket in (SETTINGS.studies_bucket, SETTINGS.results_bucket):
        [other] = program.mocks.for_bucket(LIFECYCLE, bucket)
        assert not any("expiration" in r for r in other.inputs["rules"])


def test_only_results_are_versioned(program: Program) -> None:
    [versioning] = [v for v in program.mocks.of_type(VERSIONING) if v.inputs["bucket"] in SETTINGS.buckets]
    assert versioning.inputs["bucket"] == SETTINGS.results_bucket
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
    [lifecycle] = program.mocks.for_bucket(LIFECYCLE, SETTINGS.results_bucket)
    assert any("noncurrentVersionExpiration" in r for r in lifecycle.inputs["rules"])


def test_every_raw_object_notifies_the_ingest_queue(program: Program) -> None:
    m = program.mocks
    ingest = m.one(QUEUE, name=SETTINGS.ingest_queue.name)
    [notification] = m.of_type(NOTIFICATION)
    assert notification.inputs["bucket"] == SETTINGS.raw_bucket
    [target] = notification.inputs["queues"]
    assert target["queueArn"] == ingest.state["arn"]
    assert target["events"] == ["s3:ObjectCreated:*"]
    assert "filterSuffix" not in target, "files too: one sent after its upload ended is deleted on arrival"
    assert target["filterPrefix"] == "raw/"
    for name in (SETTINGS.manifest_name, "series/IM0001.dcm"):
        assert contracts.raw_key("demo", "0" * 32, name).startswith(target["filterPrefix"])

    [policy] = m.of_type(QUEUE_POLICY)
    assert policy.inputs["queueUrl"] == ingest.state["url"]
    [allow] = json.loads(policy.inputs["policy"])["Statement"]
    assert allow["Effect"] == "Allow"
    assert allow["Principal"] == {"Service": "s3.amazonaws.com"}
    assert allow["Action"] == "sqs:SendMessage"
    assert allow["Resource"] == ingest.state["arn"]
    assert allow["Condition"] == {
        "ArnEquals": {"aws:SourceArn": m.bucket_arn(SETTINGS.raw_bucket)},
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
    }


def test_storage_args_reject_illegal_bucket_names() -> None:
    from infra.components.storage import StorageArgs

    long_stack = replace(SETTINGS, stack="ctfleet-" + "a" * 60)
    with pytest.raises(ValueError, match="not a legal S3 name"):
        StorageArgs.from_settings(long_stack, ingest_queue_arn="a", ingest_queue_url="u", account_id=ACCOUNT)
    with pytest.raises(ValueError, match="not a legal S3 name"):
        StorageArgs.from_settings(
            replace(SETTINGS, stack="CTFleet"), ingest_queue_arn="a", ingest_queue_url="u", account_id=ACCOUNT
        )


# -- alerts ---------------------------------------------------------------------------


def test_alerts_topic_is_kms_encrypted_for_alarms(program: Program) -> None:
    m = program.mocks
    topic = m.one(TOPIC, name=SETTINGS.alerts_topic)
    key = next(r for r in m.of_type(KEY) if r.state["arn"] == topic.inputs["kmsMasterKeyId"])
    assert key.inputs["enableKeyRotation"] is True
    statements = {s["Sid"]: s for s in json.loads(key.inputs["policy"])["Statement"]}
    assert statements["AccountAdministers"]["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    assert statements["CloudWatchAlarmsPublish"]["Principal"] == {"Service": "cloudwatch.amazonaws.com"}


# -- the program's shape --------------------------------------------------------------


def test_infra_reads_only_the_settings_from_ctfleet() -> None:
    """infra/ shares the runtime's names through ``ctfleet.settings`` and nothing else of ctfleet."""
    imported: set[str] = set()
    for path in sorted((REPO / "infra").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert {name for name in imported if name.split(".")[0] == "ctfleet"} == {"ctfleet.settings"}


def test_every_component_takes_a_frozen_dataclass_of_args() -> None:
    import infra.components as components

    classes = [getattr(components, name) for name in components.__all__]
    resources = [c for c in classes if issubclass(c, pulumi.ComponentResource)]
    assert len(resources) == 10
    for component in resources:
        args = typing.get_type_hints(component.__init__)["args"]
        assert isinstance(args, type) and args.__name__ == f"{component.__name__}Args", component
        assert dataclasses.is_dataclass(args) and getattr(args, "__dataclass_params__").frozen, component


# -- the stack's settings -------------------------------------------------------------


def test_stack_name_is_derived_from_the_pulumi_stack() -> None:
    from infra.__main__ import settings_for_stack, stack_name

    assert stack_name("dev") == "ctfleet-dev"
    assert stack_name("Prod_EU.2") == "ctfleet-prod-eu-2"
    with pytest.raises(ValueError):
        stack_name("__")
    base = Settings(bucket_suffix="env", region="us-west-2")
    assert settings_for_stack(base, "dev").stack == "ctfleet-dev"
    assert settings_for_stack(base, "dev").bucket_suffix == "env"
    chosen = settings_for_stack(base, "dev", name="legacy", bucket_suffix="cfg", region="eu-west-1")
    assert (chosen.stack, chosen.bucket_suffix, chosen.region) == ("legacy", "cfg", "eu-west-1")
    assert chosen.raw_bucket == "legacy-raw-cfg"


def test_pulumi_yaml_points_at_the_program() -> None:
    import yaml

    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    assert project["name"] == "ctfleet"
    assert project["runtime"]["name"] == "python"
    assert project["runtime"]["options"]["virtualenv"] == ".venv"
    assert (REPO / project["main"] / "__main__.py").is_file()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    """No ctfleet or endpoint variables from the developer's shell; a code asset where config says."""
    for name in list(os.environ):
        if name.startswith("CTFLEET_") or name in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
            monkeypatch.delenv(name)
    asset = tmp_path / "lambda.zip"
    asset.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: the mocked engine uploads nothing
    pulumi.runtime.set_config("ctfleet:lambdaAsset", str(asset))
    yield monkeypatch
    pulumi.runtime.config.CONFIG.get().pop("ctfleet:lambdaAsset", None)


def test_program_as_pulumi_runs_it_names_resources_after_the_stack(clean_env: pytest.MonkeyPatch) -> None:
    """``main: infra/`` run as Pulumi does (``runpy.run_path``): settings read once, names from the stack."""
    import yaml

    exported: dict[str, Any] = {}
    clean_env.setattr(pulumi, "export", exported.__setitem__)
    main = REPO / yaml.safe_load((REPO / "Pulumi.yaml").read_text())["main"]

    def run() -> dict[str, Any]:
        runpy.run_path(str(main), run_name="__main__")
        return exported

    ran = run_program(run, stack="staging")
    expected = replace(Settings(), stack="ctfleet-staging")
    assert ran.outputs["stack"] == "ctfleet-staging"
    assert Settings.from_env(ran.outputs["env"]) == expected
    assert sorted(r.inputs["bucket"] for r in ran.mocks.of_type(BUCKET)) == bucket_names(expected)
    assert sorted(r.inputs["name"] for r in ran.mocks.of_type(QUEUE)) == queue_names(expected)
    assert sorted(r.inputs["name"] for r in ran.mocks.of_type(TABLE)) == sorted(t.name for t in expected.tables)
    assert sorted(r.inputs["name"] for r in ran.mocks.of_type(TOPIC)) == sorted([expected.alerts_topic, expected.operations_topic])


def test_importing_the_program_declares_nothing() -> None:
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="ctfleet", stack="test", preview=False)
    importlib.reload(importlib.import_module("infra.__main__"))
    assert mocks.resources == []


def test_program_warns_when_the_environment_names_another_stack(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CTFLEET_STACK", "ctfleet-prod")
    clean_env.setattr(pulumi, "export", lambda name, value: None)
    import infra.__main__ as program_module

    ran = run_program(lambda: program_module.main() or {}, stack="dev")
    assert sorted(r.inputs["bucket"] for r in ran.mocks.of_type(BUCKET)) == bucket_names(
        replace(Settings(), stack="ctfleet-dev"))
    warnings = [r.getMessage() for r in ran.logged if r.levelno >= logging.WARNING]
    assert any("CTFLEET_STACK='ctfleet-prod'" in w and "ctfleet-dev" in w for w in warnings), warnings
