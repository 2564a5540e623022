"""What every handler is given: the adapters of one stack, built once from its clients."""

from __future__ import annotations

from dataclasses import dataclass, field

from ctfleet.aws.alerts import AlertRecords, Alerts
from ctfleet.aws.audit import AuditTrail
from ctfleet.aws.clients import Clients
from ctfleet.aws.facilities import FacilityConfigs
from ctfleet.aws.fleet import FleetGroup
from ctfleet.aws.objects import Objects
from ctfleet.aws.queues import Queue
from ctfleet.aws.records import Table
from ctfleet.aws.repositories import Studies, Uploads
from ctfleet.aws.secrets import FacilitySecrets, read_secret
from ctfleet.settings import Settings


@dataclass
class HandlerDeps:
    """The repositories, buckets, queues and secrets a handler works with.

    Building it calls nothing: clients connect, and queue URLs and the topic
    ARN are looked up, on first use. One instance serves every invocation of
    a warm function.
    """

    clients: Clients
    settings: Settings = field(init=False)
    uploads: Uploads = field(init=False)
    studies: Studies = field(init=False)
    raw: Objects = field(init=False)
    studies_objects: Objects = field(init=False)
    results: Objects = field(init=False)
    secrets: FacilitySecrets = field(init=False)
    alerts: Alerts = field(init=False)
    fleet: FleetGroup = field(init=False)
    facilities: FacilityConfigs = field(init=False)
    audit: AuditTrail = field(init=False)
    ledger: Table = field(init=False)  # the cost ledger, read for finance's cost figures

    def __post_init__(self) -> None:
        c = self.clients
        s = self.settings = c.settings
        self.uploads = Uploads(Table(c.dynamodb, s.uploads_table), retention_s=s.upload_retention_days * 86400)
        self.studies = Studies(Table(c.dynamodb, s.studies_table))
        self.raw = Objects(c.s3, s.raw_bucket)
        self.studies_objects = Objects(c.s3, s.studies_bucket)
        self.results = Objects(c.s3, s.results_bucket)
        self.secrets = FacilitySecrets(c.secrets, s.facility_secret_name)
        self.facilities = FacilityConfigs(Table(c.dynamodb, s.facilities_table), default_threshold=s.high_threshold,
                                          cache_s=s.facility_config_cache_s)
        self.alerts = Alerts(self.studies, AlertRecords(Table(c.dynamodb, s.alerts_table)), self.facilities, c.sns,
                             lambda: c.topic_arn(s.alerts_topic), s.api_url,
                             webhook_key=lambda name: read_secret(c.secrets, name))
        self.fleet = FleetGroup(c.autoscaling, s.fleet.group_name)
        self.audit = AuditTrail(Table(c.dynamodb, s.audit_table))
        self.ledger = Table(c.dynamodb, s.ledger_table)

    def queue(self, name: str) -> Queue:
        """The queue called ``name`` (its URL looked up once per process)."""
        return Queue(self.clients.sqs, self.clients.queue_url(name), name)
