"""The worker AMI: Image Builder component documents in ``ami/components/`` and the pipeline that applies them."""

from __future__ import annotations

from infra.preview import PLACEHOLDER_CODE

import json
import re
from pathlib import Path

import pytest
import yaml
from pulumi_mocks import REPO, Program, run_program

from ctfleet.settings import Settings

pytestmark = pytest.mark.filterwarnings(r"ignore:.*deprecated in favor of:DeprecationWarning:pulumi_aws\..*")

COMPONENTS = sorted((REPO / "ami" / "components").glob("*.yml"))
PHASES = {"build", "validate", "test"}  # the phases Image Builder runs
ACTIONS = {"ExecuteBash", "Reboot", "S3Download", "UpdateOS"}
SOURCE = "s3://ctfleet-artifacts-t/releases/ctfleet-v1.tar.gz"
SETTINGS = Settings(stack="ctfleet-i1", region="eu-west-1")


def _doc(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", COMPONENTS, ids=lambda p: p.name)
def test_component_document_is_valid(path: Path) -> None:
    doc = _doc(path)
    assert str(doc["schemaVersion"]) == "1.0" and doc["name"] and doc["description"]
    declared = {name for p in doc.get("parameters", []) for name in p}
    names = [p["name"] for p in doc["phases"]]
    assert names and set(names) <= PHASES and len(names) == len(set(names)), names
    for phase in doc["phases"]:
        steps = phase["steps"]
        assert steps and len({s["name"] for s in steps}) == len(steps), phase["name"]
        for step in steps:
            assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", step["name"]) and step["action"] in ACTIONS, step
            commands = step["inputs"]["commands"]
            assert commands and all(isinstance(c, str) and c.strip() for c in commands), step["name"]
            assert commands[0] == "set -euo pipefail", f"{step['name']}: a failed command must fail the build"
            used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", "\n".join(commands)))
            assert used <= declared, f"{step['name']} uses undeclared parameters {used - declared}"


def test_the_ami_bakes_runtime_worker_and_unit_and_smoke_tests_the_gpu() -> None:
    docs = {p.name: _doc(p) for p in COMPONENTS}
    assert {"gpu-runtime.yml", "worker-image.yml", "smoke-test.yml"} <= set(docs)
    text = {name: json.dumps(d) for name, d in docs.items()}
    assert "nvidia-container-toolkit" in text["gpu-runtime.yml"] and "nvidia-smi" in text["gpu-runtime.yml"]
    assert "worker/Dockerfile" in text["worker-image.yml"] and "ctfleet-worker.service" in text["worker-image.yml"]
    assert "systemctl enable ctfleet-worker.service" in text["worker-image.yml"]
    [phase] = docs["smoke-test.yml"]["phases"]
    assert phase["name"] == "test"
    assert "--gpus all" in text["smoke-test.yml"] and '\\"cuda\\"' in text["smoke-test.yml"]
    assert "--network none" in text["smoke-test.yml"], "the baked image analyses with nothing fetched"


def test_the_unit_reads_the_environment_the_user_data_writes() -> None:
    from infra.components.fleet import WORKER_ENV_FILE, WORKER_UNIT

    unit = (REPO / "ami" / WORKER_UNIT).read_text()
    assert f"EnvironmentFile={WORKER_ENV_FILE}" in unit and f"--env-file {WORKER_ENV_FILE}" in unit
    assert "ctfleet-worker:current" in unit and "ExecStop=" in unit, "drained on shutdown"


@pytest.fixture(scope="module")
def program() -> Program:
    from infra.__main__ import build

    return run_program(lambda: build(SETTINGS, code=PLACEHOLDER_CODE, zones=("eu-west-1a", "eu-west-1b"), image_source=SOURCE,
                                     image_version="2.3.4"))


def test_pipeline_builds_the_recipe_from_the_dlami_with_the_documents(program: Program) -> None:
    m = program.mocks
    [recipe] = m.of_type("aws:imagebuilder/imageRecipe:ImageRecipe")
    assert recipe.inputs["parentImage"].startswith("ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu")
    assert recipe.inputs["version"] == "2.3.4"
    components = {r.state["arn"]: r for r in m.of_type("aws:imagebuilder/component:Component")}
    order = [components[c["componentArn"]].inputs["data"] for c in recipe.inputs["components"]]
    assert order == [(REPO / "ami" / "components" / n).read_text()
                     for n in ("gpu-runtime.yml", "worker-image.yml", "smoke-test.yml")]
    params = {p["name"]: p["value"] for c in recipe.inputs["components"] for p in c.get("parameters") or []}
    assert params == {"SourceUri": SOURCE, "ModelUri": "default"}
    [root] = recipe.inputs["blockDeviceMappings"]
    assert root["ebs"]["encrypted"] == "true" and root["ebs"]["volumeType"] == "gp3"
    [pipe] = m.of_type("aws:imagebuilder/imagePipeline:ImagePipeline")
    assert pipe.inputs["imageTestsConfiguration"]["imageTestsEnabled"] is True


def test_build_instances_use_imdsv2_and_read_only_the_source_archive(program: Program) -> None:
    m = program.mocks
    [infra] = m.of_type("aws:imagebuilder/infrastructureConfiguration:InfrastructureConfiguration")
    assert infra.inputs["instanceMetadataOptions"] == {"httpTokens": "required", "httpPutResponseHopLimit": 1}
    assert infra.inputs["terminateInstanceOnFailure"] is True
    [policy] = [r for r in m.of_type("aws:iam/rolePolicy:RolePolicy") if r.name == "image-build-source"]
    [stmt] = json.loads(policy.inputs["policy"])["Statement"]
    assert stmt["Action"] == ["s3:GetObject"] and stmt["Resource"] == [
        "arn:aws:s3:::ctfleet-artifacts-t/releases/ctfleet-v1.tar.gz"]


def test_no_pipeline_unless_configured() -> None:
    from infra.__main__ import build

    ran = run_program(lambda: build(SETTINGS, code=PLACEHOLDER_CODE, zones=("eu-west-1a", "eu-west-1b")))
    assert ran.mocks.of_type("aws:imagebuilder/imagePipeline:ImagePipeline") == []


def test_image_args_reject_a_source_that_is_no_archive_uri() -> None:
    from infra.components.image import ImageArgs

    with pytest.raises(ValueError, match="s3://"):
        ImageArgs(stack="s", region="r", version="1.0.0", source_uri="https://example.org/src.tgz")
    with pytest.raises(ValueError, match="major.minor.patch"):
        ImageArgs(stack="s", region="r", version="1.0", source_uri=SOURCE)
