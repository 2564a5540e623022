"""DynamoDB tables: studies and uploads (with the streams triage and audit read; uploads with TTL),
the cost ledger and the append-only audit trail.

Each table is on-demand, KMS-encrypted and point-in-time recoverable, with the
global secondary indexes its :class:`ctfleet.settings.TableSpec` lists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from ctfleet.settings import Settings, TableSpec

_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
STREAM_VIEW_TYPES = frozenset({"KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"})


def key_attributes(spec: TableSpec) -> list[str]:
    """Every attribute a table's keys use: its partition key, then its indexes' keys.

    DynamoDB rejects attribute definitions that no key uses, so the table
    declares exactly these, each once, in a stable order (no spurious diffs).

    Parameters
    ----------
    spec
        The table's settings.

    Returns
    -------
    list of str
        Attribute names, first occurrence order.
    """
    names = [spec.partition_key]
    for index in spec.indexes:
        names += [index.partition_key, index.sort_key]
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class TablesArgs:
    """What :class:`Tables` declares.

    Attributes
    ----------
    tables
        Table settings by role (``studies``, ``uploads``).
    kms_key_arn
        Customer key for encryption at rest; ``None`` uses the AWS-managed
        ``aws/dynamodb`` key (still KMS, with CloudTrail-logged use).
    tags
        Tags put on every table.
    """

    tables: Mapping[str, TableSpec]
    kms_key_arn: pulumi.Input[str] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role, spec in self.tables.items():
            if not _TABLE_NAME.match(spec.name):
                raise ValueError(f"{role} table name {spec.name!r}: DynamoDB allows 3-255 of [A-Za-z0-9_.-]")
            if spec.stream_view_type is not None and spec.stream_view_type not in STREAM_VIEW_TYPES:
                raise ValueError(f"{role} table stream_view_type {spec.stream_view_type!r} not in {sorted(STREAM_VIEW_TYPES)}")
            names = [index.name for index in spec.indexes]
            if len(set(names)) != len(names):
                raise ValueError(f"{role} table has duplicate index names {names}")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        kms_key_arn: pulumi.Input[str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> "TablesArgs":
        """The tables ``settings`` names.

        Parameters
        ----------
        settings
            The stack's settings.
        kms_key_arn
            Customer key for encryption at rest, or ``None`` for ``aws/dynamodb``.
        tags
            Tags put on every table.

        Returns
        -------
        TablesArgs
        """
        return cls(
            tables={"studies": settings.studies_table, "uploads": settings.uploads_table,
                    "ledger": settings.ledger_table, "audit": settings.audit_table,
                    "facilities": settings.facilities_table, "alerts": settings.alerts_table},
            kms_key_arn=kms_key_arn,
            tags=dict(tags or {}),
        )


class Tables(pulumi.ComponentResource):
    """Each table in :class:`TablesArgs`: on-demand, encrypted, point-in-time recoverable.

    Attributes
    ----------
    tables
        The tables by role.
    """

    def __init__(self, name: str, args: TablesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        """Declare the tables.

        Parameters
        ----------
        name
            The component's Pulumi name.
        args
            What to declare.
        opts
            Pulumi options for the component.
        """
        super().__init__("ctfleet:infra:Tables", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.tables: dict[str, aws.dynamodb.Table] = {}
        for role, spec in args.tables.items():
            self.tables[role] = aws.dynamodb.Table(
                f"{name}-{role}",
                name=spec.name,
                # Arrivals are bursty (a backfill, then nothing): on-demand
                # costs nothing idle and never throttles a burst we could absorb.
                billing_mode="PAY_PER_REQUEST",
                hash_key=spec.partition_key,
                attributes=[
                    aws.dynamodb.TableAttributeArgs(name=attribute, type="S")
                    for attribute in key_attributes(spec)
                ],
                global_secondary_indexes=[
                    aws.dynamodb.TableGlobalSecondaryIndexArgs(
                        name=index.name,
                        # key_schemas, not the deprecated hash_key/range_key of v7.
                        key_schemas=[
                            aws.dynamodb.TableGlobalSecondaryIndexKeySchemaArgs(
                                attribute_name=index.partition_key, key_type="HASH"
                            ),
                            aws.dynamodb.TableGlobalSecondaryIndexKeySchemaArgs(
                                attribute_name=index.sort_key, key_type="RANGE"
                            ),
                        ],
                        # The worklist reads whole records from the index; ALL
                        # saves a second read per row for a little storage.
                        projection_type="ALL",
                    )
                    for index in spec.indexes
                ],
                stream_enabled=spec.stream_view_type is not None,
                stream_view_type=spec.stream_view_type,
                ttl=(
                    aws.dynamodb.TableTtlArgs(attribute_name=spec.ttl_attribute, enabled=True)
                    if spec.ttl_attribute
                    else None
                ),
                point_in_time_recovery=aws.dynamodb.TablePointInTimeRecoveryArgs(enabled=True),
                server_side_encryption=aws.dynamodb.TableServerSideEncryptionArgs(
                    enabled=True, kms_key_arn=args.kms_key_arn
                ),
                tags=dict(args.tags),
                opts=child,
            )
        self.register_outputs({f"{role}_arn": table.arn for role, table in self.tables.items()})
