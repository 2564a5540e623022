"""``python -m infra.preview``: the reviewable list of what ``pulumi up`` creates, and its page."""

from __future__ import annotations

import json
import subprocess
import sys

from pulumi_mocks import REPO

from ctfleet.settings import Settings


def _preview(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "infra.preview", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=True)
    return done.stdout


def test_json_lists_every_resource_with_its_inputs() -> None:
    resources = json.loads(_preview("--json", "--ami", "ami-0aaaabbbbccccdddd"))
    types = [r["type"] for r in resources]
    [group] = [r for r in resources if r["type"] == "aws:autoscaling/group:Group"]
    assert group["inputs"]["name"] == Settings().fleet.group_name and group["inputs"]["minSize"] == 0
    [lt] = [r for r in resources if r["type"] == "aws:ec2/launchTemplate:LaunchTemplate"]
    assert lt["inputs"]["imageId"] == "ami-0aaaabbbbccccdddd"
    endpoints = {r["inputs"]["serviceName"].rsplit(".", 1)[1] for r in resources
                 if r["type"] == "aws:ec2/vpcEndpoint:VpcEndpoint"}
    assert endpoints == {"s3", "dynamodb", "sqs", "secretsmanager", "logs", "ec2", "autoscaling"}
    for typ in ("aws:s3/bucket:Bucket", "aws:sqs/queue:Queue", "aws:dynamodb/table:Table", "aws:iam/rolePolicy:RolePolicy"):
        assert typ in types, typ
    assert len({(r["type"], r["name"]) for r in resources}) == len(resources), "each resource once"


def test_text_lists_one_line_per_resource() -> None:
    lines = _preview().splitlines()
    resources = json.loads(_preview("--json"))
    assert len(lines) == len(resources)
    assert any(line.startswith("aws:autoscaling/group:Group") and '"price-capacity-optimized"' in line for line in lines)


def test_docs_infrastructure_is_the_current_preview() -> None:
    page = (REPO / "docs" / "infrastructure.md").read_text()
    assert page == _preview("--markdown"), "regenerate: python -m infra.preview --markdown --out docs/infrastructure.md"
