"""Triage: one alert per HIGH study, driven by the studies table's stream.

At-most-once claim, then publish, then mark sent:
- the claim is a conditional write (``alert_state`` absent, or a SENDING claim
  older than the lease, i.e. its holder died before publishing or marking);
- a stream record replayed after the mark finds ``alert_state = SENT`` and stops.
The only window for a second alert is a crash between publish and mark, longer
than the lease; the alert carries the study key so receivers can de-duplicate.

Alerts carry no PHI: study key, facility, score, severity and a viewer link.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ctfleet.contracts import Status
from ctfleet.aws.records import ConditionFailed, deserialize, now

from .deps import HandlerDeps

log = logging.getLogger(__name__)

CLAIM_LEASE_S = 60.0


class AlertState:
    SENDING = "SENDING"
    SENT = "SENT"


class Triage(HandlerDeps):
    """The triage function's dependencies."""


def handle(event: dict[str, Any], deps: Triage) -> dict[str, Any]:
    """Process DynamoDB stream records; returns partial batch failures."""
    failures = []
    for record in event.get("Records", []):
        if record.get("eventName") not in ("INSERT", "MODIFY"):
            continue
        image = deserialize(record.get("dynamodb", {}).get("NewImage", {}))
        try:
            maybe_alert(deps, image)
        except Exception:  # noqa: BLE001 - retried by the event source mapping
            log.exception("triage failed", extra={"study_key": image.get("study_key")})
            failures.append({"itemIdentifier": record.get("dynamodb", {}).get("SequenceNumber")})
    return {"batchItemFailures": failures}


_DEPS: Triage | None = None


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _DEPS
    from .runtime import clients

    if _DEPS is None:
        _DEPS = Triage(clients())
    return handle(event, _DEPS)


def needs_alert(image: dict[str, Any]) -> bool:
    return (
        image.get("status") == Status.DONE
        and image.get("triage_level") == "HIGH"
        and image.get("alert_state") != AlertState.SENT
    )


def maybe_alert(deps: Triage, image: dict[str, Any], *, at: float | None = None) -> bool:
    """Send the study's alert if it is due and nobody else holds the claim; True if sent."""
    if not needs_alert(image):
        return False
    key = image["study_key"]
    t = now() if at is None else at
    try:
        deps.studies.update(
            key,
            {"alert_state": AlertState.SENDING, "alert_claimed_at": t},
            condition="#status = :done AND (attribute_not_exists(#alert_state) OR "
            "(#alert_state = :sending AND #alert_claimed_at < :stale))",
            values={":done": Status.DONE, ":sending": AlertState.SENDING, ":stale": t - CLAIM_LEASE_S},
        )
    except ConditionFailed:
        return False
    settings = deps.clients.settings
    message = alert_message(image, settings.api_url)
    deps.clients.sns.publish(
        TopicArn=deps.clients.topic_arn(settings.alerts_topic),
        Subject=f"ctfleet HIGH triage: study {key}",
        Message=json.dumps(message, sort_keys=True),
        MessageAttributes={
            "facility": {"DataType": "String", "StringValue": image["facility"]},
            "triage_level": {"DataType": "String", "StringValue": "HIGH"},
        },
    )
    deps.studies.update(key, {"alert_state": AlertState.SENT, "alerted_at": now()},
                        condition="#alert_state = :sending", values={":sending": AlertState.SENDING})
    log.info("alert sent", extra={"study_key": key, "facility": image["facility"]})
    return True


def retry_stale_claims(deps: Triage, *, at: float) -> int:
    """Send the alerts whose claim is older than the lease (its holder died before publishing).

    Run on the schedule with the expiry sweep; without it such a study would
    wait for its next stream record, which may never come.
    """
    index = next(i for i in deps.clients.settings.studies_table.indexes if i.name == "by_alert_state")
    claims = deps.studies.query_index(index.name, index.partition_key, AlertState.SENDING, limit=1000)
    sent = 0
    for image in claims:
        if float(image.get("alert_claimed_at", at)) < at - CLAIM_LEASE_S and maybe_alert(deps, image, at=at):
            sent += 1
    return sent


def alert_message(image: dict[str, Any], api_url: str | None) -> dict[str, Any]:
    """The alert body: what the on-call radiologist needs, and no PHI."""
    key = image["study_key"]
    return {
        "kind": "ctfleet.triage",
        "study_key": key,
        "facility": image["facility"],
        "triage_level": image.get("triage_level"),
        "score": image.get("score"),
        "severity_score": image.get("severity_score"),
        "model_version": image.get("model_version"),
        "link": f"{api_url.rstrip('/')}/#/studies/{key}" if api_url else None,
    }
