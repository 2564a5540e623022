"""One job, from its message to a DONE record: claim, read, analyze, write, record.

Each step is a short function over the repositories and adapters; the only
decision left to the caller (:mod:`worker.loop`) is what to do with the
message, which follows from the outcome returned or the error family raised.
"""

from __future__ import annotations

import logging
import threading
import time
from decimal import Decimal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ctfleet.aws.objects import Objects
from ctfleet.aws.pricing import Price
from ctfleet.aws.repositories import Studies
from ctfleet.contracts import JobMessage, Reason, Status
from ctfleet.errors import BadInput, Fault, Interrupted, NotFound
from ctfleet.intake import read_dataset, volume_from_series
from model.registry import ModelError
from model.volume import VolumeError

from .results import ResultWriter

log = logging.getLogger(__name__)


class InputMissing(Fault):
    """The job's study objects are not in the studies bucket (deleted, or never written)."""


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended: the study's status, that another attempt had settled it, or that a live
    worker holds it (``held_by``: this delivery waits)."""

    status: str
    study_key: str
    reason: str | None = None
    held_by: str | None = None


@dataclass
class Prepared:
    """A claimed study, downloaded and decoded: ready for the GPU."""

    job: JobMessage
    record: dict[str, Any]
    volume: Any
    datasets: list[Any]
    timings: dict[str, float]
    read_s: float


@dataclass
class Analyzed:
    """A study the model has read: its results are still to be written and recorded."""

    prepared: Prepared
    analysis: Any
    analysis_at: tuple[float, float]  # wall-clock start and end of the model's run
    seconds: float  # the instance's time on it so far: reading, then the model


@dataclass(frozen=True)
class Instance:
    """The machine a worker runs on, as recorded with each study and priced per GPU-second."""

    instance_id: str
    instance_type: str
    device: str
    market: str = "on-demand"  # or "spot"
    zone: str = ""


@dataclass
class JobRunner:
    """Runs jobs with one loaded analyzer on one instance.

    Parameters
    ----------
    studies : Studies
    inputs : Objects
        The studies bucket (de-identified series).
    writer : ResultWriter
    analyze : callable
        ``analyze(volume, device, high_threshold=...) -> Analysis``, loaded once.
    model_version : str
    instance : Instance
    high_threshold : float or callable
        The score at which a study triages HIGH, or ``facility -> threshold`` (per-facility settings).
    price : callable
        The instance's hourly price now (:meth:`ctfleet.aws.pricing.Prices.per_hour`).
    interrupted : threading.Event
        Set by the spot watcher; checked between steps.
    lease_s : float
        How long a claim holds without a heartbeat (:attr:`Settings.job_lease_s`, a little shorter
        than the job queue's visibility timeout).
    max_failures : int
        Failed attempts after which the study ends FAILED.
    """

    studies: Studies
    inputs: Objects
    writer: ResultWriter
    analyze: Callable[..., Any]
    model_version: str
    instance: Instance
    high_threshold: float | Callable[[str], float]
    interrupted: threading.Event
    price: Callable[[], Price] = lambda: Price(0.0, "unknown")
    lease_s: float = 30.0
    max_failures: int = 3

    def prepare(self, job: JobMessage) -> Prepared | JobOutcome:
        """Claim the study, download and decode its series: everything before the GPU (:meth:`infer`).

        Returns an outcome instead when there is nothing to analyze: held by a live
        worker, settled already, bad input (REJECTED) or its input gone (FAILED).
        """
        t_start = time.perf_counter()
        claim = self.studies.claim(job, self.instance.instance_id,
                                   {"instance_type": self.instance.instance_type, "device": self.instance.device,
                                    "market": self.instance.market},
                                   lease_s=self.lease_s)
        if claim.held_by is not None:
            log.info("job held by a live worker; waiting", extra={"study_key": job.study_key, "holder": claim.held_by})
            return JobOutcome(Status.PROCESSING, job.study_key, Reason.DUPLICATE_JOB, held_by=claim.held_by)
        if claim.record is None:
            log.info("job already settled; dropping it", extra={"study_key": job.study_key, "status": claim.status})
            return JobOutcome(claim.status, job.study_key, Reason.DUPLICATE_JOB)
        try:
            return self._read(job, t_start, claim.record)
        except BadInput as exc:
            return self._reject(job, exc)
        except InputMissing as exc:  # the de-identified series is gone: no retry can bring it back
            self.studies.settle(job, Status.FAILED, Reason.INPUT_MISSING, exc.detail, actor=self.actor)
            return JobOutcome(Status.FAILED, job.study_key, Reason.INPUT_MISSING)

    def infer(self, prepared: Prepared) -> Analyzed | JobOutcome:
        """Run the model (the GPU's part); REJECTED if the volume can never be analyzed."""
        try:
            return self._analyze(prepared)
        except BadInput as exc:
            return self._reject(prepared.job, exc)

    def record(self, analyzed: Analyzed) -> JobOutcome:
        """Write the overlays, labels and SEG, and record DONE (the CPU's and S3's part)."""
        try:
            return self._record(analyzed)
        except BadInput as exc:
            return self._reject(analyzed.prepared.job, exc)

    def _record(self, analyzed: Analyzed) -> JobOutcome:
        p = analyzed.prepared
        job, timings = p.job, p.timings
        self.check_interrupt()
        t_start = time.perf_counter()
        lap = _laps(timings)
        prefix, keys = self.writer.write(analyzed.analysis, p.volume, p.datasets, facility=job.facility,
                                         study_key=job.study_key, model_version=self.model_version)
        lap("upload")
        self.check_interrupt()
        # The instance's time on this study: reading, analyzing and writing it (not the waits between,
        # when a prefetched study waits for the GPU or an analyzed one for the writer).
        gpu_seconds = analyzed.seconds + time.perf_counter() - t_start
        timings["total"] = gpu_seconds
        report = analyzed.analysis.report
        fields = self._done_fields(report, prefix, keys, gpu_seconds, timings, p.record)
        fields["analysis_started_at"], fields["analysis_ended_at"] = (round(t, 3) for t in analyzed.analysis_at)
        if not self.studies.mark_done(job, fields, actor=self.actor):
            log.info("study settled by another attempt", extra={"study_key": job.study_key})
        log.info("study done", extra={"study_key": job.study_key, "triage_level": report["triage_level"],
                                      "score": report["score"], "seconds": round(gpu_seconds, 3)})
        return JobOutcome(Status.DONE, job.study_key)

    def _reject(self, job: JobMessage, exc: BadInput) -> JobOutcome:
        self.studies.settle(job, Status.REJECTED, exc.reason, exc.detail, actor=self.actor)
        return JobOutcome(Status.REJECTED, job.study_key, exc.reason)

    @property
    def actor(self) -> str:
        """How the audit trail names this worker."""
        return f"worker:{self.instance.instance_id}"

    def renew(self, job: JobMessage) -> None:
        """The heartbeat's second half: keep this instance's lease on the study."""
        self.studies.renew_lease(job, self.instance.instance_id, lease_s=self.lease_s)

    def hand_back(self, job: JobMessage, held_s: float = 0.0) -> None:
        """An interruption: give the lease up so the next delivery starts at once; not a failure.
        ``held_s``, this instance's time on the job, is charged to the study as interrupted work."""
        nano_usd = round(held_s / 3600.0 * self.price().usd_per_hour * 1e9)
        self.studies.release(job, self.instance.instance_id, held_s=held_s, held_nano_usd=nano_usd)

    def fail(self, job: JobMessage) -> JobOutcome | None:
        """Count a failed attempt; on the last one record FAILED (the outcome), else None (SQS redelivers)."""
        failures = self.studies.record_failure(job, self.instance.instance_id)
        if failures < self.max_failures:
            return None
        self.studies.settle(job, Status.FAILED, Reason.ANALYSIS_FAILED, f"failed {failures} times", actor=self.actor)
        return JobOutcome(Status.FAILED, job.study_key, Reason.ANALYSIS_FAILED)

    def check_interrupt(self) -> None:
        if self.interrupted.is_set():
            raise Interrupted(Reason.SPOT_INTERRUPTION, "instance is being reclaimed")

    def _read(self, job: JobMessage, t_start: float, record: dict[str, Any]) -> Prepared:
        # Stages as the record names them: queue wait, download, decode, analyze, upload, total.
        timings: dict[str, float] = {"queue_wait": max(0.0, float(record.get("started_at", 0)) - job.enqueued_at)}
        lap = _laps(timings)
        try:
            blobs = self.inputs.get_many(job.object_keys)
        except NotFound as exc:
            raise InputMissing(Reason.INPUT_MISSING, exc.detail) from exc
        lap("download")
        self.check_interrupt()
        datasets = [read_dataset(b, name=k.rsplit("/", 1)[-1]) for b, k in zip(blobs, job.object_keys)]
        volume = volume_from_series(datasets)
        del blobs
        for ds in datasets:  # the SEG needs headers only; the pixels live on in the volume
            del ds.PixelData
        lap("decode")
        self.check_interrupt()
        return Prepared(job, record, volume, datasets, timings, time.perf_counter() - t_start)

    def _analyze(self, p: Prepared) -> Analyzed:
        self.check_interrupt()  # a prefetched study waited for the GPU; a notice may have come meanwhile
        t_start = time.perf_counter()
        started_at = time.time()  # wall clock, to see how busy the GPU is kept across studies
        analysis = self._run_model(p.volume, p.job.facility)
        _laps(p.timings, t_start)("analyze")
        ended_at = time.time()
        self.check_interrupt()
        return Analyzed(p, analysis, (started_at, ended_at), p.read_s + time.perf_counter() - t_start)

    def _run_model(self, volume: Any, facility: str) -> Any:
        try:
            return self.analyze(volume, self.instance.device, high_threshold=self._threshold(facility))
        except VolumeError as exc:  # this volume can never be analyzed
            raise BadInput(exc.reason, str(exc)) from exc
        except ModelError as exc:  # the model, not the study, is at fault: retry, then FAILED
            raise Fault(exc.reason, str(exc)) from exc

    def _threshold(self, facility: str) -> float:
        t = self.high_threshold
        return float(t(facility)) if callable(t) else float(t)

    def _done_fields(self, report: dict[str, Any], prefix: str, keys: list[str], gpu_seconds: float,
                     timings: dict[str, float], record: dict[str, Any]) -> dict[str, Any]:
        price = self.price()
        return {
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
            # Nine places (a nano-dollar): a study on a cheap spot instance costs well under a micro-dollar
            # per second, and records otherwise keep six.
            "cost_usd": Decimal(f"{gpu_seconds / 3600.0 * price.usd_per_hour:.9f}"),
            "price_per_hour_usd": price.usd_per_hour,
            "price_source": price.source,
            "timings_s": {**_ingest_timings(record),
                          **{f"worker_{k}": round(v, 4) for k, v in timings.items()},
                          **{f"model_{k}": v for k, v in report.get("timings_s", {}).items()}},
        }


def _laps(timings: dict[str, float], since: float | None = None) -> Callable[[str], None]:
    """``lap(name)`` records the seconds since the previous lap (or ``since``) under ``name``."""
    last = [time.perf_counter() if since is None else since]

    def lap(name: str) -> None:
        t = time.perf_counter()
        timings[name] = t - last[0]
        last[0] = t

    return lap


def _ingest_timings(record: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in ((record or {}).get("timings_s") or {}).items() if k.startswith("ingest_")}
