"""The worker AMI's EC2 Image Builder pipeline (optional: config ``ctfleet:imagePipeline``).

The recipe starts from AWS's Deep Learning Base AMI with the NVIDIA driver (Amazon Linux 2023,
through its public SSM parameter, so each build takes the current one) and applies the
component documents in ``ami/components/``: the container runtime and NVIDIA container toolkit,
the worker image built from the repository archive at ``source_uri`` with the model baked in and
its systemd unit, and the GPU smoke test. The build runs on a GPU instance in the stack's account
with a role of its own; the pipeline runs when asked (``aws imagebuilder
start-image-pipeline-execution``) and the AMI id it prints goes to ``ctfleet:amiId``
(``ami/README.md``).

Imports pulumi and pulumi_aws only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_aws as aws

from infra.components.policies import allow, assumed_by, policy_document

COMPONENTS_DIR = Path(__file__).resolve().parents[2] / "ami" / "components"
# Build order: runtime first, then the worker image on it; the smoke test runs last, on a test instance.
BUILD_COMPONENTS = ("gpu-runtime.yml", "worker-image.yml")
TEST_COMPONENTS = ("smoke-test.yml",)
PARENT_IMAGE = "ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
# What Image Builder's build instance needs of AWS itself (SSM for the agent that runs the components).
BUILD_MANAGED_POLICIES = ("AmazonSSMManagedInstanceCore", "EC2InstanceProfileForImageBuilder")


@dataclass(frozen=True)
class ImageArgs:
    """What :class:`Image` declares.

    Attributes
    ----------
    stack
        Name prefix (``Settings.stack``).
    version
        The recipe's semantic version (a new version for each change of the components).
    source_uri
        ``s3://`` URI of the repository archive the worker image is built from (the build role
        may read that object only).
    model_uri
        ``default`` or the ``s3://`` URI of model weights to bake in.
    build_instance_types
        GPU types the build and the smoke test run on.
    subnet_id, security_group_id
        Where the build instance runs (a subnet with a route out: it pulls packages and base images).
    tags
        Tags on every resource and on the AMI.
    """

    stack: str
    region: str
    version: str
    source_uri: str
    model_uri: str = "default"
    build_instance_types: Sequence[str] = ("g5.xlarge", "g6.xlarge")
    subnet_id: pulumi.Input[str] | None = None
    security_group_id: pulumi.Input[str] | None = None
    partition: pulumi.Input[str] = "aws"
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.source_uri.startswith("s3://") or not self.source_key:
            raise ValueError(f"ctfleet:imageSource {self.source_uri!r}: an s3:// URI of the repository archive")
        if len(self.version.split(".")) != 3:
            raise ValueError(f"image version {self.version!r}: major.minor.patch")

    @property
    def source_key(self) -> str:
        """The archive's key in its bucket."""
        return self.source_uri.removeprefix("s3://").partition("/")[2]


def component_document(name: str) -> str:
    """The text of one component document in ``ami/components/``."""
    return (COMPONENTS_DIR / name).read_text()


class Image(pulumi.ComponentResource):
    """The components, the recipe, the build infrastructure and the pipeline.

    Attributes
    ----------
    recipe
        The image recipe.
    pipeline
        The image pipeline.
    """

    def __init__(self, name: str, args: ImageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ctfleet:infra:Image", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        components = {
            doc: aws.imagebuilder.Component(
                f"{name}-{doc.removesuffix('.yml')}", name=f"{args.stack}-{doc.removesuffix('.yml')}",
                platform="Linux", version=args.version, data=component_document(doc), tags=tags, opts=child)
            for doc in (*BUILD_COMPONENTS, *TEST_COMPONENTS)
        }
        self.recipe = aws.imagebuilder.ImageRecipe(
            f"{name}-recipe", name=f"{args.stack}-worker", version=args.version, parent_image=PARENT_IMAGE,
            components=[
                aws.imagebuilder.ImageRecipeComponentArgs(
                    component_arn=components[doc].arn,
                    parameters=[aws.imagebuilder.ImageRecipeComponentParameterArgs(name="SourceUri", value=args.source_uri),
                                aws.imagebuilder.ImageRecipeComponentParameterArgs(name="ModelUri", value=args.model_uri)]
                    if doc == "worker-image.yml" else None)
                for doc in (*BUILD_COMPONENTS, *TEST_COMPONENTS)],
            block_device_mappings=[aws.imagebuilder.ImageRecipeBlockDeviceMappingArgs(
                device_name="/dev/xvda",
                ebs=aws.imagebuilder.ImageRecipeBlockDeviceMappingEbsArgs(
                    volume_type="gp3", volume_size=100, encrypted="true", delete_on_termination="true"))],
            tags=tags, opts=child)
        self.role = aws.iam.Role(
            f"{name}-build-role", description="ctfleet worker AMI builds",
            assume_role_policy=assumed_by("ec2.amazonaws.com"),
            tags=tags, opts=child)
        for managed in BUILD_MANAGED_POLICIES:
            aws.iam.RolePolicyAttachment(f"{name}-build-{managed}", role=self.role.name,
                                         policy_arn=pulumi.Output.concat("arn:", args.partition, ":iam::aws:policy/", managed),
                                         opts=child)
        aws.iam.RolePolicy(f"{name}-build-source", role=self.role.id, policy=policy_document(
            allow("Source", ["s3:GetObject"], [pulumi.Output.concat("arn:", args.partition, ":s3:::", args.source_uri[5:])])),
            opts=child)
        profile = aws.iam.InstanceProfile(f"{name}-build-profile", role=self.role.name, tags=tags, opts=child)
        infra = aws.imagebuilder.InfrastructureConfiguration(
            f"{name}-build", name=f"{args.stack}-worker-build", instance_profile_name=profile.name,
            instance_types=list(args.build_instance_types), terminate_instance_on_failure=True,
            subnet_id=args.subnet_id, security_group_ids=[args.security_group_id] if args.security_group_id else None,
            instance_metadata_options=aws.imagebuilder.InfrastructureConfigurationInstanceMetadataOptionsArgs(
                http_tokens="required", http_put_response_hop_limit=1),
            resource_tags=tags, tags=tags, opts=child)
        dist = aws.imagebuilder.DistributionConfiguration(
            f"{name}-dist", name=f"{args.stack}-worker",
            distributions=[aws.imagebuilder.DistributionConfigurationDistributionArgs(
                region=args.region,
                ami_distribution_configuration=aws.imagebuilder.DistributionConfigurationDistributionAmiDistributionConfigurationArgs(
                    name=f"{args.stack}-worker-{{{{ imagebuilder:buildDate }}}}", ami_tags=tags))],
            tags=tags, opts=child)
        self.pipeline = aws.imagebuilder.ImagePipeline(
            f"{name}-pipeline", name=f"{args.stack}-worker", image_recipe_arn=self.recipe.arn,
            infrastructure_configuration_arn=infra.arn, distribution_configuration_arn=dist.arn,
            image_tests_configuration=aws.imagebuilder.ImagePipelineImageTestsConfigurationArgs(
                image_tests_enabled=True, timeout_minutes=60),
            tags=tags, opts=child)
        self.register_outputs({"recipe_arn": self.recipe.arn, "pipeline_arn": self.pipeline.arn})
