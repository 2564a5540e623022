"""The functions under Pulumi's mocks: code, roles, logs, triggers and environment."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from pulumi_mocks import BUCKET, LOG_GROUP, QUEUE, ROLE, ROLE_POLICY, Program, run_program

from ctfleet.settings import Settings
from infra.components.functions import FUNCTIONS, UNSCOPED_READS
from infra.preview import PLACEHOLDER_CODE

SETTINGS = Settings(stack="ctfleet-fn", region="eu-central-1", facilities=("north", "south"))
AMI = "ami-0123456789abcdef0"
FUNCTION = "aws:lambda/function:Function"
MAPPING = "aws:lambda/eventSourceMapping:EventSourceMapping"
RULE = "aws:cloudwatch/eventRule:EventRule"
TARGET = "aws:cloudwatch/eventTarget:EventTarget"
PERMISSION = "aws:lambda/permission:Permission"
OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"
ROLES = ("api", "ingest", "scaler", "triage", "sweeper", "audit")


@pytest.fixture(scope="module")
def program() -> Program:
    from infra.__main__ import build

    return run_program(lambda: build(SETTINGS, code=PLACEHOLDER_CODE, ami_id=AMI, zones=("eu-central-1a", "eu-central-1b")))


def _functions(program: Program) -> dict[str, Any]:
    return {r.inputs["name"].removeprefix(SETTINGS.stack + "-"): r for r in program.mocks.of_type(FUNCTION)}


def _policy(program: Program, role: str) -> dict[str, Any]:
    [policy] = [p for p in program.mocks.of_type(ROLE_POLICY) if p.name == f"functions-{role}-policy"]
    return json.loads(policy.inputs["policy"])


def _statements(program: Program, role: str) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in _policy(program, role)["Statement"]}


def _resources(statement: dict[str, Any]) -> list[str]:
    r = statement["Resource"]
    return [r] if isinstance(r, str) else list(r)


def test_the_six_functions_run_the_handlers_from_one_s3_object(program: Program) -> None:
    functions = _functions(program)
    assert sorted(functions) == sorted(ROLES) == sorted(FUNCTIONS)
    [code] = program.mocks.of_type(OBJECT)
    assert code.inputs["key"] == f"lambda/{PLACEHOLDER_CODE[1]}.zip"
    assert code.inputs["bucket"] == SETTINGS.code_bucket
    for role, f in functions.items():
        assert f.inputs["handler"] == f"dispatcher.{role}.lambda_handler"
        assert f.inputs["runtime"] == "python3.12" and f.inputs["architectures"] == ["x86_64"]
        assert (f.inputs["s3Bucket"], f.inputs["s3Key"]) == (SETTINGS.code_bucket, code.inputs["key"])
        assert "filename" not in f.inputs and "imageUri" not in f.inputs


def test_every_function_has_its_own_role_assumed_by_lambda_only(program: Program) -> None:
    roles = {r.name: r for r in program.mocks.of_type(ROLE) if r.name.startswith("functions-")}
    assert len(roles) == len(ROLES)
    arns = {f.inputs["role"] for f in _functions(program).values()}
    assert len(arns) == len(ROLES)
    for role in roles.values():
        [trust] = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
        assert trust["Principal"] == {"Service": "lambda.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"


@pytest.mark.parametrize("role", ROLES)
def test_no_wildcard_action_and_no_wildcard_resource_but_the_unscopable_reads(program: Program, role: str) -> None:
    for s in _policy(program, role)["Statement"]:
        assert s["Effect"] == "Allow"
        assert all("*" not in a for a in s["Action"]), s
        if "*" in _resources(s):
            assert s["Sid"] == "UnscopedReads" and tuple(s["Action"]) == UNSCOPED_READS
            assert s["Condition"] == {"StringEquals": {"aws:RequestedRegion": SETTINGS.region}}
        assert all(r for r in _resources(s)), s


@pytest.mark.parametrize("role", ROLES)
def test_each_function_logs_only_to_its_own_group_kept_for_a_month(program: Program, role: str) -> None:
    name = f"/aws/lambda/{SETTINGS.stack}-{role}"
    group = program.mocks.one(LOG_GROUP, name=name)
    assert group.inputs["retentionInDays"] == 30
    assert _functions(program)[role].inputs["loggingConfig"]["logGroup"] == name
    logs = _statements(program, role)["Logs"]
    assert _resources(logs) == [f"{group.state['arn']}:log-stream:*"]


def test_only_ingest_and_the_sweeper_touch_raw_and_the_api_only_signs_uploads(program: Program) -> None:
    raw = program.mocks.bucket_arn(SETTINGS.raw_bucket)
    touching = {role for role in ROLES for s in _policy(program, role)["Statement"]
                if any(r.startswith(raw) for r in _resources(s))}
    assert touching == {"api", "ingest", "sweeper"}
    assert _statements(program, "api")["Uploads"]["Action"] == ["s3:PutObject"]
    assert _resources(_statements(program, "api")["Uploads"]) == [f"{raw}/raw/*"]
    assert "s3:GetObject" not in _statements(program, "sweeper")["Raw"]["Action"]


def test_ingest_takes_its_queue_with_partial_batch_responses(program: Program) -> None:
    f = _functions(program)
    ingest = program.mocks.one(QUEUE, name=SETTINGS.ingest_queue.name)
    [mapping] = [m for m in program.mocks.of_type(MAPPING) if m.inputs["eventSourceArn"] == ingest.state["arn"]]
    assert mapping.inputs["functionName"] == f["ingest"].state["arn"]
    assert mapping.inputs["functionResponseTypes"] == ["ReportBatchItemFailures"]
    # The queue's visibility covers six times the function's timeout (Lambda's guidance for SQS sources).
    assert SETTINGS.ingest_queue.visibility_timeout_s >= 6 * f["ingest"].inputs["timeout"]


def test_the_scaler_runs_every_minute_and_on_nudges_one_pass_at_a_time(program: Program) -> None:
    f = _functions(program)
    rule = program.mocks.one(RULE, name=f"{SETTINGS.stack}-scaler")
    assert rule.inputs["scheduleExpression"] == "rate(1 minute)"
    [target] = [t for t in program.mocks.of_type(TARGET) if t.inputs["rule"] == rule.inputs["name"]]
    assert target.inputs["arn"] == f["scaler"].state["arn"]
    [allowed] = [p for p in program.mocks.of_type(PERMISSION) if p.inputs.get("sourceArn") == rule.state["arn"]]
    assert allowed.inputs["principal"] == "events.amazonaws.com"
    nudges = program.mocks.one(QUEUE, name=SETTINGS.scaler_queue.name)
    assert any(m.inputs["eventSourceArn"] == nudges.state["arn"] and m.inputs["functionName"] == f["scaler"].state["arn"]
               for m in program.mocks.of_type(MAPPING))
    assert f["scaler"].inputs["reservedConcurrentExecutions"] == 1
    group = program.mocks.one("aws:autoscaling/group:Group", name=SETTINGS.fleet.group_name)
    own = _statements(program, "scaler")["OwnGroup"]
    assert _resources(own) == [group.state["arn"]]
    assert set(own["Action"]) == {"autoscaling:SetDesiredCapacity", "autoscaling:UpdateAutoScalingGroup"}


def test_the_sweeper_runs_on_a_schedule(program: Program) -> None:
    rule = program.mocks.one(RULE, name=f"{SETTINGS.stack}-sweeper")
    assert rule.inputs["scheduleExpression"] == "rate(5 minutes)"


def test_stream_consumers_bisect_report_partial_failures_and_keep_what_they_give_up(program: Program) -> None:
    tables = {t.inputs["name"]: t for t in program.mocks.of_type("aws:dynamodb/table:Table")}
    studies = tables[SETTINGS.studies_table.name].state["streamArn"]
    uploads = tables[SETTINGS.uploads_table.name].state["streamArn"]
    failures = program.mocks.one(QUEUE, name=SETTINGS.stream_failures_queue)
    assert failures.inputs["kmsMasterKeyId"]
    f = _functions(program)
    streams = [m for m in program.mocks.of_type(MAPPING) if "startingPosition" in m.inputs]
    assert sorted((m.inputs["functionName"], m.inputs["eventSourceArn"]) for m in streams) == sorted([
        (f["triage"].state["arn"], studies), (f["audit"].state["arn"], studies), (f["audit"].state["arn"], uploads)])
    for m in streams:
        assert m.inputs["bisectBatchOnFunctionError"] is True
        assert m.inputs["functionResponseTypes"] == ["ReportBatchItemFailures"]
        assert m.inputs["destinationConfig"]["onFailure"]["destinationArn"] == failures.state["arn"]
        assert m.inputs["startingPosition"] == "TRIM_HORIZON"
    for role in ("triage", "audit"):
        assert _resources(_statements(program, role)["StreamFailures"]) == [failures.state["arn"]]


def test_environment_is_the_runtimes_settings_with_the_user_pool_and_no_reserved_variable(program: Program) -> None:
    pool = program.mocks.one("aws:cognito/userPool:UserPool")
    expected = {k: v for k, v in SETTINGS.to_env().items() if k != "AWS_DEFAULT_REGION"}
    for f in _functions(program).values():
        env = f.inputs["environment"]["variables"]
        assert "AWS_DEFAULT_REGION" not in env and "AWS_REGION" not in env
        assert Settings.from_env({**env, "AWS_DEFAULT_REGION": SETTINGS.region}).stack == SETTINGS.stack
        assert {k: env[k] for k in expected} == expected
        # The mocks give a resource the id "{its Pulumi name}-id".
        assert env["CTFLEET_AUTH_ISSUER"] == f"https://cognito-idp.{SETTINGS.region}.amazonaws.com/{pool.name}-id"
        assert env["CTFLEET_AUTH_CLIENT_ID"] == "identity-web-id"


def test_the_code_bucket_is_private_encrypted_and_tls_only(program: Program) -> None:
    m = program.mocks
    m.one(BUCKET, bucket=SETTINGS.code_bucket)
    [block] = m.for_bucket("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", SETTINGS.code_bucket)
    assert all(block.inputs[k] for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                         "restrictPublicBuckets"))
    [sse] = m.for_bucket("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                         SETTINGS.code_bucket)
    assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
    [policy] = m.for_bucket("aws:s3/bucketPolicy:BucketPolicy", SETTINGS.code_bucket)
    [deny] = json.loads(policy.inputs["policy"])["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_a_missing_asset_stops_the_program_with_the_command_that_builds_it(tmp_path: Any) -> None:
    from infra.__main__ import code_asset

    with pytest.raises(SystemExit, match="make lambda-asset"):
        code_asset(tmp_path / "lambda.zip")
    (tmp_path / "lambda.zip").write_bytes(b"zip")
    assert code_asset(tmp_path / "lambda.zip") == (str(tmp_path / "lambda.zip"), hashlib.sha256(b"zip").hexdigest())
