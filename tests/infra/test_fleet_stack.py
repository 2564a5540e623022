"""The workers' network and the GPU fleet, as the program declares them under Pulumi's mocks.

What a reviewer of ``pulumi up`` would check by hand: the workers have no route out and no
inbound rule, they reach AWS through endpoints; the instances boot the prebuilt AMI with IMDSv2
only, an encrypted root volume and user data that pulls nothing; the group starts at zero and
asks for spot over several GPU types; the instance role names every resource it may touch and
never the raw (PHI) bucket.
"""

from __future__ import annotations

from infra.preview import PLACEHOLDER_CODE

import base64
import json
import logging
from dataclasses import replace
from typing import Any

import pytest
from pulumi_mocks import (
    ENDPOINT, GROUP, LAUNCH_TEMPLATE, PROFILE, ROLE, ROLE_POLICY, ROUTE_TABLE, SECURITY_GROUP, SUBNET, VPC,
    Program, run_program,
)

from ctfleet.settings import Settings

pytestmark = pytest.mark.filterwarnings(r"ignore:.*deprecated in favor of:DeprecationWarning:pulumi_aws\..*")

REGION = "eu-central-1"
SETTINGS = Settings(stack="ctfleet-f1", bucket_suffix="q7", region=REGION, fleet_max=7, fleet_termination_hook_s=420.0,
                    instance_type="g6.xlarge", fleet_instance_types=("g5.xlarge", "g4dn.xlarge", "g6.xlarge", "g5.2xlarge"))
AMI = "ami-0fedcba9876543210"
ZONES = (f"{REGION}b", f"{REGION}c")


@pytest.fixture(scope="module")
def program() -> Program:
    from infra.__main__ import build

    return run_program(lambda: build(SETTINGS, code=PLACEHOLDER_CODE, ami_id=AMI, zones=ZONES))


def _worker_policy(program: Program) -> dict[str, Any]:
    [policy] = [p for p in program.mocks.of_type(ROLE_POLICY) if p.name == "fleet-policy"]
    return json.loads(policy.inputs["policy"])


# -- network ---------------------------------------------------------------------------


def test_workers_run_in_private_subnets_of_two_zones_with_no_route_out(program: Program) -> None:
    m = program.mocks
    [vpc] = m.of_type(VPC)
    assert vpc.inputs["enableDnsSupport"] and vpc.inputs["enableDnsHostnames"], "private DNS of the endpoints"
    subnets = m.of_type(SUBNET)
    assert sorted(s.inputs["availabilityZone"] for s in subnets) == sorted(ZONES)
    assert not any(s.inputs.get("mapPublicIpOnLaunch") for s in subnets)
    [table] = m.of_type(ROUTE_TABLE)
    assert not table.inputs.get("routes"), "no route but the VPC's own"
    kinds = {r.typ.split(":")[1] for r in m.resources}
    assert not kinds & {"ec2/internetGateway", "ec2/natGateway", "ec2/eip", "ec2/egressOnlyInternetGateway"}


def test_every_aws_api_the_workers_call_has_an_endpoint(program: Program) -> None:
    endpoints = {r.inputs["serviceName"]: r for r in program.mocks.of_type(ENDPOINT)}
    name = f"com.amazonaws.{REGION}.{{}}".format
    for service in ("s3", "dynamodb"):
        assert endpoints[name(service)].inputs["vpcEndpointType"] == "Gateway"
    for service in ("sqs", "secretsmanager", "logs", "ec2", "autoscaling"):
        ep = endpoints[name(service)].inputs
        assert ep["vpcEndpointType"] == "Interface" and ep["privateDnsEnabled"], service
        assert len(ep["subnetIds"]) == len(ZONES), service


def test_the_workers_security_group_has_no_inbound_rule(program: Program) -> None:
    groups = {r.name: r.inputs for r in program.mocks.of_type(SECURITY_GROUP)}
    workers, endpoints = groups["network-workers"], groups["network-endpoints"]
    assert workers.get("ingress", []) == []
    assert {(e["fromPort"], e["toPort"], e["protocol"]) for e in workers["egress"]} == {(443, 443, "tcp")}
    assert not any("0.0.0.0/0" in e.get("cidrBlocks", []) for e in workers["egress"]), "HTTPS to the VPC only"
    [rule] = endpoints["ingress"]
    assert (rule["fromPort"], rule["toPort"], rule["securityGroups"]) == (443, 443, ["network-workers-id"])
    assert not rule.get("cidrBlocks"), "the endpoints take HTTPS from the workers' group only"


# -- launch template ---------------------------------------------------------------------


