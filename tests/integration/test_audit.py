"""Sign-off and the audit trail over real HTTP: one HIGH study from upload to a result read, every
step on record in order with its actor, and nothing of the patient in it."""

from __future__ import annotations

import json
import time

import pytest
import requests

from ctfleet.cli.client import ApiClient
from ctfleet.local.demo import phantom_studies
from stack_helpers import another_study

pytestmark = pytest.mark.integration


def call(stack, method: str, path: str, token: str, **kw) -> requests.Response:
    return requests.request(method, f"{stack.api_url}/api{path}", headers={"Authorization": f"Bearer {token}"},
                            timeout=30, **kw)


@pytest.fixture(scope="module")
def signed(stack):
    """A HIGH study sent by a clinician, alerted, signed off twice by a radiologist, its results read."""
    high = next(s for s in phantom_studies() if s.label == "phantom-high")
    clinician = ApiClient(stack.api_url + "/api", token=stack.token("demo", "clinician"))
    up = clinician.upload("demo", another_study(high.files))
    state = clinician.wait(up.upload_id, timeout_s=180)
    key = state["study"]["study_key"]
    assert state["study"]["triage_level"] == "HIGH"
    deadline = time.monotonic() + 30
    while clinician.get_study(key).get("alert_state") != "SENT" and time.monotonic() < deadline:
        time.sleep(0.5)
    radiologist = stack.token("demo", "radiologist")
    first = call(stack, "POST", f"/studies/{key}/signoff", radiologist,
                 json={"decision": "disagree", "comment": "ground glass only", "triage_level": "MEDIUM"})
    second = call(stack, "POST", f"/studies/{key}/signoff", radiologist, json={"decision": "agree"})
    read = clinician.get_study(key)  # hands out the result URLs: a read
    return {"key": key, "upload_id": up.upload_id, "first": first, "second": second, "read": read,
            "radiologist": radiologist}


def audit(stack, signed, wait_for: int = 0) -> list[dict]:
    """The study's audit trail once both sign-offs and at least ``wait_for`` events are on it.

    The stream handler writes state, alert and sign-off events a moment after each change, while the
    API records reads at once: a count alone can be reached by reads before the sign-offs land.
    """
    deadline = time.monotonic() + 20
    while True:
        resp = call(stack, "GET", f"/studies/{signed['key']}/audit", signed["radiologist"])
        assert resp.status_code == 200, resp.text
        events = resp.json()["events"]
        signoffs = sum(e["kind"] == "signoff" for e in events)
        if (len(events) >= wait_for and signoffs >= 2) or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_a_radiologist_signs_off_and_every_sign_off_is_kept(stack, signed):
    assert signed["first"].status_code == 201 and signed["second"].status_code == 201
    latest = signed["second"].json()["signoff"]
    assert latest["decision"] == "agree" and latest["user"]
    record = stack.record(signed["key"])
    assert [s["decision"] for s in record["signoffs"]] == ["disagree", "agree"], "the first is kept"
    assert record["signoffs"][0]["triage_level"] == "MEDIUM"


def test_only_a_radiologist_of_the_facility_signs_off(stack, signed):
    key = signed["key"]
    clinician = call(stack, "POST", f"/studies/{key}/signoff", stack.token("demo", "clinician"), json={"decision": "agree"})
    assert clinician.status_code == 403 and clinician.json()["error"] == "role_not_allowed"
    elsewhere = call(stack, "POST", f"/studies/{key}/signoff", stack.token("other", "radiologist"),
                     json={"decision": "agree"})
    assert elsewhere.status_code == 404
    bad = call(stack, "POST", f"/studies/{key}/signoff", signed["radiologist"], json={"decision": "maybe"})
    assert bad.status_code == 400 and bad.json()["error"] == "bad_request"
    assert call(stack, "GET", f"/studies/{key}/audit", stack.token("demo", "clinician")).status_code == 403


def test_the_audit_trail_holds_every_step_in_order_with_actors(stack, signed):
    events = audit(stack, signed, wait_for=9)
    steps = [(e["subject"], e["kind"], e.get("from"), e.get("to")) for e in events]
    expected = [
        ("upload", "state", None, "RECEIVED"),
        ("upload", "state", "RECEIVED", "COMPLETE"),
        ("study", "state", None, "QUEUED"),
        ("study", "state", "QUEUED", "PROCESSING"),
        ("study", "state", "PROCESSING", "DONE"),
        ("study", "alert", None, "SENDING"),
        ("study", "alert", "SENDING", "SENT"),
        ("study", "signoff", None, "disagree"),
        ("study", "signoff", None, "agree"),
        ("study", "read", None, None),
    ]
    it = iter(steps)
    assert all(step in it for step in expected), f"out of order or missing: {steps}"  # a subsequence, in order
    assert ("upload", "state", "COMPLETE", "QUEUED") in steps
    actors = {(e["subject"], e["kind"], e.get("to")): e["actor"] for e in events}
    assert actors[("upload", "state", "RECEIVED")].startswith("user:")
    assert actors[("study", "state", "QUEUED")] == "ingest"
    assert actors[("study", "state", "PROCESSING")].startswith("worker:i-")
    assert actors[("study", "state", "DONE")] == actors[("study", "state", "PROCESSING")]
    assert actors[("study", "alert", "SENT")] == "triage"
    assert actors[("study", "signoff", "agree")].startswith("user:")
    assert actors[("study", "read", None)].startswith("user:")


def test_the_audit_trail_has_no_phi_and_replays_write_nothing(stack, signed):
    audit(stack, signed, wait_for=9)
    table = stack.settings.audit_table.name
    items = stack.clients.dynamodb.scan(TableName=table)["Items"]
    blob = json.dumps(items)
    for value in ("PHANTOM^OPACITIES", "DEMO-0001", "ground glass only"):
        assert value not in blob
    # A stream record delivered again (Lambda retries, at-least-once) adds no event.
    from dispatcher import audit as audit_handler
    from dispatcher.deps import HandlerDeps

    streams = stack.clients.dynamodbstreams
    arn = stack.resources["stream_arn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    records = [{**r, "eventSourceARN": arn} for r in streams.get_records(ShardIterator=it, Limit=100)["Records"]]
    ids = {r["eventID"] for r in records}

    def written() -> list[str]:
        items = stack.clients.dynamodb.scan(TableName=table)["Items"]
        return sorted(i["event_id"]["S"] for i in items if i["event_id"]["S"].rsplit("-", 1)[0] in ids)

    deps = HandlerDeps(stack.clients)
    assert audit_handler.handle({"Records": records}, deps) == {"batchItemFailures": []}
    once = written()
    assert once, "the replayed records are on record"
    assert audit_handler.handle({"Records": records}, deps) == {"batchItemFailures": []}
    assert written() == once, "a replay writes nothing new"
