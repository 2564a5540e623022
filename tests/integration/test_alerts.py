"""Alerts go out once, even when the sender dies between its claim and the publish."""

from __future__ import annotations

import time

import pytest

from ctfleet.aws.records import now, studies_table
from dispatcher.triage import CLAIM_LEASE_S, Triage, retry_stale_claims

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
    studies_table(stack.clients).put_new({
        "study_key": key, "facility": "demo", "status": "DONE", "triage_level": "HIGH", "score": 0.97,
        "severity_score": 19, "created_at": "2026-01-01T00:00:00.000Z", "job_id": "j",
        "alert_state": "SENDING", "alert_claimed_at": t - 5,
    })
    deps = Triage(stack.clients)
    assert retry_stale_claims(deps, at=t) == 0, "a fresh claim belongs to its holder"
    later = t + CLAIM_LEASE_S + 1
    assert retry_stale_claims(deps, at=later) == 1
    assert retry_stale_claims(deps, at=later + 1) == 0
    assert _alerts_for(stack, key) == 1
    record = studies_table(stack.clients).get(key)
    assert record["alert_state"] == "SENT"
