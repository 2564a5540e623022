"""The ctfleet Pulumi program: reads the settings once and wires the components.

Resource names
--------------
Every name comes from :class:`ctfleet.settings.Settings`, whose ``stack`` field
prefixes them all (``{stack}-raw``, ``{stack}-ingest``, ``{stack}-studies`` ...).
For a deployment that prefix is derived from the Pulumi stack, so several
stacks (``dev``, ``prod``) live side by side in one account:

* ``pulumi config set ctfleet:stack NAME`` sets it explicitly (e.g. to adopt
  existing resources);
* otherwise it is ``ctfleet-{pulumi stack}``, the stack name lowercased with
  anything but letters and digits turned into ``-`` (``Prod_EU`` gives
  ``ctfleet-prod-eu``).

``CTFLEET_STACK`` in the environment is deliberately not used for the name:
that variable is the runtime's copy of this decision (the ``env`` output), and
deriving names from it would let a shell left pointing at one stack rename
another's resources. The program warns when the two differ.

Bucket names are global across all AWS accounts, so
``pulumi config set ctfleet:bucketSuffix SUFFIX`` (or ``CTFLEET_BUCKET_SUFFIX``)
appends a suffix to the three bucket names only. ``aws:region`` (or
``AWS_DEFAULT_REGION``) sets the region. Everything else comes from
``Settings.from_env()``.

The ``env`` stack output is ``Settings.to_env()`` for the deployed stack: the
environment that makes the runtime (Lambdas, workers, the ``ctfleet`` CLI) read
the same names, e.g. ``pulumi stack output env --json``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws

from ctfleet.settings import Env, Settings
from infra.components import (
    Alerts,
    AlertsArgs,
    Fleet,
    FleetArgs,
    Functions,
    FunctionsArgs,
    Identity,
    IdentityArgs,
    Image,
    ImageArgs,
    Monitoring,
    MonitoringArgs,
    Network,
    NetworkArgs,
    Queues,
    QueuesArgs,
    Storage,
    StorageArgs,
    Tables,
    TablesArgs,
)

# The runtime's default stack name doubles as the project prefix, so a
# deployed stack's names read as ``ctfleet-dev-...`` next to the local ``ctfleet-...``.
PROJECT_PREFIX = Settings().stack
# What `make lambda-asset` builds (config ctfleet:lambdaAsset overrides it).
DEFAULT_ASSET = Path(__file__).resolve().parents[1] / "build" / "lambda.zip"


def stack_name(pulumi_stack: str, prefix: str = PROJECT_PREFIX) -> str:
    """The ``Settings.stack`` for a Pulumi stack: ``{prefix}-{slug of pulumi_stack}``.

    Parameters
    ----------
    pulumi_stack
        The Pulumi stack's name (``pulumi.get_stack()``), e.g. ``dev``.
    prefix
        Project prefix.

    Returns
    -------
    str
        A name usable in bucket, queue, table and topic names.

    Raises
    ------
    ValueError
        If the stack name has no letter or digit.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", pulumi_stack.lower()).strip("-")
    if not slug:
        raise ValueError(f"stack name {pulumi_stack!r} has no letters or digits; set ctfleet:stack")
    return f"{prefix}-{slug}"


def settings_for_stack(
    base: Settings,
    pulumi_stack: str,
    *,
    name: str | None = None,
    bucket_suffix: str | None = None,
    region: str | None = None,
) -> Settings:
    """The settings a Pulumi stack deploys: ``base`` with its names made per-stack.

    Parameters
    ----------
    base
        Settings read once from the environment.
    pulumi_stack
        The Pulumi stack's name.
    name
        Explicit ``Settings.stack`` (config ``ctfleet:stack``); ``None`` or
        empty derives it with :func:`stack_name`.
    bucket_suffix
        Bucket name suffix (config ``ctfleet:bucketSuffix``); ``None`` keeps ``base``'s.
    region
        AWS region (config ``aws:region``); ``None`` or empty keeps ``base``'s.

    Returns
    -------
    Settings
    """
    return replace(
        base,
        stack=name or stack_name(pulumi_stack),
        bucket_suffix=base.bucket_suffix if bucket_suffix is None else bucket_suffix,
        region=region or base.region,
    )


