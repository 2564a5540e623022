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
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from ctfleet.aws.clients import Clients, FacilitySecrets, list_sizes
from ctfleet.contracts import (
    JobMessage,
    Manifest,
    Reason,
    Status,
    parse_raw_key,
    raw_prefix,
    study_prefix,
)
from ctfleet.intake import PreparedStudy, prepare_study
from ctfleet.errors import BadInput
from ctfleet.aws.records import ConditionFailed, now

from .api import PROMISED, UploadStatus, _iso
from .deps import HandlerDeps

log = logging.getLogger(__name__)

INGEST_ERROR = "ingest_error"
_POOL = 8


@dataclass
class Ingest(HandlerDeps):
    """The ingest function's dependencies: the clients and the facility secrets (cached)."""

    secrets: FacilitySecrets = field(init=False)

    def __post_init__(self) -> None:
        self.secrets = FacilitySecrets(self.clients)


def handle(event: dict[str, Any], deps: Ingest) -> dict[str, Any]:
    """Process an SQS event of S3 notifications; returns partial batch failures."""
    failures = []
    for record in event.get("Records", []):
        receive_count = int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            for bucket, key in _manifest_keys(record.get("body", "")):
                ingest_upload(deps, bucket, key, receive_count=receive_count)
        except Exception:  # noqa: BLE001 - anything unexpected: retry via SQS, then FAILED
            log.exception("ingest failed; SQS will redeliver", extra={"message_id": record.get("messageId")})
            failures.append({"itemIdentifier": record.get("messageId")})
    return {"batchItemFailures": failures}


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return handle(event, _deps())


_DEPS: Ingest | None = None


def _deps() -> Ingest:
    global _DEPS
    from .runtime import clients

    if _DEPS is None:
        _DEPS = Ingest(clients())
    return _DEPS


def _manifest_keys(body: str) -> list[tuple[str, str]]:
    """(bucket, key) of each manifest in an S3 notification; [] for test events."""
    try:
        data = json.loads(body)
    except ValueError:
        log.warning("ignoring a message that is not JSON")
        return []
    if data.get("Event") == "s3:TestEvent":
        return []
    out = []
    for rec in data.get("Records", []):
        s3 = rec.get("s3", {})
        # S3 URL-encodes keys in notifications (spaces as '+').
        out.append((s3.get("bucket", {}).get("name", ""), unquote_plus(s3.get("object", {}).get("key", ""))))
    return out


def ingest_upload(deps: Ingest, bucket: str, key: str, *, receive_count: int = 1) -> str:
    """Ingest one completed upload; returns its final upload status."""
    s = deps.settings
    facility, upload_id, name = parse_raw_key(key)
    if bucket != s.raw_bucket or name != s.manifest_name:
        log.warning("ignoring an object that is not a manifest", extra={"upload_id": upload_id})
        return "IGNORED"
    record = deps.uploads.get(upload_id)
    if record is not None and record.get("status") in UploadStatus.FINAL:
        delete_raw(deps.clients, facility, upload_id)
        return str(record["status"])
    started = time.perf_counter()
    try:
        status = _ingest(deps, facility, upload_id)
    except BadInput as exc:
        _finish(deps, upload_id, UploadStatus.REJECTED, reason=exc.reason)
        log.info("upload rejected", extra={"upload_id": upload_id, "reason": exc.reason, "detail": exc.detail})
        delete_raw(deps.clients, facility, upload_id)
        return UploadStatus.REJECTED
    except Exception:
        if receive_count >= s.ingest_queue.max_receive_count:
            # Last delivery: record the failure instead of leaving the upload in limbo.
            _finish(deps, upload_id, UploadStatus.FAILED, reason=INGEST_ERROR)
            log.exception("upload failed after the last retry", extra={"upload_id": upload_id})
            return UploadStatus.FAILED
        raise
    log.info("upload ingested", extra={"upload_id": upload_id, "seconds": round(time.perf_counter() - started, 3)})
    return status


