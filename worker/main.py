"""``ctfleet worker``: wire one GPU instance's worker from settings, then run it until told to stop."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from ctfleet.aws.clients import Clients
from ctfleet.aws.fleet import FleetGroup, Protection, launch_time
from ctfleet.aws.imds import Imds
from ctfleet.aws.facilities import FacilityConfigs
from ctfleet.aws.ledger import InstanceClock, Ledger
from ctfleet.aws.objects import Objects
from ctfleet.aws.pricing import Prices
from ctfleet.aws.queues import Queue
from ctfleet.aws.records import Table
from ctfleet.aws.repositories import Studies
from ctfleet.errors import CtfleetError
from ctfleet.settings import Settings

from .job import Instance, JobRunner
from .loop import Worker
from .results import ResultWriter
from .spot import Notices, watch

log = logging.getLogger(__name__)


def install_signal_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT: finish the current job and stop. Second: exit now."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        log.info("stopping after the current job", extra={"signal": signum})
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def build_worker(settings: Settings, clients: Clients, imds: Imds) -> Worker:
    """Load the model once and wire the worker; a model that cannot load stops here, before any work."""
    from ctfleet.aws.model_store import resolve
    from ctfleet.results.files import render
    from model.device import resolve_device

    device = settings.device
    if device == "auto":
        device = resolve_device(device).type
    analyzer = resolve(settings.model, s3_client=clients.s3, cache_dir=Path(settings.model_cache_dir).expanduser(),
                       device=device)
    instance = Instance(instance_id=imds.instance_id(), instance_type=imds.instance_type(settings.instance_type),
                        device=device, market=imds.market(), zone=imds.zone())
    prices = Prices(clients.ec2, fallback_usd_per_hour=settings.gpu_price_per_hour)
    facilities = FacilityConfigs(Table(clients.dynamodb, settings.facilities_table),
                                 default_threshold=settings.high_threshold, cache_s=settings.facility_config_cache_s)
    runner = JobRunner(
        studies=Studies(Table(clients.dynamodb, settings.studies_table)),
        inputs=Objects(clients.s3, settings.studies_bucket),
        writer=ResultWriter(Objects(clients.s3, settings.results_bucket), render),
        analyze=analyzer, model_version=analyzer.version, instance=instance,
        high_threshold=lambda facility: facilities.get(facility).high_threshold, interrupted=threading.Event(),
        price=lambda: prices.per_hour(instance.instance_type, instance.zone, instance.market),
        lease_s=settings.job_lease_s, max_failures=settings.job_max_failures,
    )
    specs = (settings.urgent_queue, settings.backfill_queue)
    queues = {spec.name: Queue(clients.sqs, clients.queue_url(spec.name), spec.name) for spec in specs}
    dead_letters = {spec.name: Queue(clients.sqs, clients.queue_url(spec.dlq_name), spec.dlq_name) for spec in specs}
    return Worker(settings=settings, urgent=queues[settings.urgent_queue.name],
                  backfill=queues[settings.backfill_queue.name], runner=runner, dead_letters=dead_letters,
                  protection=Protection(FleetGroup(clients.autoscaling, settings.fleet.group_name),
                                        instance.instance_id),
                  expected_job_s=60.0 / settings.fleet.throughput_per_min(instance.instance_type),
                  prefetch=settings.worker_prefetch)


def main(settings: Settings, *, max_jobs: int | None = None, idle_exit_s: float | None = None) -> int:
    """Run the worker loop of this instance until SIGTERM, a spot notice, or the given limits."""
    clients = Clients(settings)
    imds = Imds(settings.imds_endpoint)
    worker = build_worker(settings, clients, imds)
    instance = worker.runner.instance
    _attach_cloudwatch(clients, instance.instance_id)
    install_signal_handlers(worker.stop)
    _, notices = watch(imds, worker, hook_timeout_s=settings.fleet.termination_hook_s)
    worker.clock = open_ledger(clients, settings, worker)
    log.info("worker started", extra={"instance": instance.instance_id, "device": instance.device,
                                      "model_version": worker.runner.model_version})
    handled = worker.run(max_jobs=max_jobs, idle_exit_s=idle_exit_s)
    close_ledger(worker.clock, notices)
    if notices.terminating:
        _complete_termination(FleetGroup(clients.autoscaling, settings.fleet.group_name), instance.instance_id,
                              settings.fleet.termination_hook)
    log.info("worker stopped", extra={"instance": instance.instance_id, "jobs": handled})
    logging.shutdown()
    return 0


def open_ledger(clients: Clients, settings: Settings, worker: Worker) -> InstanceClock | None:
    """Open this instance's cost ledger entry: boot seconds (EC2's launch time to now) and its price."""
    instance = worker.runner.instance
    ready = time.time()
    try:
        launched = launch_time(clients.ec2, instance.instance_id) or ready
        price = worker.runner.price()
        ledger = Ledger(Table(clients.dynamodb, settings.ledger_table))
        ledger.open(instance.instance_id, instance_type=instance.instance_type, market=instance.market,
                    zone=instance.zone, launched_at=launched, ready_at=ready, price_per_hour_usd=price.usd_per_hour,
                    price_source=price.source)
        return InstanceClock(ledger, instance.instance_id)
    except CtfleetError as exc:
        log.warning("no cost ledger for this instance", extra={"reason": exc.reason, "detail": exc.detail})
        return None


def close_ledger(clock: InstanceClock | None, notices: Notices) -> None:
    if clock is None:
        return
    reason = ("spot_interruption" if notices.spot else "terminated" if notices.terminating
              else "rebalance" if notices.rebalance else "stopped")
    try:
        clock.close(reason)
    except CtfleetError as exc:
        log.warning("could not close the cost ledger entry", extra={"reason": exc.reason})


def _complete_termination(group: FleetGroup, instance_id: str, hook: str) -> None:
    try:
        group.complete_termination(instance_id, hook)
        log.info("termination lifecycle action completed", extra={"instance": instance_id})
    except CtfleetError as exc:  # the hook's timeout ends the wait anyway
        log.warning("could not complete the termination lifecycle action",
                    extra={"instance": instance_id, "reason": exc.reason, "detail": exc.detail})


def _attach_cloudwatch(clients: Clients, stream: str) -> None:
    """Ship this process's logs to CloudWatch Logs too (watchtower batches in a thread)."""
    try:
        import watchtower

        handler = watchtower.CloudWatchLogHandler(
            log_group_name=clients.settings.log_group, log_stream_name=stream, boto3_client=clients.logs,
            create_log_group=True, send_interval=2,
        )
        root = logging.getLogger()
        handler.setFormatter(root.handlers[0].formatter if root.handlers else logging.Formatter())
        root.addHandler(handler)
    except Exception:  # noqa: BLE001 - the outermost setup step: logs still go to stderr
        log.warning("CloudWatch Logs unavailable; logging to stderr only", exc_info=True)
