"""One job, from its message to a DONE record: claim, read, analyze, write, record.

Each step is a short function over the repositories and adapters; the only
decision left to the caller (:mod:`worker.loop`) is what to do with the
message, which follows from the outcome returned or the error family raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ctfleet.aws.objects import Objects
from ctfleet.aws.repositories import Studies
from ctfleet.contracts import JobMessage, Reason, Status
from ctfleet.errors import BadInput, Fault, Interrupted
from ctfleet.intake import read_dataset, volume_from_series
from model.registry import ModelError
from model.volume import VolumeError

from .results import ResultWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended: the study's status (or that another attempt had settled it)."""

    status: str
    study_key: str
    reason: str | None = None


@dataclass(frozen=True)
class Instance:
    """The machine a worker runs on, as recorded with each study and priced per GPU-second."""

    instance_id: str
    instance_type: str
    device: str
    price_per_hour_usd: float


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
    high_threshold : float
    interrupted : threading.Event
        Set by the spot watcher; checked between steps.
    """

    studies: Studies
    inputs: Objects
    writer: ResultWriter
    analyze: Callable[..., Any]
    model_version: str
    instance: Instance
    high_threshold: float
    interrupted: threading.Event

    def run(self, job: JobMessage) -> JobOutcome:
        """Run ``job`` to a DONE or REJECTED record.

        Raises
        ------
        Interrupted
            A spot notice arrived: hand the message back.
        Fault, Transient, or anything else
            Let SQS redeliver (the caller records FAILED on the last delivery).
        """
        t_start = time.perf_counter()
        record = self.studies.claim(job, {"worker_instance": self.instance.instance_id,
                                          "instance_type": self.instance.instance_type,
                                          "device": self.instance.device})
        if record is None:
            status = str((self.studies.get(job.study_key) or {}).get("status", "MISSING"))
            log.info("job already settled; dropping it", extra={"study_key": job.study_key, "status": status})
            return JobOutcome(status, job.study_key, Reason.DUPLICATE_JOB)
        try:
            return self._analyze(job, t_start, record)
        except BadInput as exc:
            self.studies.settle(job, Status.REJECTED, exc.reason, exc.detail)
            return JobOutcome(Status.REJECTED, job.study_key, exc.reason)

    def fail(self, job: JobMessage) -> JobOutcome:
        """Record FAILED after the last delivery crashed, rather than leave the study PROCESSING forever."""
        self.studies.settle(job, Status.FAILED, Reason.ANALYSIS_FAILED, "failed on every attempt")
        return JobOutcome(Status.FAILED, job.study_key, Reason.ANALYSIS_FAILED)

    def check_interrupt(self) -> None:
        if self.interrupted.is_set():
            raise Interrupted(Reason.SPOT_INTERRUPTION, "instance is being reclaimed")

    def _analyze(self, job: JobMessage, t_start: float, record: dict[str, Any]) -> JobOutcome:
        timings: dict[str, float] = {}
        lap = _laps(timings)
        blobs = self.inputs.get_many(job.object_keys)
        lap("download")
        self.check_interrupt()
        datasets = [read_dataset(b, name=k.rsplit("/", 1)[-1]) for b, k in zip(blobs, job.object_keys)]
        volume = volume_from_series(datasets)
        del blobs
        for ds in datasets:  # the SEG needs headers only; the pixels live on in the volume
            del ds.PixelData
        lap("volume")
        self.check_interrupt()
        analysis = self._run_model(volume)
        lap("analyze")
        self.check_interrupt()
        prefix, keys = self.writer.write(analysis, volume, datasets, facility=job.facility,
                                         study_key=job.study_key, model_version=self.model_version)
        lap("write")
        self.check_interrupt()
        gpu_seconds = time.perf_counter() - t_start
        timings["total"] = gpu_seconds
        report = analysis.report
        if not self.studies.mark_done(job, self._done_fields(report, prefix, keys, gpu_seconds, timings, record)):
            log.info("study settled by another attempt", extra={"study_key": job.study_key})
        log.info("study done", extra={"study_key": job.study_key, "triage_level": report["triage_level"],
                                      "score": report["score"], "seconds": round(gpu_seconds, 3)})
        return JobOutcome(Status.DONE, job.study_key)

    def _run_model(self, volume: Any) -> Any:
        try:
            return self.analyze(volume, self.instance.device, high_threshold=self.high_threshold)
        except VolumeError as exc:  # this volume can never be analyzed
            raise BadInput(exc.reason, str(exc)) from exc
        except ModelError as exc:  # the model, not the study, is at fault: retry, then FAILED
            raise Fault(exc.reason, str(exc)) from exc

    def _done_fields(self, report: dict[str, Any], prefix: str, keys: list[str], gpu_seconds: float,
                     timings: dict[str, float], record: dict[str, Any]) -> dict[str, Any]:
        price = self.instance.price_per_hour_usd
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
            "cost_usd": round(gpu_seconds / 3600.0 * price, 6),
            "price_per_hour_usd": price,
            "timings_s": {**_ingest_timings(record),
                          **{f"worker_{k}": round(v, 4) for k, v in timings.items()},
                          **{f"model_{k}": v for k, v in report.get("timings_s", {}).items()}},
        }


def _laps(timings: dict[str, float]) -> Callable[[str], None]:
    """``lap(name)`` records the seconds since the previous lap under ``name``."""
    last = [time.perf_counter()]

    def lap(name: str) -> None:
        t = time.perf_counter()
        timings[name] = t - last[0]
        last[0] = t

    return lap


def _ingest_timings(record: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in ((record or {}).get("timings_s") or {}).items() if k.startswith("ingest_")}
