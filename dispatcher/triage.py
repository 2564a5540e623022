"""Triage: one alert per HIGH study, driven by the studies table's stream.

Which stream records need an alert is :func:`ctfleet.contracts.needs_alert`;
claim, publish and mark, at most once, is :class:`ctfleet.aws.alerts.Alerts`.
Alerts carry no PHI: study key, facility, score, severity and a viewer link.
"""

from __future__ import annotations

import logging
from typing import Any

from ctfleet.aws.records import deserialize, now

from .deps import HandlerDeps
from .runtime import deps

log = logging.getLogger(__name__)


def handle(event: dict[str, Any], deps: HandlerDeps) -> dict[str, Any]:
    """Process DynamoDB stream records; returns partial batch failures."""
    failures = []
    for record in event.get("Records", []):
        if record.get("eventName") not in ("INSERT", "MODIFY"):
            continue
        image = deserialize(record.get("dynamodb", {}).get("NewImage", {}))
        try:
            deps.alerts.maybe_send(image, at=now())
        except Exception:  # noqa: BLE001 - the outermost loop: retried by the event source mapping
            log.exception("triage failed", extra={"study_key": image.get("study_key")})
            failures.append({"itemIdentifier": record.get("dynamodb", {}).get("SequenceNumber")})
    return {"batchItemFailures": failures}


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return handle(event, deps())


__all__ = ["handle", "lambda_handler"]