def test_instances_boot_the_ami_with_imdsv2_only_and_an_encrypted_gp3_root(program: Program) -> None:
    [lt] = program.mocks.of_type(LAUNCH_TEMPLATE)
    t = lt.inputs
    assert t["imageId"] == AMI
    meta = t["metadataOptions"]
    assert meta["httpTokens"] == "required" and meta["httpPutResponseHopLimit"] == 1
    [root] = t["blockDeviceMappings"]
    assert root["ebs"]["volumeType"] == "gp3" and root["ebs"]["encrypted"] == "true"
    assert t["vpcSecurityGroupIds"] == ["network-workers-id"]
    [profile] = program.mocks.of_type(PROFILE)
    assert t["iamInstanceProfile"]["arn"] == profile.state["arn"]
    tagged = {spec["resourceType"]: spec["tags"] for spec in t["tagSpecifications"]}
    assert tagged == {"instance": {"ctfleet:stack": SETTINGS.stack}, "volume": {"ctfleet:stack": SETTINGS.stack}}


def test_user_data_only_writes_the_settings_and_starts_the_baked_worker(program: Program) -> None:
    [lt] = program.mocks.of_type(LAUNCH_TEMPLATE)
    script = base64.b64decode(lt.inputs["userData"]).decode()
    assert script.startswith("#!/bin/bash\n") and "set -euo pipefail" in script
    for pull in ("docker pull", "docker load", "pip ", "curl", "wget", "aws s3", "apt", "yum", "dnf", "git "):
        assert pull not in script, f"boot pulls something: {pull!r}"
    assert script.rstrip().endswith("systemctl enable --now ctfleet-worker.service")
    body = script.split("<<'CTFLEET_ENV'\n", 1)[1].split("\nCTFLEET_ENV\n", 1)[0]
    # As docker's --env-file reads it: KEY=value, the value taken literally.
    env = dict(line.split("=", 1) for line in body.splitlines())
    assert Settings.from_env(env) == SETTINGS, "the worker reads back the stack's own settings"
    assert env["CTFLEET_HOME"] == SETTINGS.home == "~/.ctfleet", "no quotes around values"


def test_user_data_refuses_a_value_an_environment_file_cannot_hold() -> None:
    from infra.components.fleet import user_data

    assert "CTFLEET_LOG_LEVEL=INFO\n" in user_data({"CTFLEET_LOG_LEVEL": "INFO"})
    for bad in ("two\nlines", "'quoted'", " padded"):
        with pytest.raises(ValueError, match="environment file"):
            user_data({"CTFLEET_MODEL": bad})


# -- the group -------------------------------------------------------------------------


def test_group_starts_at_zero_and_asks_for_spot_over_the_settings_gpu_types(program: Program) -> None:
    [group] = program.mocks.of_type(GROUP)
    g = group.inputs
    spec = SETTINGS.fleet
    assert g["name"] == spec.group_name and g["minSize"] == 0 and g["maxSize"] == 7
    assert g.get("desiredCapacity") is None, "the scaler owns the desired capacity"
    assert g["capacityRebalance"] is True
    mixed = g["mixedInstancesPolicy"]
    dist = mixed["instancesDistribution"]
    assert dist["spotAllocationStrategy"] == "price-capacity-optimized"
    assert dist["onDemandBaseCapacity"] == 0 and dist["onDemandPercentageAboveBaseCapacity"] == 0
    types = [o["instanceType"] for o in mixed["launchTemplate"]["overrides"]]
    assert types == list(spec.instance_types) and types[0] == SETTINGS.instance_type and len(set(types)) >= 3
    [lt] = program.mocks.of_type(LAUNCH_TEMPLATE)
    assert mixed["launchTemplate"]["launchTemplateSpecification"]["launchTemplateId"] == f"{lt.name}-id"
    assert sorted(g["vpcZoneIdentifiers"]) == sorted(f"{s.name}-id" for s in program.mocks.of_type(SUBNET))


