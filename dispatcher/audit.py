"""Audit: every state change of every upload and study, from the tables' change streams.

Each stream record (INSERT or MODIFY, old and new images) becomes the events
:func:`ctfleet.aws.audit.changes` finds in it, written append-only with an id derived from
the record's ``eventID``: a replayed or duplicated record writes nothing new. The actor is
the one the transition recorded (``updated_by``). On AWS two event source mappings (the
studies and the uploads streams) invoke this function; locally the stack's stream pollers do.
"""

from __future__ import annotations

import logging
from typing import Any

from ctfleet.aws.audit import changes
from ctfleet.aws.records import deserialize

from .deps import HandlerDeps
from .runtime import deps

log = logging.getLogger(__name__)

# The table a stream record comes from: its ARN names it (``.../table/{stack}-studies/stream/...``).
KINDS = (("-studies/", "study", "study_key"), ("-uploads/", "upload", "upload_id"))


def handle(event: dict[str, Any], deps: HandlerDeps) -> dict[str, Any]:
    """Write the audit events of DynamoDB stream records; returns partial batch failures."""
    failures = []
    for record in event.get("Records", []):
        if record.get("eventName") not in ("INSERT", "MODIFY"):
            continue
        source = str(record.get("eventSourceARN", ""))
        kind = next(((k, key) for marker, k, key in KINDS if marker in source), None)
        if kind is None:
            continue
        data = record.get("dynamodb", {})
        old, new = deserialize(data.get("OldImage", {})), deserialize(data.get("NewImage", {}))
        try:
            for n, e in enumerate(changes(kind[0], kind[1], old, new)):
                deps.audit.append(e.pop("subject"), e.pop("kind"), facility=e.pop("facility"), actor=e.pop("actor"),
                                  at=_when(e.pop("at"), data), event_id=f"{record.get('eventID')}-{n}", **e)
        except Exception:  # noqa: BLE001 - the outermost loop: retried by the event source mapping
            log.exception("audit failed", extra={"event_id": record.get("eventID")})
            failures.append({"itemIdentifier": data.get("SequenceNumber")})
    return {"batchItemFailures": failures}


def _when(at: Any, data: dict[str, Any]) -> float | None:
    """The change's time: as its writer recorded it, else the stream's approximate time (epoch
    seconds from Lambda's JSON, a datetime from boto3's GetRecords)."""
    value = at or data.get("ApproximateCreationDateTime")
    if value is None:
        return None
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return handle(event, deps())


__all__ = ["handle", "lambda_handler"]
