"""Handler-level tests: the real handlers, fed recorded events, against a real moto server over HTTP."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from aws_server import moto_stack
from ctfleet.contracts import JobMessage, Manifest, ManifestFile, Reason, Status, UploadStatus, raw_key, raw_prefix
from ctfleet.dev.phantom import from_preset
from ctfleet.dev.synthetic import series_to_datasets
from ctfleet.intake import dataset_to_bytes
from ctfleet.settings import Settings
from dispatcher import api, ingest, sweeper, triage

EVENTS = Path(__file__).resolve().parents[1] / "events"
RECORDED_UPLOAD = "0123456789abcdef0123456789abcdef"  # the upload of sqs_s3_manifest_created.json


def load(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture(scope="module")
def stack():
    # Stack name "ctfleet": its raw bucket is the recorded event's ``ctfleet-raw``.
    with moto_stack(Settings(stack="ctfleet", facilities=("demo", "other"))) as s:
        yield s


@pytest.fixture(scope="module")
def series() -> list[tuple[str, bytes]]:
    p = from_preset("clean")
    datasets = series_to_datasets(p.hu[::4], (p.spacing_mm[0] * 4, *p.spacing_mm[1:]),
                                  patient_name="HANDLER^TEST", patient_id="H-1", study_date="20260101")
    return [(f"IM{i:04d}.dcm", dataset_to_bytes(ds)) for i, ds in enumerate(datasets)]


def claims(facility: str = "demo", role: str = "clinician", sub: str = "0b1c-user") -> dict:
    """A verified token's claims as API Gateway's JWT authorizer passes them on (strings; lists as "[a b]")."""
    return {"sub": sub, "token_use": "access", "client_id": "client", "cognito:groups": f"[facility:{facility} role:{role}]"}


def http(method: str, path: str, body: dict | None = None, *, who: dict | None = None) -> dict:
    return {"version": "2.0", "rawPath": path,
            "requestContext": {"http": {"method": method, "path": path},
                               "authorizer": {"jwt": {"claims": claims() if who is None else who}}},
            "body": json.dumps(body) if body is not None else None, "isBase64Encoded": False}


def listing(files: list[tuple[str, bytes]]) -> list[dict]:
    return [{"name": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files]


def seed_upload(stack, upload_id: str, files: list[tuple[str, bytes]], *, facility: str = "demo") -> None:
    """What the API and the uploader leave behind once an upload is complete."""
    deps = stack.deps
    deps.uploads.create(upload_id, facility, "urgent", files=len(files), size_bytes=sum(len(b) for _, b in files),
                        created=time.time(), expires_at=int(time.time()) + 3600)
    for name, blob in files:
        deps.raw.put(raw_key(facility, upload_id, name), blob)
    manifest = Manifest(upload_id, facility, "urgent", tuple(ManifestFile(**f) for f in listing(files)), time.time())
    deps.raw.put(raw_key(facility, upload_id, "manifest.json"), manifest.to_json().encode())


def jobs(stack) -> list[JobMessage]:
    queue = stack.deps.queue(stack.settings.urgent_queue.name)
    out = []
    while messages := queue.receive(max_messages=10):
        for m in messages:
            out.append(JobMessage.from_json(m["Body"]))
            queue.delete(m["ReceiptHandle"])
    return out


def test_api_creates_an_upload_refuses_to_complete_it_early_then_completes_it(stack, series):
    files = series[:3]
    created = api.handle(http("POST", "/uploads", {"facility": "demo", "files": listing(files)}), stack.deps)
    assert created["statusCode"] == 201, created
    body = json.loads(created["body"])
    upload_id = body["upload_id"]
    assert [f["name"] for f in body["files"]] == [n for n, _ in files]
    complete = http("POST", f"/uploads/{upload_id}/complete")
    early = api.handle(complete, stack.deps)
    assert early["statusCode"] == 409 and json.loads(early["body"])["error"] == Reason.UPLOAD_INCOMPLETE
    for name, blob in files:  # moto does not enforce the presigned POST: the files go in directly
        stack.deps.raw.put(raw_key("demo", upload_id, name), blob)
    done = api.handle(complete, stack.deps)
    assert done["statusCode"] == 202 and json.loads(done["body"])["status"] == UploadStatus.COMPLETE
    assert "manifest.json" in stack.deps.raw.sizes(raw_prefix("demo", upload_id))
    again = api.handle(complete, stack.deps)
    assert again["statusCode"] == 202 and json.loads(again["body"])["status"] == UploadStatus.COMPLETE


def test_api_renews_the_urls_of_the_files_s3_lacks_until_the_upload_is_completed(stack, series):
    files = series[:3]
    created = json.loads(api.handle(http("POST", "/uploads", {"files": listing(files)}), stack.deps)["body"])
    upload_id = created["upload_id"]
    stack.deps.raw.put(raw_key("demo", upload_id, files[0][0]), files[0][1])
    stack.deps.raw.put(raw_key("demo", upload_id, files[1][0]), files[1][1][:10])  # cut short on the way
    renewed = api.handle(http("POST", f"/uploads/{upload_id}/urls"), stack.deps)
    assert renewed["statusCode"] == 200
    body = json.loads(renewed["body"])
    assert [f["name"] for f in body["files"]] == [files[1][0], files[2][0]] and body["promised"] == 3
    assert all(f["url"] and f["fields"]["key"].endswith(f["name"]) for f in body["files"])
    elsewhere = api.handle(http("POST", f"/uploads/{upload_id}/urls", who=claims("other")), stack.deps)
    assert elsewhere["statusCode"] == 404
    finance = api.handle(http("POST", f"/uploads/{upload_id}/urls", who=claims(role="finance")), stack.deps)
    assert finance["statusCode"] == 403
    for name, blob in files[1:]:
        stack.deps.raw.put(raw_key("demo", upload_id, name), blob)
    assert api.handle(http("POST", f"/uploads/{upload_id}/complete"), stack.deps)["statusCode"] == 202
    after = api.handle(http("POST", f"/uploads/{upload_id}/urls"), stack.deps)
    assert after["statusCode"] == 409 and json.loads(after["body"])["error"] == Reason.CONFLICT


@pytest.mark.parametrize("method, path, status, reason", [
    ("GET", "/nowhere", 404, Reason.NOT_FOUND),
    ("DELETE", "/uploads", 404, Reason.NOT_FOUND),
    ("GET", f"/uploads/{'f' * 32}", 404, Reason.NOT_FOUND),
    ("GET", f"/studies/{'e' * 24}", 404, Reason.NOT_FOUND),
    ("GET", "/studies?facility=elsewhere", 403, Reason.FACILITY_MISMATCH),
])
def test_api_errors_carry_a_reason_code(stack, method, path, status, reason):
    event = http(method, path.split("?")[0])
    if "?" in path:
        event["queryStringParameters"] = dict([path.split("?")[1].split("=")])
    out = api.handle(event, stack.deps)
    assert out["statusCode"] == status and json.loads(out["body"])["error"] == reason


@pytest.mark.parametrize("who, status, reason", [
    ({}, 401, Reason.NO_TOKEN),
    (claims(role="finance"), 403, Reason.ROLE_NOT_ALLOWED),
    ({"sub": "u", "cognito:groups": "[role:clinician]"}, 403, Reason.NO_FACILITY),
    ({"sub": "u", "cognito:groups": "[facility:demo facility:other role:clinician]"}, 403, Reason.NO_FACILITY),
    ({"sub": "u", "cognito:groups": "[facility:elsewhere role:clinician]"}, 403, Reason.NO_FACILITY),
    ({"sub": "u", "cognito:groups": "[facility:demo]"}, 403, Reason.ROLE_NOT_ALLOWED),
])
def test_api_refuses_callers_without_a_facility_and_a_role_with_the_right(stack, who, status, reason):
    out = api.handle(http("GET", "/studies", who=who), stack.deps)
    assert out["statusCode"] == status and json.loads(out["body"])["error"] == reason


def test_api_takes_the_facility_from_the_token_and_hides_other_facilities(stack, series):
    files = series[:1]
    named = api.handle(http("POST", "/uploads", {"facility": "other", "files": listing(files)}), stack.deps)
    assert named["statusCode"] == 403 and json.loads(named["body"])["error"] == Reason.FACILITY_MISMATCH
    created = api.handle(http("POST", "/uploads", {"files": listing(files)}, who=claims("other")), stack.deps)
    upload_id = json.loads(created["body"])["upload_id"]
    assert stack.deps.uploads.get(upload_id)["facility"] == "other", "the token's facility, from no body"
    for method, path in (("GET", f"/uploads/{upload_id}"), ("POST", f"/uploads/{upload_id}/complete")):
        mine = api.handle(http(method, path, who=claims("other")), stack.deps)
        theirs = api.handle(http(method, path), stack.deps)  # a demo clinician
        assert mine["statusCode"] in (200, 409) and theirs["statusCode"] == 404, (method, path)
        assert json.loads(theirs["body"])["error"] == Reason.NOT_FOUND


def test_api_it_may_send_backfill_only_and_sees_no_findings(stack, series):
    it = claims(role="it")
    urgent = api.handle(http("POST", "/uploads", {"priority": "urgent", "files": listing(series[:1])}, who=it),
                        stack.deps)
    assert urgent["statusCode"] == 403 and json.loads(urgent["body"])["error"] == Reason.ROLE_NOT_ALLOWED
    default = api.handle(http("POST", "/uploads", {"files": listing(series[:1])}, who=it), stack.deps)
    assert default["statusCode"] == 201
    assert stack.deps.uploads.get(json.loads(default["body"])["upload_id"])["priority"] == "backfill"


@pytest.mark.parametrize("files, reason", [
    ([{"name": "a.dcm", "size": "10", "sha256": "0" * 64}], Reason.BAD_REQUEST),  # a size that is a string
    ([{"name": "a.dcm", "size": True, "sha256": "0" * 64}], Reason.BAD_REQUEST),
    ([{"name": "a.dcm", "size": 1.5, "sha256": "0" * 64}], Reason.BAD_REQUEST),
    ([{"name": 12, "size": 1, "sha256": "0" * 64}], Reason.BAD_FILE_NAME),
    ([{"name": "a\\b.dcm", "size": 1, "sha256": "0" * 64}], Reason.BAD_FILE_NAME),
    ([{"name": "x" * 1100, "size": 1, "sha256": "0" * 64}], Reason.BAD_FILE_NAME),  # an S3 key over 1,024 bytes
    (["a.dcm"], Reason.BAD_REQUEST),
    ([{"name": f"{i}.dcm", "size": 1, "sha256": "0" * 64} for i in range(20_001)], Reason.UPLOAD_TOO_LARGE),
    ([{"name": f"{i}.dcm", "size": 2 * 1024**3, "sha256": "0" * 64} for i in range(9)], Reason.UPLOAD_TOO_LARGE),
])
def test_api_refuses_what_no_upload_may_declare(stack, files, reason):
    out = api.handle(http("POST", "/uploads", {"files": files}), stack.deps)
    assert out["statusCode"] == 400 and json.loads(out["body"])["error"] == reason


def test_api_limits_the_uploads_a_facility_holds_open(stack):
    from dataclasses import replace as with_settings

    from ctfleet.aws.clients import Clients
    from dispatcher.deps import HandlerDeps

    tight = HandlerDeps(Clients(with_settings(stack.settings, uploads_open_max=3)))
    listing_ = [{"name": "a.dcm", "size": 1, "sha256": "0" * 64}]
    lonely = claims("other", sub="open-limit")
    codes = []
    for _ in range(6):  # "other" holds a few open uploads from other tests too: the limit is reached below 6
        codes.append(api.handle(http("POST", "/uploads", {"files": listing_}, who=lonely), tight)["statusCode"])
    assert codes[-1] == 429 and 201 in codes
    out = api.handle(http("POST", "/uploads", {"files": listing_}, who=lonely), tight)
    assert json.loads(out["body"])["error"] == Reason.TOO_MANY_OPEN_UPLOADS
    assert api.handle(http("POST", "/uploads", {"files": listing_}), tight)["statusCode"] == 201, "per facility"


def test_a_file_sent_after_its_upload_ended_is_deleted_by_ingest_and_the_sweeper(stack, series):
    upload_id = "4" * 32
    seed_upload(stack, upload_id, series[:2])
    stack.deps.uploads.finish(upload_id, UploadStatus.REJECTED, reason=Reason.NOT_CT)
    late = raw_key("demo", upload_id, "IM0000.dcm")  # a presigned POST used again after ingest
    assert ingest.ingest_upload(stack.deps, stack.settings.raw_bucket, late) == UploadStatus.REJECTED
    assert "IM0000.dcm" not in stack.deps.raw.sizes(raw_prefix("demo", upload_id))
    # Ingest missed one (its event lost): the sweeper's pass over raw/ catches what is left.
    assert stack.deps.raw.sizes(raw_prefix("demo", upload_id)), "the other file and the manifest are still there"
    assert sweeper.sweep_raw(stack.deps) >= 1
    assert stack.deps.raw.sizes(raw_prefix("demo", upload_id)) == {}
    # An open upload's files are kept.
    open_id = "5" * 32
    seed_upload(stack, open_id, series[:1])
    assert ingest.ingest_upload(stack.deps, stack.settings.raw_bucket, raw_key("demo", open_id, "IM0000.dcm")) \
        == ingest.IGNORED
    sweeper.sweep_raw(stack.deps)
    assert "IM0000.dcm" in stack.deps.raw.sizes(raw_prefix("demo", open_id))


def test_api_records_an_empty_upload_as_rejected(stack):
    out = api.handle(http("POST", "/uploads", {"facility": "demo", "files": []}), stack.deps)
    body = json.loads(out["body"])
    assert out["statusCode"] == 400 and body["error"] == Reason.EMPTY_UPLOAD
    record = stack.deps.uploads.get(body["upload_id"])
    assert record["status"] == UploadStatus.REJECTED and record["reason"] == Reason.EMPTY_UPLOAD


def test_ingest_turns_the_recorded_event_into_one_job_and_deletes_the_phi(stack, series):
    seed_upload(stack, RECORDED_UPLOAD, series)
    event = load("sqs_s3_manifest_created.json")  # S3's test event, then the manifest's ObjectCreated
    assert ingest.handle(event, stack.deps) == {"batchItemFailures": []}
    upload = stack.deps.uploads.get(RECORDED_UPLOAD)
    assert upload["status"] == UploadStatus.QUEUED
    study = stack.deps.studies.get(upload["study_key"])
    assert study["status"] == Status.QUEUED and study["slices"] == len(series)
    [job] = jobs(stack)
    assert job.study_key == upload["study_key"] and job.job_id == study["job_id"] and job.slice_count == len(series)
    assert stack.deps.raw.sizes(raw_prefix("demo", RECORDED_UPLOAD)) == {}, "raw objects (PHI) deleted"
    stored = stack.deps.studies_objects.get(job.object_keys[0])
    assert b"HANDLER^TEST" not in stored and b"H-1" not in stored
    # The same event again (SQS delivers at least once): nothing new is queued.
    assert ingest.handle(event, stack.deps) == {"batchItemFailures": []}
    assert jobs(stack) == []


def test_ingest_records_a_bad_upload_as_rejected_with_its_reason(stack, series):
    upload_id = "1" * 32
    seed_upload(stack, upload_id, [("notes.txt", b"not a DICOM file at all")])
    key = raw_key("demo", upload_id, "manifest.json")
    body = json.dumps({"Records": [{"s3": {"bucket": {"name": stack.settings.raw_bucket}, "object": {"key": key}}}]})
    assert ingest.handle({"Records": [{"messageId": "m", "body": body}]}, stack.deps) == {"batchItemFailures": []}
    record = stack.deps.uploads.get(upload_id)
    assert record["status"] == UploadStatus.REJECTED and record["reason"] == Reason.NOT_DICOM
    assert stack.deps.raw.sizes(raw_prefix("demo", upload_id)) == {}


def test_triage_sends_one_alert_for_the_recorded_stream(stack):
    event = load("dynamodb_stream_study_done_high.json")
    done = event["Records"][1]["dynamodb"]["NewImage"]
    stack.clients.dynamodb.put_item(TableName=stack.settings.studies_table.name, Item=done)
    assert triage.handle(event, stack.deps) == {"batchItemFailures": []}
    [alert] = stack.alerts()
    body = json.loads(alert)
    assert body["study_key"] == done["study_key"]["S"] and body["triage_level"] == "HIGH"
    assert body["link"] == f"https://ctfleet.example/#/studies/{done['study_key']['S']}"
    assert stack.deps.studies.get(done["study_key"]["S"])["alert_state"] == "SENT"
    # A replayed stream batch alerts nobody a second time.
    assert triage.handle(event, stack.deps) == {"batchItemFailures": []}
    assert stack.alerts() == []


def test_sweeper_expires_an_upload_that_never_completed(stack, series):
    upload_id = "2" * 32
    stack.deps.uploads.create(upload_id, "demo", "urgent", files=1, size_bytes=10, created=time.time() - 10,
                              expires_at=int(time.time()))
    stack.deps.raw.put(raw_key("demo", upload_id, "IM0000.dcm"), series[0][1])
    assert sweeper.sweep(stack.deps, at=time.time()) == 0, "not yet expired"
    # (other tests of this module leave open uploads too: they expire with it)
    assert sweeper.sweep(stack.deps, at=time.time() + stack.settings.upload_expiry_s) >= 1
    record = stack.deps.uploads.get(upload_id)
    assert record["status"] == UploadStatus.REJECTED and record["reason"] == Reason.UPLOAD_INCOMPLETE
    assert stack.deps.raw.sizes(raw_prefix("demo", upload_id)) == {}
    out = sweeper.handle({}, stack.deps)
    assert out == {"expired": 0, "leftovers": 0, "alerts_retried": 0, "dead_letters": 0}


def test_api_serves_finance_its_facility_s_cost_of_a_month(stack):
    """Known ledger seconds and prices in the tables; finance sees its facility's share only."""
    from decimal import Decimal

    deps = stack.deps
    month = "2031-05"  # a month of its own in this shared stack
    at = 1937000000.0  # 2031-05-19 (UTC)
    deps.ledger.put({"instance_id": "i-cost-1", "month": month, "price_per_hour_usd": Decimal("0.526"),
                     "boot_s": Decimal(60), "busy_s": Decimal(500), "idle_s": Decimal(100), "interrupted_s": Decimal(0)})
    for key, facility in (("c0st0001", "demo"), ("c0st0002", "other")):
        deps.studies.table.put({"study_key": key, "facility": facility, "status": Status.DONE, "done_at": Decimal(at),
                                "gpu_seconds": Decimal(200), "cost_usd": Decimal("0.029222222"),
                                "created_at": Decimal(at)})
    finance = claims(role="finance")
    answer = api.handle(http("GET", "/cost", who=finance) | {"queryStringParameters": {"month": month, "by": "study"}},
                        deps)
    assert answer["statusCode"] == 200, answer
    body = json.loads(answer["body"])
    assert [r["study_key"] for r in body["rows"]] == ["c0st0001"] and "fleet_usd" not in body
    # 660 s at 0.526 USD/h = 0.096433333, shared equally by two studies of equal direct cost.
    assert Decimal(body["total_loaded_usd"]) == pytest.approx(Decimal("0.0482166665"), abs=Decimal("1e-9"))
    clinician = api.handle(http("GET", "/cost") | {"queryStringParameters": {"month": month}}, deps)
    assert clinician["statusCode"] == 403
    bad = api.handle(http("GET", "/cost", who=finance) | {"queryStringParameters": {"month": "May"}}, deps)
    assert bad["statusCode"] == 400