def build(settings: Settings, *, code: tuple[str, str], ami_id: str | None = None, zones: tuple[str, ...] = (),
          image_source: str | None = None, image_version: str = "1.0.0",
          web_origins: tuple[str, ...] = ()) -> dict[str, Any]:
    """Declare every resource ``settings`` names and return the stack outputs.

    Parameters
    ----------
    settings
        The stack's settings; every resource name comes from here.
    code
        The functions' code asset (``make lambda-asset``): its path and sha256.
    ami_id
        The worker AMI (config ``ctfleet:amiId``, built as ``ami/README.md`` says); ``None``
        declares no fleet (the first ``pulumi up`` of a new account, before any AMI exists).
    zones
        Availability zones of the workers' subnets (config ``ctfleet:zones``); empty: the first
        two the region reports.
    image_source, image_version
        The worker AMI's Image Builder pipeline (config ``ctfleet:imageSource``, the ``s3://`` URI of
        the repository archive, and ``ctfleet:imageVersion``); ``None`` declares no pipeline.
    web_origins
        Origins of the web page (config ``ctfleet:webOrigin``, comma-separated ``https://host``):
        the only ones the buckets' CORS admits; empty: no browser may upload.

    Returns
    -------
    dict
        Output name to value (plain or ``pulumi.Output``), for ``pulumi.export``.
    """
    identity = aws.get_caller_identity_output()
    partition = aws.get_partition_output().partition
    # Tagged for cost allocation: finance splits the bill by stack.
    tags = {"ctfleet:stack": settings.stack}

    queues = Queues("queues", QueuesArgs.from_settings(settings, tags=tags, account_id=identity.account_id,
                                                       partition=partition))
    tables = Tables("tables", TablesArgs.from_settings(settings, tags=tags))
    ingest = queues.queues["ingest"]
    storage = Storage(
        "storage",
        StorageArgs.from_settings(
            settings,
            ingest_queue_arn=ingest.arn,
            ingest_queue_url=ingest.url,
            account_id=identity.account_id,
            web_origins=web_origins,
            tags=tags,
        ),
    )
    if not web_origins:
        pulumi.log.warn("no ctfleet:webOrigin: the buckets admit no browser origin (uploads from the web page fail)")
    alerts = Alerts(
        "alerts",
        AlertsArgs.from_settings(settings, account_id=identity.account_id, partition=partition, tags=tags),
    )
    users = Identity("identity", IdentityArgs.from_settings(settings, tags=tags))
    network = Network("network", NetworkArgs.from_settings(settings, zones=zones, tags=tags))
    fleet = None
    if ami_id:
        fleet = Fleet("fleet", FleetArgs(
            fleet=settings.fleet, ami_id=ami_id, env=settings.to_env(), log_group=settings.log_group,
            subnet_ids=[s.id for s in network.subnets], security_group_id=network.worker_group.id,
            job_queue_arns=[queues.queues[r].arn for r in ("urgent", "backfill")],
            dead_letter_arns=[queues.dlqs[r].arn for r in ("urgent", "backfill")],
            studies_bucket_arn=storage.buckets["studies"].arn, results_bucket_arn=storage.buckets["results"].arn,
            key_arn=storage.key.arn, queue_key_arn=queues.key.arn,
            table_arns=[tables.tables[r].arn for r in ("studies", "facilities", "ledger")],
            region=settings.region, tags=tags))
    else:
        pulumi.log.warn("no ctfleet:amiId: the GPU fleet is not declared; build the worker AMI (ami/README.md) "
                        "and set ctfleet:amiId")

    issuer = pulumi.Output.concat("https://cognito-idp.", settings.region, ".amazonaws.com/", users.pool.id)
    functions = Functions("functions", FunctionsArgs(
        stack=settings.stack, region=settings.region, code_bucket=settings.code_bucket, code_path=code[0],
        code_sha256=code[1],
        env={**settings.to_env(), Env.AUTH_ISSUER: issuer, Env.AUTH_CLIENT_ID: users.client.id},
        buckets={r: b.arn for r, b in storage.buckets.items()},
        queues={r: q.arn for r, q in queues.queues.items()},
        dead_letters={r: q.arn for r, q in queues.dlqs.items()},
        tables={r: t.arn for r, t in tables.tables.items()},
        streams={r: tables.tables[r].stream_arn for r in ("studies", "uploads")},
        storage_key_arn=storage.key.arn, queue_key_arn=queues.key.arn, alerts_key_arn=alerts.key.arn,
        alerts_topic_arn=alerts.topic.arn, secrets_key_arn=users.key.arn,
        secrets_prefix_arn=pulumi.Output.format("arn:{0}:secretsmanager:{1}:{2}:secret:{3}/facility/", partition,
                                                settings.region, identity.account_id, settings.stack),
        failures_queue=settings.stream_failures_queue, group_arn=fleet.group.arn if fleet is not None else None,
        schedule_s=settings.fleet.interval_s, tags=tags))

    outputs: dict[str, Any] = {
        "stack": settings.stack,
        "region": settings.region,
        "env": settings.to_env(),
        "storage_key_arn": storage.key.arn,
        "alerts_topic": alerts.topic.name,
        "alerts_topic_arn": alerts.topic.arn,
    }
    for role, bucket in storage.buckets.items():
        outputs[f"{role}_bucket"] = bucket.bucket
        outputs[f"{role}_bucket_arn"] = bucket.arn
    for role, queue in queues.queues.items():
        dlq = queues.dlqs[role]
        outputs[f"{role}_queue"] = queue.name
        outputs[f"{role}_queue_url"] = queue.url
        outputs[f"{role}_queue_arn"] = queue.arn
        outputs[f"{role}_dlq_url"] = dlq.url
        outputs[f"{role}_dlq_arn"] = dlq.arn
    for role, table in tables.tables.items():
        outputs[f"{role}_table"] = table.name
        outputs[f"{role}_table_arn"] = table.arn
    monitoring = Monitoring("monitoring", MonitoringArgs(
        stack=settings.stack, region=settings.region, topic_name=settings.operations_topic,
        job_queues=[q.name for q in settings.queues],
        urgent_queue=settings.urgent_queue.name, dead_letter_queues=[q.dlq_name for q in settings.queues],
        group_name=settings.fleet.group_name, account_id=identity.account_id, partition=partition,
        worker_log_group=fleet.log_group.name if fleet is not None else None, tags=tags))
    if image_source:
        image = Image("image", ImageArgs(stack=settings.stack, region=settings.region, version=image_version,
                                         source_uri=image_source, partition=partition, tags=tags))
        outputs["image_pipeline_arn"] = image.pipeline.arn
    outputs["operations_topic_arn"] = monitoring.topic.arn
    outputs["user_pool_id"] = users.pool.id
    outputs["web_client_id"] = users.client.id
    outputs["auth_issuer"] = issuer
    outputs["functions"] = {r: f.name for r, f in functions.functions.items()}
    outputs["facility_secret_arns"] = {f: s.arn for f, s in users.secrets.items()}
    outputs["vpc_id"] = network.vpc.id
    outputs["worker_subnet_ids"] = [s.id for s in network.subnets]
    if fleet is not None:
        outputs["fleet_group"] = fleet.group.name
        outputs["fleet_launch_template_id"] = fleet.template.id
        outputs["worker_role_arn"] = fleet.role.arn
    outputs["studies_table_stream_arn"] = tables.tables["studies"].stream_arn
    outputs["uploads_table_stream_arn"] = tables.tables["uploads"].stream_arn
    return outputs