def test_group_holds_terminating_instances_on_the_hook_the_worker_completes(program: Program) -> None:
    [group] = program.mocks.of_type(GROUP)
    [hook] = group.inputs["initialLifecycleHooks"]
    assert hook["name"] == SETTINGS.fleet.termination_hook
    assert hook["lifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert hook["heartbeatTimeout"] == 420 and hook["defaultResult"] == "CONTINUE"
    assert {(t["key"], t["value"], t["propagateAtLaunch"]) for t in group.inputs["tags"]} == {
        ("ctfleet:stack", SETTINGS.stack, True)}


# -- the instance role -------------------------------------------------------------------


def test_instance_role_is_assumed_by_ec2_only(program: Program) -> None:
    [role] = [r for r in program.mocks.of_type(ROLE) if r.name == "fleet-role"]
    trust = json.loads(role.inputs["assumeRolePolicy"])
    [stmt] = trust["Statement"]
    assert stmt["Principal"] == {"Service": "ec2.amazonaws.com"} and stmt["Action"] == "sts:AssumeRole"
    [profile] = program.mocks.of_type(PROFILE)
    assert profile.inputs["role"] == role.state["name"]


def test_worker_policy_has_no_wildcard_action_and_names_its_resources(program: Program) -> None:
    from infra.components.fleet import UNSCOPED_READS

    for stmt in _worker_policy(program)["Statement"]:
        assert stmt["Effect"] == "Allow" and "NotAction" not in stmt and "NotResource" not in stmt
        assert all("*" not in a and ":" in a for a in stmt["Action"]), stmt["Sid"]
        if "*" in stmt["Resource"]:
            # IAM defines these two without resource types; they are read-only and held to the region.
            assert stmt["Resource"] == ["*"] and sorted(stmt["Action"]) == sorted(UNSCOPED_READS), stmt
            assert stmt["Condition"] == {"StringEquals": {"aws:RequestedRegion": REGION}}


def test_worker_role_reads_studies_writes_results_and_never_touches_raw(program: Program) -> None:
    policy = _worker_policy(program)
    text = json.dumps(policy)
    assert SETTINGS.raw_bucket not in text and "ingest" not in text, "no PHI bucket, no ingest queue"
    s3 = [(a, r) for st in policy["Statement"] for a in st["Action"] if a.startswith("s3:") for r in st["Resource"]]
    assert sorted(s3) == [("s3:GetObject", f"arn:aws:s3:::{SETTINGS.studies_bucket}/studies/*"),
                          ("s3:PutObject", f"arn:aws:s3:::{SETTINGS.results_bucket}/results/*")]
    queues = {r.rsplit(":", 1)[1] for st in policy["Statement"] for a in st["Action"] if a.startswith("sqs:")
              for r in st["Resource"]}
    assert queues == {SETTINGS.urgent_queue.name, SETTINGS.backfill_queue.name,
                      SETTINGS.urgent_queue.dlq_name, SETTINGS.backfill_queue.dlq_name}
    tables = {r.rsplit("/", 1)[1] for st in policy["Statement"] for a in st["Action"] if a.startswith("dynamodb:")
              for r in st["Resource"]}
    assert tables == {SETTINGS.studies_table.name, SETTINGS.facilities_table.name, SETTINGS.ledger_table.name}
    groups = [r for st in policy["Statement"] for a in st["Action"] if a.startswith("autoscaling:")
              for r in st["Resource"]]
    assert groups and all(r.endswith(f":autoScalingGroupName/{SETTINGS.fleet.group_name}") for r in groups)
    keys = {st["Sid"]: st for st in policy["Statement"] if any(a.startswith("kms:") for a in st["Action"])}
    assert {st["Condition"]["StringEquals"]["kms:ViaService"] for st in keys.values()} == {
        f"s3.{REGION}.amazonaws.com", f"sqs.{REGION}.amazonaws.com"}, "keys only through S3 and SQS"
    logs = {r for st in policy["Statement"] for a in st["Action"] if a.startswith("logs:") for r in st["Resource"]}
    assert logs and all(f":log-group:{SETTINGS.log_group}" in r for r in logs)


# -- configuration -----------------------------------------------------------------------


def test_without_an_ami_the_program_declares_no_fleet_and_says_so() -> None:
    from infra.__main__ import build

    ran = run_program(lambda: build(SETTINGS, code=PLACEHOLDER_CODE, zones=ZONES))
    assert ran.mocks.of_type(GROUP) == [] and ran.mocks.of_type(LAUNCH_TEMPLATE) == []
    assert ran.mocks.of_type(VPC), "the network is there for the first AMI's fleet"
    warnings = [r.getMessage() for r in ran.logged if r.levelno >= logging.WARNING]
    assert any("ctfleet:amiId" in w for w in warnings), warnings


def test_zones_default_to_the_first_two_the_region_reports() -> None:
    from infra.__main__ import build

    ran = run_program(lambda: build(SETTINGS, code=PLACEHOLDER_CODE, ami_id=AMI))
    assert sorted(s.inputs["availabilityZone"] for s in ran.mocks.of_type(SUBNET)) == [f"{REGION}a", f"{REGION}b"]


def test_fleet_args_reject_what_would_not_run() -> None:
    from infra.components.fleet import FleetArgs
    from infra.components.network import NetworkArgs

    base: dict[str, Any] = dict(fleet=SETTINGS.fleet, ami_id=AMI, env={}, log_group="/x", subnet_ids=[],
                                security_group_id="sg", job_queue_arns=[], dead_letter_arns=[],
                                studies_bucket_arn="a", results_bucket_arn="b", key_arn="k", queue_key_arn="q",
                                table_arns=[],
                                region=REGION)
    FleetArgs(**base)
    with pytest.raises(ValueError, match="AMI id"):
        FleetArgs(**{**base, "ami_id": "my-image"})
    with pytest.raises(ValueError, match="at least three"):
        FleetArgs(**{**base, "fleet": replace(SETTINGS.fleet, instance_types=("g5.xlarge", "g5.xlarge", "g6.xlarge"))})
    with pytest.raises(ValueError, match="two zones"):
        NetworkArgs(stack="s", region=REGION, zones=(f"{REGION}a",))
    with pytest.raises(ValueError, match="/20"):
        NetworkArgs(stack="s", region=REGION, cidr="10.0.0.0/24")
