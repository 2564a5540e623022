"""The state machine's one home: each transition's condition, against a real moto server."""

from __future__ import annotations

import time

import pytest

from aws_server import moto_stack
from ctfleet.contracts import JobMessage, Reason, Status, UploadStatus
from ctfleet.settings import Settings


@pytest.fixture(scope="module")
def stack():
    with moto_stack(Settings(stack="ctfrepo")) as s:
        yield s


def job(key: str, **over) -> JobMessage:
    fields = dict(facility="demo", study_key=key, series="c" * 16, object_keys=(f"studies/demo/{key}/{'c' * 16}/0.dcm",),
                  slice_count=1, size_bytes=1, priority="urgent", model="default")
    return JobMessage.new(**{**fields, **over})


def item(j: JobMessage, upload_id: str) -> dict:
    return {"study_key": j.study_key, "facility": j.facility, "status": Status.QUEUED, "upload_id": upload_id,
            "job_id": j.job_id, "job": j.to_json(), "created_at": "2026-01-01T00:00:00.000Z", "attempts": 0}


def test_a_study_is_registered_once_and_a_redelivery_resends_the_same_job(stack):
    studies = stack.deps.studies
    first = job("a1" * 12)
    assert studies.register(first, item(first, "u1")).job == first
    # Ingest of the same upload crashed after the record: the very same job goes out again.
    retry = job("a1" * 12)
    assert studies.register(retry, item(retry, "u1")).job == first
    # Another upload of the same study while it is queued: nothing to send, a duplicate of u1.
    other = job("a1" * 12)
    out = studies.register(other, item(other, "u2"))
    assert out.job is None and out.duplicate_of == "u1"


def test_a_failed_study_is_queued_again_by_a_new_upload(stack):
    studies = stack.deps.studies
    first = job("a2" * 12)
    studies.register(first, item(first, "u1"))
    assert studies.settle(first, Status.FAILED, Reason.ANALYSIS_FAILED)
    again = job("a2" * 12)
    assert studies.register(again, item(again, "u3")).job == again
    assert studies.get(again.study_key)["status"] == Status.QUEUED


def test_claim_counts_attempts_holds_a_lease_and_only_the_current_job_may_claim(stack):
    studies = stack.deps.studies
    j = job("a3" * 12)
    studies.register(j, item(j, "u1"))
    first = studies.claim(j, "i-1", {}, lease_s=60)
    assert first.record is not None and first.record["attempts"] == 1 and first.record["worker_instance"] == "i-1"
    held = studies.claim(j, "i-2", {}, lease_s=60)
    assert held.record is None and held.held_by == "i-1", "a live holder's job is not claimed twice"
    assert studies.renew_lease(j, "i-1", lease_s=60) and not studies.renew_lease(j, "i-2", lease_s=60)
    assert studies.release(j, "i-1"), "a hand-back gives the lease up"
    again = studies.claim(j, "i-2", {}, lease_s=60)
    assert again.record is not None and again.record["attempts"] == 2, "a redelivery after the lease re-claims"
    stale = studies.claim(job("a3" * 12), "i-3", {}, lease_s=60)
    assert stale.record is None and stale.held_by is None, "a stale job id claims nothing"


def test_failures_are_counted_only_by_the_holder(stack):
    studies = stack.deps.studies
    j = job("a6" * 12)
    studies.register(j, item(j, "u1"))
    studies.claim(j, "i-1", {}, lease_s=60)
    assert studies.record_failure(j, "i-2") == 0
    assert studies.record_failure(j, "i-1") == 1
    assert studies.get(j.study_key)["lease_until"] == 0, "the failed attempt's lease is given up"
    # The attempt's heartbeat may still beat once after the failure: it holds nothing again.
    assert not studies.renew_lease(j, "i-1", lease_s=60)
    assert studies.get(j.study_key)["lease_until"] == 0
    assert studies.claim(j, "i-2", {}, lease_s=60).record is not None, "the next delivery takes it at once"


def test_done_is_written_once_and_a_settled_study_stays_settled(stack):
    studies = stack.deps.studies
    j = job("a4" * 12)
    studies.register(j, item(j, "u1"))
    assert not studies.mark_done(j, {"score": 0.5}), "not PROCESSING yet"
    studies.claim(j, "i-1", {}, lease_s=60)
    assert studies.mark_done(j, {"score": 0.5})
    assert not studies.mark_done(j, {"score": 0.9}), "a second attempt does not overwrite DONE"
    assert not studies.settle(j, Status.FAILED, Reason.TOO_MANY_ATTEMPTS)
    record = studies.get(j.study_key)
    assert record["status"] == Status.DONE and record["score"] == 0.5 and "reason" not in record


def test_an_alert_claim_is_held_until_its_lease_ends(stack):
    studies = stack.deps.studies
    key = "a5" * 12
    studies.table.put_new({"study_key": key, "facility": "demo", "status": Status.DONE, "job_id": "j",
                           "created_at": "2026-01-01T00:00:00.000Z"})
    t = time.time()
    assert studies.claim_alert(key, at=t, lease_s=60)
    assert not studies.claim_alert(key, at=t + 30, lease_s=60), "held by a live sender"
    assert studies.claim_alert(key, at=t + 61, lease_s=60), "its holder died: taken over"
    assert studies.mark_alert_sent(key)
    assert not studies.claim_alert(key, at=t + 500, lease_s=60), "sent: never again"


def test_an_upload_completes_once_and_ends_in_one_final_state(stack):
    uploads = stack.deps.uploads
    uploads.create("3" * 32, "demo", "urgent", files=1, size_bytes=1, created=time.time(), expires_at=0)
    assert uploads.complete("3" * 32)["status"] == UploadStatus.COMPLETE
    assert uploads.complete("3" * 32) is None
    assert not uploads.expire("3" * 32), "only a RECEIVED upload expires"
    assert uploads.finish("3" * 32, UploadStatus.QUEUED, study_key="k")
    assert not uploads.finish("3" * 32, UploadStatus.FAILED, reason=Reason.INGEST_ERROR)
    assert not uploads.fail_ingest("3" * 32)
    assert uploads.get("3" * 32)["status"] == UploadStatus.QUEUED
