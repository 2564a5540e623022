"""Alerts go out once, even when the sender dies between its claim and the publish."""

from __future__ import annotations

import time

import pytest

from ctfleet.aws.alerts import CLAIM_LEASE_S
from ctfleet.aws.records import now
from dispatcher.deps import HandlerDeps

pytestmark = pytest.mark.integration


def _alerts_for(stack, key: str, seconds: float = 4.0) -> int:
    alerts, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        alerts += stack.drain_alerts(wait_s=1)
    return sum(1 for a in alerts if a["study_key"] == key)


def test_a_claim_abandoned_before_publishing_is_sent_once_by_the_sweep(stack):
    key = "5eed" * 6
    t = now()
    # What a triage function leaves behind when it dies right after claiming.
    deps = HandlerDeps(stack.clients)
    deps.studies.table.put_new({
        "study_key": key, "facility": "demo", "status": "DONE", "triage_level": "HIGH", "score": 0.97,
        "severity_score": 19, "created_at": "2026-01-01T00:00:00.000Z", "job_id": "j",
        "alert_state": "SENDING", "alert_claimed_at": t - 5,
    })
    assert deps.alerts.retry_stale_claims(at=t) == 0, "a fresh claim belongs to its holder"
    later = t + CLAIM_LEASE_S + 1
    assert deps.alerts.retry_stale_claims(at=later) == 1
    assert deps.alerts.retry_stale_claims(at=later + 1) == 0
    assert _alerts_for(stack, key) == 1
    record = deps.studies.get(key)
    assert record["alert_state"] == "SENT"