def _ingest(deps: Ingest, facility: str, upload_id: str) -> str:
    s = deps.settings
    s3 = deps.clients.s3
    t0 = time.perf_counter()
    manifest = Manifest.from_json(
        s3.get_object(Bucket=s.raw_bucket, Key=raw_prefix(facility, upload_id) + s.manifest_name)["Body"].read()
    )
    if manifest.facility != facility or manifest.upload_id != upload_id:
        raise BadInput(Reason.MANIFEST_INVALID, "manifest does not match its location")
    if not manifest.files:
        raise BadInput(Reason.EMPTY_UPLOAD, "the upload has no files")
    present = _listing(deps, facility, upload_id)
    missing = sum(1 for f in manifest.files if present.get(f.name) != f.size)
    if missing:
        raise BadInput(Reason.UPLOAD_INCOMPLETE, f"{missing} of {len(manifest.files)} files missing or of the wrong size")
    if all(f.size == 0 for f in manifest.files):
        raise BadInput(Reason.EMPTY_UPLOAD, "every file is empty")

    prefix = raw_prefix(facility, upload_id)
    with ThreadPoolExecutor(_POOL) as pool:
        blobs = list(pool.map(
            lambda f: s3.get_object(Bucket=s.raw_bucket, Key=prefix + f.name)["Body"].read(), manifest.files
        ))
    t_download = time.perf_counter()
    corrupt = sum(1 for f, blob in zip(manifest.files, blobs) if hashlib.sha256(blob).hexdigest() != f.sha256)
    if corrupt:
        raise BadInput(Reason.CHECKSUM_MISMATCH, f"{corrupt} of {len(blobs)} files differ from their sha256")

    study = prepare_study(blobs, secret=deps.secrets.get(facility), facility=facility)
    key = study.study_key
    out_prefix = study_prefix(facility, key, study.series_id)
    object_keys = [f"{out_prefix}{i:04d}.dcm" for i in range(len(study.files))]
    t_prepared = time.perf_counter()
    with ThreadPoolExecutor(_POOL) as pool:
        list(pool.map(
            lambda kv: s3.put_object(Bucket=s.studies_bucket, Key=kv[0], Body=kv[1], ContentType="application/dicom"),
            zip(object_keys, study.files),
        ))
    t_write = time.perf_counter()

    job = JobMessage.new(
        facility=facility,
        study_key=key,
        series=study.series_id,
        object_keys=tuple(object_keys),
        slice_count=len(object_keys),
        size_bytes=sum(len(b) for b in study.files),
        priority=manifest.priority,
        model=s.model,
    )
    timings = {"download": t_download - t0, **study.timings_s, "write": t_write - t_prepared}
    to_send = _record_study(deps, job, upload_id, timings, study)
    if to_send is not None:
        deps.clients.sqs.send_message(
            QueueUrl=deps.clients.queue_url(s.job_queue(to_send.priority).name),
            MessageBody=to_send.to_json(),
            MessageAttributes={"priority": {"DataType": "String", "StringValue": to_send.priority}},
        )
    _finish(deps, upload_id, UploadStatus.QUEUED, study_key=key)
    delete_raw(deps.clients, facility, upload_id)
    return UploadStatus.QUEUED


def _record_study(deps: Ingest, job: JobMessage, upload_id: str, timings: dict[str, float],
                  study: PreparedStudy) -> JobMessage | None:
    """Put the study record; returns the job to send, or None when the study is a duplicate."""
    t = now()
    item = {
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
        "created_at": _iso(t),
        "received_at": t,
        "queued_at": t,
        "attempts": 0,
        "timings_s": {f"ingest_{k}": round(v, 4) for k, v in timings.items()},
    }
    try:
        deps.studies.put_new(item)
        return job
    except ConditionFailed:
        pass
    existing = deps.studies.get(job.study_key) or {}
    if existing.get("upload_id") == upload_id and existing.get("status") == Status.QUEUED:
        # Our own earlier attempt crashed after the record: send the very same job again.
        return JobMessage.from_json(existing["job"])
    if existing.get("status") in (Status.FAILED, Status.REJECTED):
        try:
            deps.studies.put(item, condition="#status = :old", names={"#status": "status"},
                             values={":old": existing["status"]})
            return job
        except ConditionFailed:
            return None
    log.info("duplicate study; no new job", extra={"study_key": job.study_key, "upload_id": upload_id})
    deps.uploads.update(upload_id, {"duplicate_of": existing.get("upload_id", "")})
    return None


def _finish(deps: Ingest, upload_id: str, status: str, *, reason: str | None = None,
            study_key: str | None = None) -> None:
    fields: dict[str, Any] = {"status": status, "ingested_at": now()}
    if reason:
        fields["reason"] = reason
    if study_key:
        fields["study_key"] = study_key
    try:
        deps.uploads.update(upload_id, fields, condition="attribute_not_exists(#status) OR NOT #status IN (:a, :r, :f)",
                            values={":a": UploadStatus.QUEUED, ":r": UploadStatus.REJECTED, ":f": UploadStatus.FAILED})
    except ConditionFailed:
        log.info("upload already final", extra={"upload_id": upload_id})


def _listing(deps: Ingest, facility: str, upload_id: str) -> dict[str, int]:
    return list_sizes(deps.clients.s3, deps.settings.raw_bucket, raw_prefix(facility, upload_id))


def delete_raw(clients: Clients, facility: str, upload_id: str) -> None:
    """Delete every raw object of the upload (PHI); the lifecycle rule is the backstop."""
    prefix = raw_prefix(facility, upload_id)
    keys = [prefix + name for name in list_sizes(clients.s3, clients.settings.raw_bucket, prefix)]
    for i in range(0, len(keys), 1000):
        clients.s3.delete_objects(
            Bucket=clients.settings.raw_bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True}
        )


__all__ = ["Ingest", "handle", "ingest_upload", "lambda_handler", "delete_raw", "PROMISED"]
