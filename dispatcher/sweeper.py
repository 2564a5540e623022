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

from ctfleet.contracts import Reason
from ctfleet.records import ConditionFailed, now

from .api import UploadStatus, _iso
from .deps import HandlerDeps
from .ingest import delete_raw
from .triage import Triage, retry_stale_claims

log = logging.getLogger(__name__)

BATCH = 500


class Sweeper(HandlerDeps):
    """The scheduled sweep's dependencies."""


def handle(event: dict[str, Any], deps: Sweeper) -> dict[str, Any]:
    at = time.time()
    return {"expired": sweep(deps, at=at), "alerts_retried": retry_stale_claims(Triage(deps.clients), at=at)}


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
