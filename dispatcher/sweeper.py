"""The scheduled sweep: expire uploads that never completed, and finish alerts whose sender died.

Uploads still RECEIVED after ``upload_expiry_s`` become REJECTED with
``upload_incomplete`` and their raw objects are deleted; alert claims older than
the lease are taken over and sent (see :mod:`dispatcher.triage`).

Runs on a schedule (EventBridge on AWS, a timer thread in the local stack). An
upload whose files stopped arriving must still end in a recorded state, and its
PHI must not linger in ``raw/`` until the lifecycle rule catches it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ctfleet.contracts import JobMessage, Reason, Status, parse_raw_key
from ctfleet.errors import BadInput
from ctfleet.aws.records import ConditionFailed, now

from .api import UploadStatus, _iso
from .deps import HandlerDeps
from .ingest import INGEST_ERROR, _manifest_keys, delete_raw
from .triage import Triage, retry_stale_claims

log = logging.getLogger(__name__)

BATCH = 500


class Sweeper(HandlerDeps):
    """The scheduled sweep's dependencies."""


def handle(event: dict[str, Any], deps: Sweeper) -> dict[str, Any]:
    at = time.time()
    return {
        "expired": sweep(deps, at=at),
        "alerts_retried": retry_stale_claims(Triage(deps.clients), at=at),
        "dead_letters": settle_dead_letters(deps),
    }


def settle_dead_letters(deps: Sweeper, *, batches: int = 10) -> int:
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
        url = deps.clients.queue_url(spec.dlq_name)
        for _ in range(batches):
            got = deps.clients.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                                   AttributeNames=["ApproximateReceiveCount"])
            messages = got.get("Messages", [])
            if not messages:
                break
            for message in messages:
                if spec.name == s.ingest_queue.name:
                    _fail_uploads(deps, message["Body"])
                else:
                    _fail_study(deps, message["Body"])
                deps.clients.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                settled += 1
    return settled


def _fail_study(deps: Sweeper, body: str) -> None:
    try:
        job = JobMessage.from_json(body)
    except BadInput:
        log.error("dropping a malformed dead letter")
        return
    try:
        deps.studies.update(
            job.study_key,
            {"status": Status.FAILED, "reason": Reason.TOO_MANY_ATTEMPTS, "finished_at": now()},
            condition="#job_id = :job AND #status IN (:queued, :processing)",
            values={":job": job.job_id, ":queued": Status.QUEUED, ":processing": Status.PROCESSING},
        )
        log.warning("study failed after every attempt", extra={"study_key": job.study_key})
    except ConditionFailed:
        pass  # settled meanwhile (DONE by a late attempt, or already FAILED)


def _fail_uploads(deps: Sweeper, body: str) -> None:
    for bucket, key in _manifest_keys(body):
        try:
            _, upload_id, _ = parse_raw_key(key)
        except BadInput:
            continue
        try:
            deps.uploads.update(
                upload_id,
                {"status": UploadStatus.FAILED, "reason": INGEST_ERROR, "ingested_at": now()},
                condition="#status IN (:received, :complete)",
                values={":received": UploadStatus.RECEIVED, ":complete": UploadStatus.COMPLETE},
            )
            log.warning("upload failed after every ingest attempt", extra={"upload_id": upload_id})
        except ConditionFailed:
            pass


_DEPS: Sweeper | None = None


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _DEPS
    from .runtime import clients

    if _DEPS is None:
        _DEPS = Sweeper(clients())
    return handle(event, _DEPS)


def sweep(deps: Sweeper, *, at: float) -> int:
    """Expire every upload still RECEIVED ``upload_expiry_s`` after it was created; returns how many."""
    settings = deps.clients.settings
    index = next(i for i in settings.uploads_table.indexes if i.name == "by_status")
    cutoff = _iso(at - settings.upload_expiry_s)
    expired = 0
    while True:
        stale = deps.uploads.query_index(index.name, index.partition_key, UploadStatus.RECEIVED, limit=BATCH,
                                         sort_key=index.sort_key, sort_before=cutoff)
        for item in stale:
            try:
                deps.uploads.update(
                    item["upload_id"],
                    {"status": UploadStatus.REJECTED, "reason": Reason.UPLOAD_INCOMPLETE, "ingested_at": now()},
                    condition="#status = :received",
                    values={":received": UploadStatus.RECEIVED},
                )
            except ConditionFailed:
                continue  # completed (or expired by another sweep) meanwhile
            delete_raw(deps.clients, item["facility"], item["upload_id"])
            expired += 1
            log.info("upload expired", extra={"upload_id": item["upload_id"], "reason": Reason.UPLOAD_INCOMPLETE})
        if len(stale) < BATCH:
            return expired