def code_asset(path: Path) -> tuple[str, str]:
    """The functions' asset at ``path`` and its sha256; a clear error when it was not built."""
    if not path.is_file():
        raise SystemExit(f"{path}: the functions' code asset is missing; build it with `make lambda-asset` "
                         "(or set ctfleet:lambdaAsset)")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return str(path), digest.hexdigest()


def _config_list(config: pulumi.Config, key: str) -> tuple[str, ...]:
    """A comma-separated config value as its items (``()`` when unset)."""
    return tuple(item.strip() for item in (config.get(key) or "").split(",") if item.strip())


def main() -> None:
    """Read the settings once, build the stack and export its outputs."""
    config = pulumi.Config()
    base = Settings.from_env()
    settings = settings_for_stack(
        base,
        pulumi.get_stack(),
        name=config.get("stack"),
        bucket_suffix=config.get("bucketSuffix"),
        region=pulumi.Config("aws").get("region"),
    )
    if base.stack != PROJECT_PREFIX and base.stack != settings.stack:
        pulumi.log.warn(
            f"CTFLEET_STACK={base.stack!r} in the environment is ignored; this stack's names use "
            f"{settings.stack!r} (set ctfleet:stack to choose it)"
        )
    declared = build(settings, code=code_asset(Path(config.get("lambdaAsset") or DEFAULT_ASSET)),
                     ami_id=config.get("amiId"), zones=_config_list(config, "zones"),
                     image_source=config.get("imageSource"), image_version=config.get("imageVersion") or "1.0.0",
                     web_origins=_config_list(config, "webOrigin"))
    for name, value in declared.items():
        pulumi.export(name, value)


# Pulumi runs this file as __main__; importing it (tests) declares nothing.
if __name__ == "__main__":
    main()
