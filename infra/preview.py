"""What ``pulumi up`` would create, without an AWS account or the Pulumi CLI.

``python -m infra.preview`` runs the program (:func:`infra.__main__.build`) under Pulumi's mocked
engine (:func:`pulumi.runtime.set_mocks`) and lists every resource it declares with its type,
name and key properties; ``--json`` prints every resource with all its inputs (policies, user
data and all) for a reviewer's own tools; ``--markdown --out docs/infrastructure.md`` writes the
reviewable page. The mocks answer as AWS would (ARNs, URLs, ids in a placeholder account), so
policies read as they would in a real stack.

Imports pulumi, ``ctfleet.settings`` and the program.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from ctfleet.settings import Settings

ACCOUNT = "123456789012"
PLACEHOLDER_AMI = "ami-00000000000000000"
PLACEHOLDER_SOURCE = "s3://ctfleet-artifacts/ctfleet-src.tar.gz"
PLACEHOLDER_ORIGIN = "https://ctfleet.hospital.example"
# The functions' asset as `make lambda-asset` would leave it; the mocked engine never reads it.
PLACEHOLDER_CODE = ("build/lambda.zip", "0" * 64)

# Per resource type (the provider's token), the inputs a reviewer looks at first.
KEY_PROPERTIES: dict[str, tuple[str, ...]] = {
    "aws:s3/bucket:Bucket": ("bucket",),
    "aws:sqs/queue:Queue": ("name", "visibilityTimeoutSeconds", "messageRetentionSeconds", "kmsMasterKeyId",
                            "sqsManagedSseEnabled"),
    "aws:dynamodb/table:Table": ("name", "billingMode", "streamViewType"),
    "aws:sns/topic:Topic": ("name", "kmsMasterKeyId"),
    "aws:kms/key:Key": ("description", "enableKeyRotation"),
    "aws:ec2/vpc:Vpc": ("cidrBlock",),
    "aws:ec2/subnet:Subnet": ("cidrBlock", "availabilityZone", "mapPublicIpOnLaunch"),
    "aws:ec2/vpcEndpoint:VpcEndpoint": ("serviceName", "vpcEndpointType", "privateDnsEnabled"),
    "aws:ec2/securityGroup:SecurityGroup": ("description", "ingress"),
    "aws:ec2/launchTemplate:LaunchTemplate": ("imageId", "metadataOptions", "blockDeviceMappings"),
    "aws:autoscaling/group:Group": ("name", "minSize", "maxSize", "capacityRebalance", "mixedInstancesPolicy",
                                    "initialLifecycleHooks"),
    "aws:iam/role:Role": ("description",),
    "aws:s3/bucketCorsConfiguration:BucketCorsConfiguration": ("bucket", "corsRules"),
    "aws:cloudwatch/logGroup:LogGroup": ("name", "retentionInDays"),
    "aws:imagebuilder/imageRecipe:ImageRecipe": ("name", "version", "parentImage"),
    "aws:imagebuilder/component:Component": ("name", "version"),
    "aws:lambda/function:Function": ("name", "handler", "runtime", "timeout", "memorySize",
                                     "reservedConcurrentExecutions"),
    "aws:lambda/eventSourceMapping:EventSourceMapping": ("eventSourceArn", "functionName", "batchSize",
                                                         "bisectBatchOnFunctionError", "functionResponseTypes"),
    "aws:cloudwatch/eventRule:EventRule": ("name", "scheduleExpression", "eventPattern"),
    "aws:s3/bucketObjectv2:BucketObjectv2": ("bucket", "key"),
}


@dataclass
class Declared:
    """One resource as the program declared it (inputs under the provider's camelCase names)."""

    typ: str
    name: str
    inputs: dict[str, Any]
    state: dict[str, Any]

    def key_properties(self) -> dict[str, Any]:
        """The inputs :data:`KEY_PROPERTIES` names for this type (present ones only)."""
        keys = KEY_PROPERTIES.get(self.typ, ("name",))
        return {k: _brief(self.inputs[k]) for k in keys if k in self.inputs}


def _brief(value: Any) -> Any:
    """A property as a reviewer reads it: a mixed instances policy as its strategy and types."""
    if isinstance(value, dict) and "instancesDistribution" in value:
        dist = value["instancesDistribution"]
        return {"spot": dist.get("spotAllocationStrategy"), "onDemandBase": dist.get("onDemandBaseCapacity"),
                "types": [o.get("instanceType") for o in value.get("launchTemplate", {}).get("overrides", [])]}
    return value


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    """Records every resource and answers with the attributes AWS would compute."""

    region: str = "us-east-1"
    resources: list[Declared] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        inputs = dict(args.inputs)
        state = dict(inputs)
        rid, arn = f"{args.name}-id", f"arn:aws:{args.typ.split(':')[1].split('/')[0]}:{self.region}:{ACCOUNT}:{args.name}"
        name = inputs.get("name", args.name)
        if args.typ == "aws:s3/bucket:Bucket":
            rid, arn = inputs["bucket"], f"arn:aws:s3:::{inputs['bucket']}"
        elif args.typ == "aws:sqs/queue:Queue":
            rid = f"https://sqs.{self.region}.amazonaws.com/{ACCOUNT}/{name}"
            arn = f"arn:aws:sqs:{self.region}:{ACCOUNT}:{name}"
            state["url"] = rid
        elif args.typ == "aws:dynamodb/table:Table":
            arn = f"arn:aws:dynamodb:{self.region}:{ACCOUNT}:table/{name}"
            if inputs.get("streamEnabled"):
                state["streamArn"] = f"{arn}/stream/2024-01-01T00:00:00.000"
        elif args.typ == "aws:sns/topic:Topic":
            arn = f"arn:aws:sns:{self.region}:{ACCOUNT}:{name}"
        elif args.typ == "aws:kms/key:Key":
            state["keyId"] = f"key-{args.name}"
            arn = f"arn:aws:kms:{self.region}:{ACCOUNT}:key/key-{args.name}"
        elif args.typ == "aws:ec2/vpcEndpoint:VpcEndpoint" and inputs.get("vpcEndpointType") == "Gateway":
            state["prefixListId"] = f"pl-{args.name}"
        elif args.typ == "aws:autoscaling/group:Group":
            arn = f"arn:aws:autoscaling:{self.region}:{ACCOUNT}:autoScalingGroup:{args.name}-uuid:autoScalingGroupName/{name}"
        elif args.typ == "aws:cloudwatch/logGroup:LogGroup":
            arn = f"arn:aws:logs:{self.region}:{ACCOUNT}:log-group:{name}"
        elif args.typ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
            kind = "role" if args.typ.endswith("Role") else "instance-profile"
            state["name"] = inputs.get("name", f"{args.name}-x")
            arn = f"arn:aws:iam::{ACCOUNT}:{kind}/{state['name']}"
        state.setdefault("arn", arn)
        self.resources.append(Declared(args.typ, args.name, inputs, state))
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/preview", "userId": "PREVIEW",
                    "id": ACCOUNT}, []
        if args.token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "reverseDnsPrefix": "com.amazonaws", "id": "aws"}, []
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": [f"{self.region}{z}" for z in "abc"], "id": self.region}, []
        raise ValueError(f"the preview has no answer for the invoke {args.token}")


