"""Ingest: a completed upload becomes a de-identified study and a job, or a recorded rejection.

Triggered by S3 ``ObjectCreated`` on ``raw/{facility}/{upload}/manifest.json``
through the ingest queue (an SQS event source). The only stage that reads raw,
identified DICOM. Order of effects, so a crash at any point is safe to retry:

1. de-identified objects to ``studies/`` (deterministic keys, overwritten in place)
2. study record QUEUED (conditional: one study per StudyInstanceUID and facility)
3. job message to the urgent or backfill queue
4. upload record QUEUED (its study was queued, or is a duplicate of one)
5. raw objects deleted (PHI leaves as soon as it is no longer needed)

A redelivered event finds the study record and re-sends the same job (same
``job_id``); the worker's conditional writes make a duplicate job harmless.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from ctfleet.aws.queues import receive_count
from ctfleet.aws.records import iso, now
from ctfleet.contracts import (
    JobMessage,
    Manifest,
    Priority,
    Reason,
    Status,
    UploadStatus,
    parse_raw_key,
    raw_prefix,
    s3_event_keys,
    study_prefix,
)
from ctfleet.errors import BadInput, CtfleetError
from ctfleet.intake import PreparedStudy, prepare_study

from .deps import HandlerDeps
from .runtime import deps

log = logging.getLogger(__name__)

IGNORED = "IGNORED"


def handle(event: dict[str, Any], deps: HandlerDeps) -> dict[str, Any]:
    """Process an SQS event of S3 notifications; returns partial batch failures."""
    failures = []
    for record in event.get("Records", []):
        deliveries = receive_count(record)
        for bucket, key in s3_event_keys(record.get("body", "")):
            try:
                ingest_upload(deps, bucket, key)
            except Exception:  # noqa: BLE001 - the outermost loop: a bug, or transient retries spent
                if not _give_up(deps, key, deliveries):
                    log.exception("ingest failed; SQS will redeliver", extra={"message_id": record.get("messageId")})
                    failures.append({"itemIdentifier": record.get("messageId")})
                    break
    return {"batchItemFailures": failures}


def _give_up(deps: HandlerDeps, key: str, deliveries: int) -> bool:
    """On the last delivery, record the upload FAILED instead of leaving it in limbo; True if so."""
    if deliveries < deps.settings.ingest_queue.max_receive_count:
        return False
    _, upload_id, _ = parse_raw_key(key)
    deps.uploads.finish(upload_id, UploadStatus.FAILED, reason=Reason.INGEST_ERROR)
    log.exception("upload failed after the last retry", extra={"upload_id": upload_id})
    return True


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return handle(event, deps())


def ingest_upload(deps: HandlerDeps, bucket: str, key: str) -> str:
    """Ingest one completed upload; returns its final upload status."""
    s = deps.settings
    facility, upload_id, name = parse_raw_key(key)
    if bucket != s.raw_bucket:
        log.warning("ignoring an object of another bucket", extra={"upload_id": upload_id})
        return IGNORED
    record = deps.uploads.get(upload_id)
    if name != s.manifest_name:
        return late_file(deps, record, key, upload_id)
    if record is not None and record.get("status") in UploadStatus.FINAL:
        deps.raw.delete_prefix(raw_prefix(facility, upload_id))
        return str(record["status"])
    started = time.perf_counter()
    try:
        status = _ingest(deps, facility, upload_id)
    except BadInput as exc:
        deps.uploads.finish(upload_id, UploadStatus.REJECTED, reason=exc.reason)
        log.info("upload rejected", extra={"upload_id": upload_id, "reason": exc.reason, "detail": exc.detail})
        deps.raw.delete_prefix(raw_prefix(facility, upload_id))
        return UploadStatus.REJECTED
    log.info("upload ingested", extra={"upload_id": upload_id, "seconds": round(time.perf_counter() - started, 3)})
    return status


def late_file(deps: HandlerDeps, record: dict[str, Any] | None, key: str, upload_id: str) -> str:
    """A file of an upload: kept while the upload is open, deleted if it is finished or unknown
    (PHI sent again through a presigned POST after ingest would otherwise stay in raw/)."""
    if record is not None and record.get("status") not in UploadStatus.FINAL:
        return IGNORED
    deps.raw.delete(key)
    log.warning("a file arrived after its upload ended; deleted",
                extra={"upload_id": upload_id, "status": (record or {}).get("status", "unknown")})
    return str((record or {}).get("status", IGNORED))


def read_upload(deps: HandlerDeps, facility: str, upload_id: str) -> tuple[Manifest, list[bytes]]:
    """The upload's manifest and files, every promised file present, of its size and sha256.

    Raises
    ------
    BadInput
        ``manifest_invalid``, ``empty_upload``, ``upload_incomplete`` or ``checksum_mismatch``.
    """
    prefix = raw_prefix(facility, upload_id)
    manifest = Manifest.from_json(deps.raw.get(prefix + deps.settings.manifest_name))
    if manifest.facility != facility or manifest.upload_id != upload_id:
        raise BadInput(Reason.MANIFEST_INVALID, "manifest does not match its location")
    if not manifest.files:
        raise BadInput(Reason.EMPTY_UPLOAD, "the upload has no files")
    present = deps.raw.sizes(prefix)
    missing = sum(1 for f in manifest.files if present.get(f.name) != f.size)
    if missing:
        raise BadInput(Reason.UPLOAD_INCOMPLETE, f"{missing} of {len(manifest.files)} files missing or of the wrong size")
    if all(f.size == 0 for f in manifest.files):
        raise BadInput(Reason.EMPTY_UPLOAD, "every file is empty")
    blobs = deps.raw.get_many([prefix + f.name for f in manifest.files])
    corrupt = sum(1 for f, blob in zip(manifest.files, blobs) if hashlib.sha256(blob).hexdigest() != f.sha256)
    if corrupt:
        raise BadInput(Reason.CHECKSUM_MISMATCH, f"{corrupt} of {len(blobs)} files differ from their sha256")
    return manifest, blobs


def _ingest(deps: HandlerDeps, facility: str, upload_id: str) -> str:
    s = deps.settings
    t0 = time.perf_counter()
    manifest, blobs = read_upload(deps, facility, upload_id)
    t_download = time.perf_counter()
    study = prepare_study(blobs, secret=deps.secrets.get(facility), facility=facility)
    out_prefix = study_prefix(facility, study.study_key, study.series_id)
    object_keys = [f"{out_prefix}{i:04d}.dcm" for i in range(len(study.files))]
    t_prepared = time.perf_counter()
    deps.studies_objects.put_many(zip(object_keys, study.files))
    t_write = time.perf_counter()

    job = JobMessage.new(
        facility=facility, study_key=study.study_key, series=study.series_id, object_keys=tuple(object_keys),
        slice_count=len(object_keys), size_bytes=sum(len(b) for b in study.files), priority=manifest.priority,
        model=s.model,
    )
    timings = {"download": t_download - t0, **study.timings_s, "write": t_write - t_prepared}
    registered = deps.studies.register(job, study_item(job, upload_id, timings, study))
    if registered.job is not None:
        deps.queue(s.job_queue(registered.job.priority).name).send(
            registered.job.to_json(), {"priority": registered.job.priority})
        if registered.job.priority == Priority.URGENT:
            nudge_scaler(deps)
    elif registered.duplicate_of is not None:
        log.info("duplicate study; no new job", extra={"study_key": job.study_key, "upload_id": upload_id})
        deps.uploads.note_duplicate(upload_id, registered.duplicate_of)
    deps.uploads.finish(upload_id, UploadStatus.QUEUED, study_key=study.study_key)
    deps.raw.delete_prefix(raw_prefix(facility, upload_id))
    return UploadStatus.QUEUED


def nudge_scaler(deps: HandlerDeps) -> None:
    """Ask the scaler for a pass now, not at its next minute: urgent work may wait on a fleet at zero.

    Best effort: the scheduled pass comes within a minute anyway, so a nudge that
    cannot be sent is logged, never an ingest failure.
    """
    try:
        deps.queue(deps.settings.scaler_queue.name).send('{"nudge": "urgent"}')
    except CtfleetError as exc:
        log.warning("could not nudge the scaler", extra={"reason": exc.reason, "detail": exc.detail})


def study_item(job: JobMessage, upload_id: str, timings: dict[str, float], study: PreparedStudy) -> dict[str, Any]:
    """The new study record, QUEUED (no PHI: keys, counts, the series choice's reasons)."""
    t = now()
    return {
        "study_key": job.study_key,
        "facility": job.facility,
        "status": Status.QUEUED,
        "upload_id": upload_id,
        "job_id": job.job_id,
        "job": job.to_json(),
        "priority": job.priority,
        "series": job.series,
        "slices": job.slice_count,
        "bytes": job.size_bytes,
        "series_found": study.series_found,
        "files_skipped": study.files_skipped,
        "series_choice": study.choice,
        "model": job.model,
        "created_at": iso(t),
        "received_at": t,
        "queued_at": t,
        "attempts": 0,
        "timings_s": {f"ingest_{k}": round(v, 4) for k, v in timings.items()},
    }


__all__ = ["IGNORED", "handle", "ingest_upload", "lambda_handler", "read_upload", "study_item"]
