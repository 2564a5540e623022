"""The scheduled sweep: expire uploads that never completed, finish alerts whose sender died,
and settle the messages SQS gave up on.

- uploads still RECEIVED after ``upload_expiry_s`` become REJECTED ``upload_incomplete``
  and their raw objects (PHI) are deleted, not left for the lifecycle rule;
- alert claims older than the lease are taken over and sent (:class:`ctfleet.aws.alerts.Alerts`);
- dead letters become FAILED records (``too_many_attempts``, ``ingest_error``), so
  no study waits PROCESSING forever.

Runs on a schedule (EventBridge on AWS, a timer thread in the local stack).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ctfleet.contracts import JobMessage, Reason, Status, UploadStatus, parse_raw_key, raw_prefix, s3_event_keys
from ctfleet.errors import BadInput

from .deps import HandlerDeps
from .runtime import deps

log = logging.getLogger(__name__)

BATCH = 500


def handle(event: dict[str, Any], deps: HandlerDeps) -> dict[str, Any]:
    at = time.time()
    return {
        "expired": sweep(deps, at=at),
        "leftovers": sweep_raw(deps),
        "alerts_retried": deps.alerts.retry_stale_claims(at=at),
        "dead_letters": settle_dead_letters(deps),
    }


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return handle(event, deps())


def sweep(deps: HandlerDeps, *, at: float) -> int:
    """Expire every upload still RECEIVED ``upload_expiry_s`` after it was created; returns how many."""
    expired = 0
    while True:
        stale = deps.uploads.stale(before=at - deps.settings.upload_expiry_s, limit=BATCH)
        for item in stale:
            if not deps.uploads.expire(item["upload_id"]):
                continue  # completed (or expired by another sweep) meanwhile
            deps.raw.delete_prefix(raw_prefix(item["facility"], item["upload_id"]))
            expired += 1
            log.info("upload expired", extra={"upload_id": item["upload_id"], "reason": Reason.UPLOAD_INCOMPLETE})
        if len(stale) < BATCH:
            return expired


def sweep_raw(deps: HandlerDeps, *, limit: int = 10_000) -> int:
    """Delete raw objects of uploads that ended (or are unknown): the backstop of ingest's
    late-file check; returns how many uploads' leftovers went."""
    cleaned = 0
    for prefix in deps.raw.prefixes("raw/", depth=2, limit=limit):
        _, facility, upload_id = prefix.rstrip("/").split("/")
        record = deps.uploads.get(upload_id)
        if record is not None and record.get("status") not in UploadStatus.FINAL:
            continue
        if deps.raw.delete_prefix(prefix):
            cleaned += 1
            log.warning("raw leftovers of an ended upload deleted", extra={"upload_id": upload_id})
    return cleaned


def settle_dead_letters(deps: HandlerDeps, *, batches: int = 10) -> int:
    """Record FAILED for every message SQS gave up on, then drop it.

    A job that killed its worker on every attempt, or an ingest event that
    crashed the whole function every time, lands in a dead-letter queue with
    its record still PROCESSING (or the upload COMPLETE): without this it would
    wait there forever. The record keeps the job, so nothing is lost by
    deleting the message once the record says FAILED.
    """
    s = deps.settings
    settled = 0
    for spec in s.queues:
        dlq = deps.queue(spec.dlq_name)
        for _ in range(batches):
            messages = dlq.receive(max_messages=10)  # an unreadable one stays invisible for this sweep
            if not messages:
                break
            for message in messages:
                if spec.name == s.ingest_queue.name:
                    _fail_uploads(deps, message["Body"])
                elif not _fail_study(deps, message["Body"]):
                    continue  # unreadable: it stays in the dead-letter queue for people to look at
                dlq.delete(message["ReceiptHandle"])
                settled += 1
    return settled


def _fail_study(deps: HandlerDeps, body: str) -> bool:
    """Record the dead job's study FAILED; False (and the message kept) when the message is unreadable."""
    try:
        job = JobMessage.from_json(body)
    except BadInput as exc:
        log.error("an unreadable job message waits in the dead-letter queue",
                  extra={"reason": Reason.MALFORMED_JOB, "detail": exc.detail})
        return False
    if deps.studies.settle(job, Status.FAILED, Reason.TOO_MANY_ATTEMPTS, actor="sweeper"):
        log.warning("study failed after every attempt", extra={"study_key": job.study_key})
    return True


def _fail_uploads(deps: HandlerDeps, body: str) -> None:
    for _, key in s3_event_keys(body):
        try:
            _, upload_id, _ = parse_raw_key(key)
        except BadInput:
            continue
        if deps.uploads.fail_ingest(upload_id):
            log.warning("upload failed after every ingest attempt", extra={"upload_id": upload_id})


__all__ = ["handle", "lambda_handler", "settle_dead_letters", "sweep"]
