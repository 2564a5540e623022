"""The one source of settings.

Resource names, queue and table attributes and environment variable names are
defined here once; ``infra/`` declares resources from them and the runtime
reads them. Nothing reads the environment at import time: ``Settings.from_env``
is called once in ``main()`` (or a Lambda's cold start) and passed down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace


class Env:
    """Names of the environment variables ctfleet reads. Nothing else is read."""

    STACK = "CTFLEET_STACK"
    REGION = "AWS_DEFAULT_REGION"
    # boto3's own variable: every client gets its endpoint from here (and the
    # service-specific AWS_ENDPOINT_URL_<SERVICE> variants boto3 also honours).
    ENDPOINT = "AWS_ENDPOINT_URL"
    BUCKET_SUFFIX = "CTFLEET_BUCKET_SUFFIX"
    FACILITIES = "CTFLEET_FACILITIES"
    HIGH_THRESHOLD = "CTFLEET_HIGH_THRESHOLD"
    MODEL = "CTFLEET_MODEL"
    DEVICE = "CTFLEET_DEVICE"
    INSTANCE_TYPE = "CTFLEET_INSTANCE_TYPE"
    GPU_PRICE_PER_HOUR = "CTFLEET_GPU_PRICE_PER_HOUR"
    IMDS_ENDPOINT = "CTFLEET_IMDS_ENDPOINT"
    LOG_LEVEL = "CTFLEET_LOG_LEVEL"
    API_URL = "CTFLEET_API_URL"
    JOB_VISIBILITY_S = "CTFLEET_JOB_VISIBILITY_S"
    HEARTBEAT_S = "CTFLEET_HEARTBEAT_S"
    UPLOAD_EXPIRY_S = "CTFLEET_UPLOAD_EXPIRY_S"
    HOME = "CTFLEET_HOME"
    MODEL_CACHE = "CTFLEET_MODEL_CACHE"
    FLEET_MAX = "CTFLEET_FLEET_MAX"
    FLEET_BOOT_S = "CTFLEET_FLEET_BOOT_S"
    FLEET_IDLE_GRACE_S = "CTFLEET_FLEET_IDLE_GRACE_S"
    FLEET_HORIZON_S = "CTFLEET_FLEET_HORIZON_S"
    FLEET_HOOK_S = "CTFLEET_FLEET_HOOK_S"
    FLEET_TYPES = "CTFLEET_FLEET_TYPES"
    WORKER_PREFETCH = "CTFLEET_WORKER_PREFETCH"
    AUTH_ISSUER = "CTFLEET_AUTH_ISSUER"
    AUTH_CLIENT_ID = "CTFLEET_AUTH_CLIENT_ID"
    AUTH_JWKS_URL = "CTFLEET_AUTH_JWKS_URL"


@dataclass(frozen=True)
class QueueSpec:
    """An SQS queue and its dead-letter queue."""

    name: str
    visibility_timeout_s: int
    long_poll_s: int
    max_receive_count: int
    retention_s: int = 4 * 24 * 3600
    dlq_retention_s: int = 14 * 24 * 3600

    @property
    def dlq_name(self) -> str:
        return f"{self.name}-dlq"


@dataclass(frozen=True)
class IndexSpec:
    """A global secondary index: partition and sort key names (all strings)."""

    name: str
    partition_key: str
    sort_key: str


@dataclass(frozen=True)
class TableSpec:
    """A DynamoDB table with a string partition key."""

    name: str
    partition_key: str
    indexes: tuple[IndexSpec, ...] = ()
    stream_view_type: str | None = None
    ttl_attribute: str | None = None


# Studies per minute one instance of each type analyses (model 0.3, ~400-slice chest CT,
# measured or estimated from the CPU benchmark scaled by GPU throughput); the scaler sizes
# the fleet with these. An unknown type counts as the slowest.
# Cognito groups: every user is in one facility's group and one role's (ctfleet.access reads them
# from the token; infra/ declares them).
FACILITY_GROUP = "facility:"
ROLE_GROUP = "role:"
ROLES = ("clinician", "radiologist", "it", "finance")

THROUGHPUT_PER_MIN = {
    "g4dn.xlarge": 1.5,
    "g4dn.2xlarge": 1.8,
    "g5.xlarge": 2.5,
    "g5.2xlarge": 3.0,
    "g6.xlarge": 2.5,
}


@dataclass(frozen=True)
class FleetSpec:
    """The spot GPU Auto Scaling group and how the scaler sizes it."""

    group_name: str
    max_size: int
    instance_types: tuple[str, ...]
    # Seconds from launch until a worker takes its first job (AMI boot, container start, model load).
    boot_s: float
    # Idle machines are kept this long after the last work, then the group goes back to zero.
    idle_grace_s: float
    # Backfill is sized to drain within this horizon.
    backfill_horizon_s: float
    # Share of the maximum that backfill may never take, so urgent work finds a machine
    # free or booting (floor: a group of 2 lets backfill use both; of 10, keeps 1).
    urgent_reserve_fraction: float = 0.1
    # Seconds between scheduled scaler passes (ingest also nudges it at once for urgent work).
    interval_s: float = 60.0
    # The termination lifecycle hook holds a terminating instance this long (or until its worker
    # completes the action): the job finishes if it ends well within it, else it is handed back.
    termination_hook_s: float = 300.0

    @property
    def termination_hook(self) -> str:
        return f"{self.group_name}-terminate"

    def throughput_per_min(self, instance_type: str) -> float:
        """Studies per minute of one instance of ``instance_type``."""
        return THROUGHPUT_PER_MIN.get(instance_type, min(THROUGHPUT_PER_MIN.values()))


@dataclass(frozen=True)
class Settings:
    """Everything the runtime and ``infra/`` need to agree on."""

    stack: str = "ctfleet"
    region: str = "us-east-1"
    endpoint_url: str | None = None
    bucket_suffix: str = ""
    facilities: tuple[str, ...] = ("demo",)
    high_threshold: float = 0.85
    model: str = "default"
    device: str = "auto"
    instance_type: str = "g5.xlarge"
    gpu_price_per_hour: float = 0.45
    imds_endpoint: str = "http://169.254.169.254"
    log_level: str = "INFO"
    api_url: str | None = None
    # Where the local stack keeps its facility secrets (so `ctfleet deid` and
    # `ctfleet local up` agree on study keys across runs).
    home: str = "~/.ctfleet"
    # Where models named by an s3:// URI are downloaded to (by content), once.
    model_cache_dir: str = "~/.cache/ctfleet/models"

    # How long a received job stays invisible without a heartbeat: the time a
    # crashed worker's job waits before another worker gets it.
    job_visibility_s: int = 30
    # Seconds between visibility extensions; at most half the visibility
    # timeout (checked when the worker starts a job).
    heartbeat_s: int = 10
    # A job that fails this many times ends FAILED. Hand-backs (spot reclaims, scale-in) and
    # duplicate deliveries are not failures, so the queues' maxReceiveCount is larger: the
    # dead-letter queue only catches jobs that kill their worker outright, every time.
    job_max_failures: int = 3
    job_max_receives: int = 10
    # Read the next study while the GPU analyzes the current one (off only to measure what it buys).
    worker_prefetch: bool = True
    # How long a presigned upload URL stays valid, and how long an upload may
    # stay incomplete before it expires.
    upload_url_ttl_s: int = 3600
    # What one upload may declare, and how many a facility may hold open (created, not completed).
    upload_max_files: int = 20_000
    upload_max_bytes: int = 16 * 1024**3
    uploads_open_max: int = 200
    upload_expiry_s: int = 24 * 3600
    # Raw (PHI) objects are deleted after ingest; the lifecycle rule is the backstop.
    raw_expiry_days: int = 2
    # Upload records stay answerable this long (DynamoDB's TTL removes them after).
    upload_retention_days: int = 30
    # The fleet: at most this many GPU instances; boot time and idle grace before scale-in to zero.
    fleet_max: int = 2
    fleet_boot_s: float = 60.0
    fleet_idle_grace_s: float = 300.0
    # A backfill is sized to drain within this long.
    fleet_backfill_horizon_s: float = 3600.0
    # How long the termination lifecycle hook holds a terminating instance.
    fleet_termination_hook_s: float = 300.0
    # The GPU types the group's spot requests may take (after ``instance_type``, always the first):
    # several, so one type's spot shortage in a zone does not stop the fleet.
    fleet_instance_types: tuple[str, ...] = ("g5.xlarge", "g6.xlarge", "g4dn.xlarge")
    message_version: int = 1
    # How long a process trusts a facility's settings before reading them again.
    facility_config_cache_s: float = 60.0
    # Identity: the Cognito user pool (its issuer URL) and app client whose access tokens the API
    # trusts; the JWKS URL defaults to the issuer's (locally, the moto server's copy).
    auth_issuer: str | None = None
    auth_client_id: str | None = None
    auth_jwks_url: str | None = None

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read the settings once from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        base = cls()
        facilities = tuple(f.strip() for f in env.get(Env.FACILITIES, "").split(",") if f.strip())
        types = tuple(t.strip() for t in env.get(Env.FLEET_TYPES, "").split(",") if t.strip())
        return replace(
            base,
            stack=env.get(Env.STACK, base.stack),
            region=env.get(Env.REGION, base.region),
            endpoint_url=env.get(Env.ENDPOINT) or None,
            bucket_suffix=env.get(Env.BUCKET_SUFFIX, base.bucket_suffix),
            facilities=facilities or base.facilities,
            high_threshold=float(env.get(Env.HIGH_THRESHOLD, base.high_threshold)),
            model=env.get(Env.MODEL, base.model),
            device=env.get(Env.DEVICE, base.device),
            instance_type=env.get(Env.INSTANCE_TYPE, base.instance_type),
            gpu_price_per_hour=float(env.get(Env.GPU_PRICE_PER_HOUR, base.gpu_price_per_hour)),
            imds_endpoint=env.get(Env.IMDS_ENDPOINT, base.imds_endpoint),
            log_level=env.get(Env.LOG_LEVEL, base.log_level),
            api_url=env.get(Env.API_URL) or None,
            job_visibility_s=int(env.get(Env.JOB_VISIBILITY_S, base.job_visibility_s)),
            heartbeat_s=int(env.get(Env.HEARTBEAT_S, base.heartbeat_s)),
            upload_expiry_s=int(env.get(Env.UPLOAD_EXPIRY_S, base.upload_expiry_s)),
            home=env.get(Env.HOME, base.home),
            model_cache_dir=env.get(Env.MODEL_CACHE, base.model_cache_dir),
            fleet_max=int(env.get(Env.FLEET_MAX, base.fleet_max)),
            fleet_boot_s=float(env.get(Env.FLEET_BOOT_S, base.fleet_boot_s)),
            fleet_idle_grace_s=float(env.get(Env.FLEET_IDLE_GRACE_S, base.fleet_idle_grace_s)),
            fleet_backfill_horizon_s=float(env.get(Env.FLEET_HORIZON_S, base.fleet_backfill_horizon_s)),
            fleet_termination_hook_s=float(env.get(Env.FLEET_HOOK_S, base.fleet_termination_hook_s)),
            fleet_instance_types=types or base.fleet_instance_types,
            worker_prefetch=env.get(Env.WORKER_PREFETCH, "1" if base.worker_prefetch else "0") != "0",
            auth_issuer=env.get(Env.AUTH_ISSUER) or None,
            auth_client_id=env.get(Env.AUTH_CLIENT_ID) or None,
            auth_jwks_url=env.get(Env.AUTH_JWKS_URL) or None,
        )

    def to_env(self) -> dict[str, str]:
        """The environment that makes ``from_env`` give back these settings.

        Used to hand settings to worker subprocesses and to Lambda functions.
        """
        env = {
            Env.STACK: self.stack,
            Env.REGION: self.region,
            Env.BUCKET_SUFFIX: self.bucket_suffix,
            Env.FACILITIES: ",".join(self.facilities),
            Env.HIGH_THRESHOLD: repr(self.high_threshold),
            Env.MODEL: self.model,
            Env.DEVICE: self.device,
            Env.INSTANCE_TYPE: self.instance_type,
            Env.GPU_PRICE_PER_HOUR: repr(self.gpu_price_per_hour),
            Env.IMDS_ENDPOINT: self.imds_endpoint,
            Env.LOG_LEVEL: self.log_level,
            Env.JOB_VISIBILITY_S: str(self.job_visibility_s),
            Env.HEARTBEAT_S: str(self.heartbeat_s),
            Env.UPLOAD_EXPIRY_S: str(self.upload_expiry_s),
            Env.HOME: self.home,
            Env.MODEL_CACHE: self.model_cache_dir,
            Env.FLEET_MAX: str(self.fleet_max),
            Env.FLEET_BOOT_S: repr(self.fleet_boot_s),
            Env.FLEET_IDLE_GRACE_S: repr(self.fleet_idle_grace_s),
            Env.FLEET_HORIZON_S: repr(self.fleet_backfill_horizon_s),
            Env.FLEET_HOOK_S: repr(self.fleet_termination_hook_s),
            Env.FLEET_TYPES: ",".join(self.fleet_instance_types),
            Env.WORKER_PREFETCH: "1" if self.worker_prefetch else "0",
        }
        if self.endpoint_url:
            env[Env.ENDPOINT] = self.endpoint_url
        for name, value in ((Env.AUTH_ISSUER, self.auth_issuer), (Env.AUTH_CLIENT_ID, self.auth_client_id),
                            (Env.AUTH_JWKS_URL, self.auth_jwks_url)):
            if value:
                env[name] = value
        if self.api_url:
            env[Env.API_URL] = self.api_url
        return env

    # -- resource names ---------------------------------------------------------------

    def _bucket(self, role: str) -> str:
        suffix = f"-{self.bucket_suffix}" if self.bucket_suffix else ""
        return f"{self.stack}-{role}{suffix}"

    @property
    def raw_bucket(self) -> str:
        """Uploads as sent, with PHI: KMS-encrypted, deleted after ingest."""
        return self._bucket("raw")

    @property
    def studies_bucket(self) -> str:
        """De-identified series, the worker's input."""
        return self._bucket("studies")

    @property
    def results_bucket(self) -> str:
        """Labels, overlays and reports."""
        return self._bucket("results")

    @property
    def code_bucket(self) -> str:
        """The functions' code (``infra/``): no study data."""
        return self._bucket("code")

    @property
    def stream_failures_queue(self) -> str:
        """Table stream records a function gave up on (their metadata, no PHI): the triage and audit
        functions' failure destination on AWS."""
        return f"{self.stack}-stream-failures"

    @property
    def buckets(self) -> tuple[str, str, str]:
        return (self.raw_bucket, self.studies_bucket, self.results_bucket)

    @property
    def job_lease_s(self) -> float:
        """How long a worker's claim on a study holds without a heartbeat.

        Half a heartbeat shorter than the job's visibility timeout: when a killed worker's
        message reappears, its lease has lapsed already, so the next delivery takes the job
        instead of finding it held and backing off. The heartbeat renews it at least once
        before it lapses (``heartbeat_s`` is at most half the visibility timeout).
        """
        return self.job_visibility_s - self.heartbeat_s / 2

    @property
    def ingest_queue(self) -> QueueSpec:
        # Lambda's guidance: visibility >= 6x the function timeout (ingest: 60 s).
        return QueueSpec(f"{self.stack}-ingest", visibility_timeout_s=360, long_poll_s=20, max_receive_count=5)

    @property
    def urgent_queue(self) -> QueueSpec:
        return QueueSpec(f"{self.stack}-urgent", visibility_timeout_s=self.job_visibility_s, long_poll_s=20,
                         max_receive_count=self.job_max_receives)

    @property
    def backfill_queue(self) -> QueueSpec:
        return QueueSpec(f"{self.stack}-backfill", visibility_timeout_s=self.job_visibility_s, long_poll_s=20,
                         max_receive_count=self.job_max_receives)

    @property
    def queues(self) -> tuple[QueueSpec, QueueSpec, QueueSpec]:
        return (self.ingest_queue, self.urgent_queue, self.backfill_queue)

    def job_queue(self, priority: str) -> QueueSpec:
        """The queue for a job's priority: ``urgent`` or ``backfill``."""
        if priority == "urgent":
            return self.urgent_queue
        if priority == "backfill":
            return self.backfill_queue
        raise ValueError(f"unknown priority {priority!r}")

    def _table(self, role: str, key: str, *indexes: IndexSpec, **extra: str) -> TableSpec:
        return TableSpec(name=f"{self.stack}-{role}", partition_key=key, indexes=indexes, **extra)

    @property
    def studies_table(self) -> TableSpec:
        """One item per study (key: the facility-scoped study key).

        ``by_alert_state`` finds alert claims whose holder died before publishing.
        """
        return self._table("studies", "study_key", IndexSpec("by_facility", "facility", "created_at"),
                           IndexSpec("by_alert_state", "alert_state", "created_at"),
                           stream_view_type="NEW_AND_OLD_IMAGES")

    @property
    def uploads_table(self) -> TableSpec:
        """One item per upload: every upload ends here in a recorded state.

        ``by_status`` finds uploads that never completed, for the expiry sweep.
        """
        return self._table("uploads", "upload_id", IndexSpec("by_facility", "facility", "created_at"),
                           IndexSpec("by_status", "status", "created_at"), ttl_attribute="purge_at",
                           stream_view_type="NEW_AND_OLD_IMAGES")

    @property
    def facilities_table(self) -> TableSpec:
        """Per-facility settings: HIGH threshold, alerts topic, webhook (:mod:`ctfleet.aws.facilities`)."""
        return self._table("facilities", "facility")

    @property
    def alerts_table(self) -> TableSpec:
        """One record per alert (``{study_key}:{model_version}``): its claim, publish and webhook."""
        return self._table("alerts", "alert_id")

    @property
    def audit_table(self) -> TableSpec:
        """The audit trail: one item per event (``event_id``), append-only, no TTL.

        ``by_subject`` lists one upload's or study's events in order (``seq``: time, then id).
        """
        return self._table("audit", "event_id", IndexSpec("by_subject", "subject", "seq"))

    @property
    def ledger_table(self) -> TableSpec:
        """The cost ledger: one item per GPU instance (boot, busy, idle, interrupted seconds, price).

        ``by_month`` serves finance's fully loaded cost per month.
        """
        return self._table("ledger", "instance_id", IndexSpec("by_month", "month", "launched_at"))

    @property
    def tables(self) -> tuple[TableSpec, ...]:
        return (self.studies_table, self.uploads_table, self.ledger_table, self.audit_table, self.facilities_table,
                self.alerts_table)

    @property
    def fleet(self) -> FleetSpec:
        """The spot GPU group (``{stack}-fleet``) and its sizing."""
        return FleetSpec(group_name=f"{self.stack}-fleet", max_size=self.fleet_max,
                         instance_types=(self.instance_type, *(t for t in self.fleet_instance_types
                                                               if t != self.instance_type)),
                         boot_s=self.fleet_boot_s,
                         idle_grace_s=self.fleet_idle_grace_s, backfill_horizon_s=self.fleet_backfill_horizon_s,
                         termination_hook_s=self.fleet_termination_hook_s)

    @property
    def scaler_queue(self) -> QueueSpec:
        """Nudges to the scaler (ingest sends one right after it queues urgent work)."""
        return QueueSpec(f"{self.stack}-scaler", visibility_timeout_s=60, long_poll_s=1, max_receive_count=3,
                         retention_s=3600)

    @property
    def alerts_topic(self) -> str:
        return f"{self.stack}-alerts"

    @property
    def operations_topic(self) -> str:
        """The operators' alarms (never the clinicians' triage alerts)."""
        return f"{self.stack}-operations"

    def facility_topic(self, facility: str) -> str:
        """The SNS topic of one facility's alerts (the local stack creates one per facility)."""
        return f"{self.stack}-alerts-{facility}"

    @property
    def user_groups(self) -> tuple[str, ...]:
        """The user pool's groups: ``facility:<id>`` per facility, then ``role:<name>`` per role."""
        return tuple(f"{FACILITY_GROUP}{f}" for f in self.facilities) + tuple(f"{ROLE_GROUP}{r}" for r in ROLES)

    def facility_secret_name(self, facility: str) -> str:
        """Secrets Manager name of a facility's HMAC secret."""
        return f"{self.stack}/facility/{facility}"

    @property
    def log_group(self) -> str:
        return f"/{self.stack}/worker"

    @property
    def manifest_name(self) -> str:
        """The object whose arrival in ``raw/`` means an upload is complete."""
        return "manifest.json"
