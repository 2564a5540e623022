"""Alerts go out once, even when the sender dies between its claim and the publish."""

from __future__ import annotations


import pytest

from ctfleet.aws.alerts import CLAIM_LEASE_S
from ctfleet.aws.records import now
from dispatcher.deps import HandlerDeps
from stack_helpers import alerts_for

pytestmark = pytest.mark.integration


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
    # ... and its claim of the alert's record.
    from ctfleet.aws.records import Table

    Table(stack.clients.dynamodb, stack.settings.alerts_table).put_new({
        "alert_id": f"{key}:unknown", "study_key": key, "facility": "demo", "state": "SENDING", "claimed_at": t - 5})
    assert deps.alerts.retry_stale_claims(at=t) == 0, "a fresh claim belongs to its holder"
    later = t + CLAIM_LEASE_S + 1
    assert deps.alerts.retry_stale_claims(at=later) == 1
    assert deps.alerts.retry_stale_claims(at=later + 1) == 0
    assert alerts_for(stack, key, seconds=4.0) == 1
    record = deps.studies.get(key)
    assert record["alert_state"] == "SENT"