def run_mocked(program: Callable[[], Any], mocks: RecordingMocks, *, stack: str = "preview",
               logger: Any = None) -> dict[str, Any]:
    """Run ``program`` in a fresh mocked engine; returns what it returned, resolved."""
    pulumi.runtime.set_mocks(mocks, project="ctfleet", stack=stack, preview=False, logger=logger)
    outputs: dict[str, Any] = {}

    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        return pulumi.Output.from_input(program()).apply(outputs.update)

    run()  # returns after every registration has completed
    return outputs


def render(settings: Settings, *, ami_id: str | None = PLACEHOLDER_AMI, zones: tuple[str, ...] = (),
           image_source: str | None = PLACEHOLDER_SOURCE) -> list[Declared]:
    """Every resource the program declares for ``settings``, by type and name (registration order varies)."""
    from infra.__main__ import build

    mocks = RecordingMocks(region=settings.region)
    run_mocked(lambda: build(settings, code=PLACEHOLDER_CODE, ami_id=ami_id, zones=zones, image_source=image_source,
                             web_origins=(PLACEHOLDER_ORIGIN,)), mocks)
    return sorted(mocks.resources, key=lambda r: (r.typ, r.name))


def _jsonable(value: Any) -> Any:
    """An input JSON has no type for: a file asset as its path."""
    if isinstance(value, pulumi.FileAsset):
        return {"fileAsset": value.path}
    raise TypeError(f"{type(value).__name__} in a resource's inputs")


def markdown(resources: Sequence[Declared], settings: Settings) -> str:
    """The reviewable page: resource counts by type, then every resource with its key properties."""
    counts: dict[str, int] = {}
    for r in resources:
        counts[r.typ] = counts.get(r.typ, 0) + 1
    lines = [
        "# Infrastructure: what `pulumi up` creates",
        "",
        f"Generated by `python -m infra.preview --markdown --out docs/infrastructure.md` (Pulumi's mocked engine, "
        f"default settings, stack `{settings.stack}`, region `{settings.region}`, a placeholder AMI, image "
        "source, web origin and code asset); do not edit by "
        "hand. `python -m infra.preview --json` prints every input of every resource.",
        "",
        f"{len(resources)} resources.",
        "",
        "| type | count |",
        "|---|---|",
        *[f"| `{t}` | {n} |" for t, n in sorted(counts.items())],
        "",
        "| type | name | key properties |",
        "|---|---|---|",
    ]
    for r in resources:
        props = json.dumps(r.key_properties(), sort_keys=True).replace("|", "\\|")
        short = r.typ.split(":")[1] if r.typ.startswith("aws:") else r.typ
        lines.append(f"| `{short}` | {r.name} | `{props}` |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.preview", description=__doc__.splitlines()[0])
    form = ap.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="every resource with all its inputs, as JSON")
    form.add_argument("--markdown", action="store_true", help="the reviewable page (docs/infrastructure.md)")
    ap.add_argument("--ami", default=PLACEHOLDER_AMI, help="the worker AMI id (default: a placeholder)")
    ap.add_argument("--stack", default=None, help="Settings.stack (default: the runtime's default)")
    ap.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    a = ap.parse_args(argv)
    settings = Settings() if a.stack is None else Settings(stack=a.stack)
    resources = render(settings, ami_id=a.ami)
    if a.json:
        text = json.dumps([{"type": r.typ, "name": r.name, "inputs": r.inputs} for r in resources], indent=2,
                          sort_keys=True, default=_jsonable) + "\n"
    elif a.markdown:
        text = markdown(resources, settings)
    else:
        width = max(len(r.typ) for r in resources)
        text = "".join(f"{r.typ:<{width}}  {r.name}  {json.dumps(r.key_properties(), sort_keys=True)}\n"
                       for r in resources)
    if a.out is None:
        sys.stdout.write(text)
    else:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
