"""The worker's job loop.

receive (urgent first) -> claim the study (conditional PROCESSING) -> heartbeat ->
download -> DICOM -> HU volume -> analyze on GPU/CPU -> results to S3 ->
record DONE (conditional) -> delete the message. Deleting is the last step, so
a crash anywhere before it means the message comes back and the work is redone;
results are overwritten in place and the DONE write is conditional, so doing it
twice is harmless.

One stop event: SIGTERM or a spot notice stops receiving; a second SIGTERM exits.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from ctfleet.intake import read_dataset, volume_from_series
from ctfleet.aws.clients import Clients
from ctfleet.contracts import JobMessage, Reason, Status, results_prefix
from ctfleet.errors import BadInput, Interrupted
from ctfleet.aws.imds import Imds
from ctfleet.aws.records import ConditionFailed, Table, now, studies_table
from ctfleet.settings import Settings
from model.registry import ModelError
from model.volume import VolumeError

from .heartbeat import Heartbeat

log = logging.getLogger(__name__)

SPOT_POLL_S = 1.0  # EC2 posts the notice two minutes ahead; polling is cheap
IDLE_WAIT_S = 5  # long-poll wait on the urgent queue when both queues are empty
_POOL = 8


@dataclass
class JobOutcome:
    status: str
    study_key: str
    reason: str | None = None


@dataclass
class Worker:
    clients: Clients
    analyze: Callable[..., Any]
    render: Callable[..., dict[str, bytes]]
    model_version: str
    device: str = "cpu"
    stop: threading.Event = field(default_factory=threading.Event)
    interrupted: threading.Event = field(default_factory=threading.Event)
    instance_id: str = "local"
    instance_type: str = "local"
    _current: Heartbeat | None = None

    @property
    def settings(self) -> Settings:
        return self.clients.settings

    @property
    def studies(self) -> Table:
        return studies_table(self.clients)

    # -- receiving ----------------------------------------------------------------------

    def receive(self, wait_s: int) -> tuple[str, dict[str, Any]] | None:
        """One message, urgent before backfill; None if both queues are empty."""
        s = self.settings
        for spec, wait in ((s.urgent_queue, 0), (s.backfill_queue, 0), (s.urgent_queue, wait_s)):
            if self.stop.is_set():
                return None
            url = self.clients.queue_url(spec.name)
            out = self.clients.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=wait,
                AttributeNames=["ApproximateReceiveCount"],
            )
            messages = out.get("Messages", [])
            if messages:
                return url, messages[0]
        return None

    def run(self, *, max_jobs: int | None = None, idle_exit_s: float | None = None) -> int:
        """Process jobs until stopped; returns the number of jobs handled."""
        handled = 0
        idle_since = time.monotonic()
        while not self.stop.is_set():
            try:
                got = self.receive(IDLE_WAIT_S)
            except Exception:  # noqa: BLE001 - queue trouble: back off, keep the worker alive
                log.warning("receive failed; retrying", exc_info=True)
                self.stop.wait(2.0)
                continue
            if got is None:
                if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                    break
                continue
            self.handle(*got)
            handled += 1
            idle_since = time.monotonic()
            if max_jobs is not None and handled >= max_jobs:
                break
        return handled

    # -- one job ------------------------------------------------------------------------

    def handle(self, queue_url: str, message: dict[str, Any]) -> JobOutcome | None:
        sqs = self.clients.sqs
        receipt = message["ReceiptHandle"]
        receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            job = JobMessage.from_json(message["Body"])
        except BadInput as exc:
            log.error("dropping a malformed job message", extra={"reason": exc.reason})
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=receipt)
            return None
        spec = self.settings.job_queue(job.priority)
        heartbeat = Heartbeat(sqs, queue_url, receipt, interval_s=self.settings.heartbeat_s,
                              visibility_s=spec.visibility_timeout_s)
        self._current = heartbeat
        try:
            with heartbeat:
                outcome = self.process(job, receives=receives, max_receives=spec.max_receive_count)
        except Interrupted:
            heartbeat.handback()
            log.warning("job handed back", extra={"study_key": job.study_key, "job_id": job.job_id})
            return None
        except Exception:  # noqa: BLE001 - unexpected: SQS redelivers after the visibility timeout
            log.exception("job failed; SQS will redeliver", extra={"study_key": job.study_key, "attempt": receives})
            return None
        finally:
            self._current = None
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=receipt)
        return outcome

    def check_interrupt(self) -> None:
        if self.interrupted.is_set():
            raise Interrupted("spot_interruption", "instance is being reclaimed")

    def process(self, job: JobMessage, *, receives: int = 1, max_receives: int = 3) -> JobOutcome:
        """Run one job to a final record state; raises to have SQS redeliver it."""
        t_start = time.perf_counter()
        claimed = self._claim(job)
        if isinstance(claimed, JobOutcome):
            return claimed
        try:
            return self._analyse(job, t_start, claimed)
        except BadInput as exc:
            self._final(job, Status.REJECTED, reason=exc.reason, detail=exc.detail)
            return JobOutcome(Status.REJECTED, job.study_key, exc.reason)
        except Interrupted:
            raise
        except Exception:
            if receives >= max_receives:
                # The last delivery: record FAILED rather than leave the study PROCESSING forever.
                self._final(job, Status.FAILED, reason=Reason.ANALYSIS_FAILED, detail="failed on every attempt")
                log.exception("job failed on its last attempt", extra={"study_key": job.study_key})
                return JobOutcome(Status.FAILED, job.study_key, Reason.ANALYSIS_FAILED)
            raise

    def _claim(self, job: JobMessage) -> JobOutcome | dict[str, Any]:
        """Mark the study PROCESSING and return its record; an outcome if there is nothing to do."""
        try:
            return self.studies.update(
                job.study_key,
                {
                    "status": Status.PROCESSING,
                    "started_at": now(),
                    "worker_instance": self.instance_id,
                    "instance_type": self.instance_type,
                    "device": self.device,
                },
                add={"attempts": 1},
                condition="#job_id = :job AND #status IN (:queued, :processing)",
                values={":job": job.job_id, ":queued": Status.QUEUED, ":processing": Status.PROCESSING},
            )
        except ConditionFailed:
            record = self.studies.get(job.study_key) or {}
            status = str(record.get("status", "MISSING"))
            log.info("job already settled; dropping it", extra={"study_key": job.study_key, "status": status})
            return JobOutcome(status, job.study_key, "duplicate_job")

    def _analyse(self, job: JobMessage, t_start: float, record: dict[str, Any]) -> JobOutcome:
        s = self.settings
        s3 = self.clients.s3
        timings: dict[str, float] = {}
        t = time.perf_counter()
        with ThreadPoolExecutor(_POOL) as pool:
            blobs = list(pool.map(lambda k: s3.get_object(Bucket=s.studies_bucket, Key=k)["Body"].read(),
                                  job.object_keys))
        timings["download"] = time.perf_counter() - t
        self.check_interrupt()

        t = time.perf_counter()
        datasets = [read_dataset(b, name=k.rsplit("/", 1)[-1]) for b, k in zip(blobs, job.object_keys)]
        volume = volume_from_series(datasets)
        del blobs
        for ds in datasets:  # the SEG needs headers only; the pixels live on in the volume
            del ds.PixelData
        timings["volume"] = time.perf_counter() - t
        self.check_interrupt()

        t = time.perf_counter()
        try:
            analysis = self.analyze(volume, self.device, high_threshold=s.high_threshold)
        except ModelError:
            raise  # the model, not the study, is at fault: retry, then FAILED
        except VolumeError as exc:  # this volume can never be analysed
            raise BadInput(exc.reason, str(exc)) from exc
        timings["analyze"] = time.perf_counter() - t
        self.check_interrupt()

        t = time.perf_counter()
        files = self.render(analysis, volume, source_datasets=datasets)
        prefix = results_prefix(job.facility, job.study_key, self.model_version)
        keys = [prefix + name for name in files]
        types = {"png": "image/png", "json": "application/json", "gz": "application/gzip", "dcm": "application/dicom"}
        with ThreadPoolExecutor(_POOL) as pool:
            list(pool.map(
                lambda kv: s3.put_object(Bucket=s.results_bucket, Key=kv[0], Body=kv[1],
                                         ContentType=types.get(kv[0].rsplit(".", 1)[-1], "application/octet-stream")),
                zip(keys, files.values()),
            ))
        timings["write"] = time.perf_counter() - t
        self.check_interrupt()

        report = analysis.report
        gpu_seconds = time.perf_counter() - t_start
        timings["total"] = gpu_seconds
        try:
            self.studies.update(
                job.study_key,
                {
                    "status": Status.DONE,
                    "done_at": now(),
                    "model_version": self.model_version,
                    "score": float(report["score"]),
                    "severity_score": int(report["severity_score"]),
                    "triage_level": report["triage_level"],
                    "flags": list(report.get("flags", [])),
                    "lung_volume_ml": report["lung_volume_ml"],
                    "lesion_volume_ml": report["lesion_volume_ml"],
                    "involvement_pct": report["involvement_pct"],
                    "result_prefix": prefix,
                    "result_keys": keys,
                    "gpu_seconds": round(gpu_seconds, 3),
                    "cost_usd": round(gpu_seconds / 3600.0 * s.gpu_price_per_hour, 6),
                    "price_per_hour_usd": s.gpu_price_per_hour,
                    "timings_s": {**_ingest_timings(record),
                                  **{f"worker_{k}": round(v, 4) for k, v in timings.items()},
                                  **{f"model_{k}": v for k, v in report.get("timings_s", {}).items()}},
                },
                condition="#job_id = :job AND #status = :processing",
                values={":job": job.job_id, ":processing": Status.PROCESSING},
            )
        except ConditionFailed:
            log.info("study settled by another attempt", extra={"study_key": job.study_key})
        log.info("study done", extra={"study_key": job.study_key, "triage_level": report["triage_level"],
                                      "score": report["score"], "seconds": round(gpu_seconds, 3)})
        return JobOutcome(Status.DONE, job.study_key)

    def _final(self, job: JobMessage, status: str, *, reason: str, detail: str = "") -> None:
        try:
            self.studies.update(
                job.study_key,
                {"status": status, "reason": reason, "detail": detail[:200], "finished_at": now()},
                condition="#job_id = :job AND #status IN (:queued, :processing)",
                values={":job": job.job_id, ":queued": Status.QUEUED, ":processing": Status.PROCESSING},
            )
        except ConditionFailed:
            log.info("study settled by another attempt", extra={"study_key": job.study_key})

    # -- spot notices ---------------------------------------------------------------

    def watch_spot(self, imds: Imds) -> threading.Thread:
        """Poll IMDS for a spot notice; on one, stop receiving and hand the current job back."""

        def loop() -> None:
            while not self.stop.wait(SPOT_POLL_S):
                if imds.spot_action():
                    log.warning("spot interruption notice", extra={"instance": self.instance_id})
                    self.interrupted.set()
                    self.stop.set()
                    current = self._current
                    if current is not None:
                        current.handback()
                    return

        thread = threading.Thread(target=loop, name="spot-watch", daemon=True)
        thread.start()
        return thread


def _ingest_timings(record: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in ((record or {}).get("timings_s") or {}).items() if k.startswith("ingest_")}


def install_signal_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT: finish the current job and stop. Second: exit now."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        log.info("stopping after the current job", extra={"signal": signum})
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(settings: Settings, *, max_jobs: int | None = None, idle_exit_s: float | None = None) -> int:
    """``ctfleet worker``: load the model once, then process jobs until told to stop."""
    import torch

    from ctfleet.aws.model_store import resolve
    from ctfleet.results.files import render

    clients = Clients(settings)
    imds = Imds(settings.imds_endpoint)
    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # Loaded once per process; a model that cannot load stops the worker before it takes work.
    analyzer = resolve(settings.model, s3_client=clients.s3, cache_dir=Path(settings.model_cache_dir).expanduser(),
                       device=device)
    worker = Worker(
        clients=clients,
        analyze=analyzer,
        render=render,
        model_version=analyzer.version,
        device=device,
        instance_id=imds.instance_id(),
        instance_type=imds.instance_type(settings.instance_type),
    )
    _attach_cloudwatch(clients, worker.instance_id)
    install_signal_handlers(worker.stop)
    worker.watch_spot(imds)
    log.info("worker started", extra={"instance": worker.instance_id, "device": device,
                                      "model_version": analyzer.version})
    handled = worker.run(max_jobs=max_jobs, idle_exit_s=idle_exit_s)
    log.info("worker stopped", extra={"instance": worker.instance_id, "jobs": handled})
    logging.shutdown()
    return 0


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
    except Exception:  # noqa: BLE001 - logs still go to stderr
        log.warning("CloudWatch Logs unavailable; logging to stderr only", exc_info=True)
