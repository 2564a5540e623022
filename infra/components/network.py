"""The workers' network: a VPC with private subnets only, and VPC endpoints for every AWS API they call.

The GPU workers never need the internet: their image and model are baked into the AMI, and
every AWS service they call is reached through a VPC endpoint, so the subnets have no route
out at all (no internet gateway, no NAT). S3 and DynamoDB are gateway endpoints (routes in the
subnets' route table, free); SQS, Secrets Manager, CloudWatch Logs, EC2 and Auto Scaling are
interface endpoints with private DNS, so the SDK's default endpoint names resolve inside the VPC.

Two security groups: the workers' (no inbound rule at all; outbound HTTPS only, to the VPC's
endpoints and the gateway endpoints' prefix lists) and the interface endpoints' (HTTPS in from
the workers' group only, nothing out). Imports pulumi and pulumi_aws only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from ctfleet.settings import Settings

# What the workers call, by endpoint service name (com.amazonaws.<region>.<service>).
GATEWAY_SERVICES = ("s3", "dynamodb")
INTERFACE_SERVICES = ("sqs", "secretsmanager", "logs", "ec2", "autoscaling")
HTTPS = 443


@dataclass(frozen=True)
class NetworkArgs:
    """What :class:`Network` declares.

    Attributes
    ----------
    stack
        Name prefix (``Settings.stack``) of the VPC's ``Name`` tags.
    region
        The region, for the endpoint service names.
    cidr
        The VPC's address range; each zone gets a ``/20`` of it.
    zones
        Availability zones for the private subnets (at least two); empty: the first two the
        region reports available.
    tags
        Tags put on everything.
    """

    stack: str
    region: str
    cidr: str = "10.42.0.0/16"
    zones: Sequence[str] = ()
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        net = ipaddress.ip_network(self.cidr)
        if net.prefixlen > 20:
            raise ValueError(f"VPC cidr {self.cidr}: at most /20, each zone takes a /20 of it")
        if self.zones and len(self.zones) < 2:
            raise ValueError(f"zones {list(self.zones)}: the workers need subnets in at least two zones")

    @classmethod
    def from_settings(cls, settings: Settings, *, zones: Sequence[str] = (), cidr: str | None = None,
                      tags: Mapping[str, str] | None = None) -> "NetworkArgs":
        """The network of ``settings``'s stack (config ``ctfleet:zones``, ``ctfleet:vpcCidr``)."""
        return cls(stack=settings.stack, region=settings.region, zones=tuple(zones),
                   cidr=cidr or cls.cidr, tags=dict(tags or {}))

    def subnet_cidrs(self, n: int) -> list[str]:
        """The first ``n`` ``/20`` ranges of the VPC's range."""
        subnets = ipaddress.ip_network(self.cidr).subnets(new_prefix=20)
        return [str(next(subnets)) for _ in range(n)]


class Network(pulumi.ComponentResource):
    """The VPC, its private subnets, the endpoints and the two security groups.

    Attributes
    ----------
    vpc
        The VPC.
    subnets
        One private subnet per zone.
    worker_group
        The workers' security group (no inbound rules).
    endpoints
        Every VPC endpoint by service name.
    """

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ctfleet:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        # DNS support and hostnames: interface endpoints' private DNS names need both.
        self.vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=args.cidr, enable_dns_support=True,
                               enable_dns_hostnames=True, tags={**tags, "Name": f"{args.stack}-workers"}, opts=child)
        zones: pulumi.Input[Sequence[str]] = list(args.zones) or aws.get_availability_zones_output(
            state="available").names.apply(lambda names: list(names[:2]))
        cidrs = args.subnet_cidrs(max(2, len(args.zones)))
        self.route_table = aws.ec2.RouteTable(f"{name}-private", vpc_id=self.vpc.id,
                                              tags={**tags, "Name": f"{args.stack}-private"}, opts=child)
        self.subnets: list[aws.ec2.Subnet] = []
        for i, cidr in enumerate(cidrs):
            zone = pulumi.Output.from_input(zones).apply(lambda z, i=i: z[i])
            subnet = aws.ec2.Subnet(f"{name}-private-{i}", vpc_id=self.vpc.id, cidr_block=cidr, availability_zone=zone,
                                    map_public_ip_on_launch=False,
                                    tags={**tags, "Name": f"{args.stack}-private-{i}"}, opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-private-{i}", subnet_id=subnet.id,
                                          route_table_id=self.route_table.id, opts=child)
            self.subnets.append(subnet)
        self.endpoints: dict[str, aws.ec2.VpcEndpoint] = {}
        for service in GATEWAY_SERVICES:
            self.endpoints[service] = aws.ec2.VpcEndpoint(
                f"{name}-{service}", vpc_id=self.vpc.id, service_name=f"com.amazonaws.{args.region}.{service}",
                vpc_endpoint_type="Gateway", route_table_ids=[self.route_table.id], tags=tags, opts=child)
        self.worker_group = aws.ec2.SecurityGroup(
            f"{name}-workers", vpc_id=self.vpc.id, description="ctfleet GPU workers: no inbound; HTTPS to AWS endpoints",
            ingress=[],
            egress=[
                aws.ec2.SecurityGroupEgressArgs(protocol="tcp", from_port=HTTPS, to_port=HTTPS, cidr_blocks=[args.cidr],
                                                description="interface endpoints"),
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="tcp", from_port=HTTPS, to_port=HTTPS, description="S3 and DynamoDB gateway endpoints",
                    prefix_list_ids=[self.endpoints[s].prefix_list_id for s in GATEWAY_SERVICES]),
            ],
            tags={**tags, "Name": f"{args.stack}-workers"}, opts=child)
        self.endpoint_group = aws.ec2.SecurityGroup(
            f"{name}-endpoints", vpc_id=self.vpc.id, description="ctfleet interface endpoints: HTTPS from the workers",
            ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=HTTPS, to_port=HTTPS,
                                                      security_groups=[self.worker_group.id], description="workers")],
            egress=[], tags={**tags, "Name": f"{args.stack}-endpoints"}, opts=child)
        for service in INTERFACE_SERVICES:
            self.endpoints[service] = aws.ec2.VpcEndpoint(
                f"{name}-{service}", vpc_id=self.vpc.id, service_name=f"com.amazonaws.{args.region}.{service}",
                vpc_endpoint_type="Interface", private_dns_enabled=True, subnet_ids=[s.id for s in self.subnets],
                security_group_ids=[self.endpoint_group.id], tags=tags, opts=child)
        self.register_outputs({"vpc_id": self.vpc.id, "subnet_ids": [s.id for s in self.subnets],
                               "worker_security_group_id": self.worker_group.id})
