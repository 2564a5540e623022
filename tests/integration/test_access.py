"""Who may do what, over real HTTP against the local stack with moto's Cognito: facility isolation
(another facility's things answer 404), roles (403), tokens (401) and malformed requests (400)."""

from __future__ import annotations

import base64
import json
import socket

import pytest
import requests

from ctfleet.cli.client import ApiClient
from ctfleet.dev.phantom import from_preset
from ctfleet.dev.synthetic import series_to_datasets
from ctfleet.intake import dataset_to_bytes

pytestmark = pytest.mark.integration

INTERNAL = {"job", "job_id", "upload_id", "worker_instance", "result_keys", "result_prefix", "lease_until",
            "failures", "alert_claimed_at", "gpu_seconds", "cost_usd", "timings_s", "instance_type"}


def small_study(seed: int) -> list[tuple[str, bytes]]:
    p = from_preset("clean", seed=seed)
    datasets = series_to_datasets(p.hu[::2], (p.spacing_mm[0] * 2, *p.spacing_mm[1:]), patient_id=f"ACCESS-{seed}")
    return [(f"IM{i:04d}.dcm", dataset_to_bytes(ds)) for i, ds in enumerate(datasets)]


def client(stack, facility: str, role: str) -> ApiClient:
    return ApiClient(stack.api_url + "/api", token=stack.token(facility, role))


@pytest.fixture(scope="module")
def theirs(stack):
    """Facility "other": one study DONE, one upload still open."""
    other = client(stack, "other", "clinician")
    done = other.upload("other", small_study(700))
    state = other.wait(done.upload_id, timeout_s=180)
    assert state["study"]["status"] == "DONE", state
    open_upload = other.send("other", small_study(701))
    return {"upload_id": done.upload_id, "study_key": state["study"]["study_key"], "open": open_upload.upload_id}


def call(stack, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, f"{stack.api_url}/api{path}", headers=headers, timeout=30, **kw)


def routes(theirs) -> list[tuple[str, str]]:
    return [("POST", "/uploads"), ("POST", f"/uploads/{theirs['open']}/complete"),
            ("GET", f"/uploads/{theirs['upload_id']}"), ("GET", "/studies"), ("GET", f"/studies/{theirs['study_key']}"),
            ("POST", f"/studies/{theirs['study_key']}/signoff"), ("GET", f"/studies/{theirs['study_key']}/audit")]


def test_another_facility_sees_nothing_of_theirs(stack, theirs):
    demo = stack.token("demo", "radiologist")
    for method, path in routes(theirs)[1:3] + routes(theirs)[4:]:
        resp = call(stack, method, path, demo, json={"decision": "agree"} if method == "POST" else None)
        assert resp.status_code == 404 and resp.json()["error"] == "not_found", (method, path, resp.text)
    listed = call(stack, "GET", "/studies", demo).json()["studies"]
    assert theirs["study_key"] not in {s["study_key"] for s in listed}
    # Naming their facility in the request is refused outright.
    named = call(stack, "GET", "/studies?facility=other", demo)
    assert named.status_code == 403 and named.json()["error"] == "facility_mismatch"
    body = {"facility": "other", "files": [{"name": "a.dcm", "size": 1, "sha256": "0" * 64}]}
    posted = call(stack, "POST", "/uploads", demo, json=body)
    assert posted.status_code == 403 and posted.json()["error"] == "facility_mismatch"
    # Their own clinician still completes their upload: the 404s above were isolation, not absence.
    assert call(stack, "GET", f"/uploads/{theirs['upload_id']}", stack.token("other", "clinician")).status_code == 200


def test_no_token_or_a_bad_one_is_401_on_every_route(stack, theirs):
    good = stack.token("other", "clinician")
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["cognito:groups"] = ["facility:demo", "role:radiologist"]  # a forged promotion
    forged = ".".join([header, base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode(), signature])
    for method, path in routes(theirs):
        for token, reason in ((None, "no_token"), ("garbage", "token_malformed"), (forged, "bad_signature")):
            resp = call(stack, method, path, token)
            assert resp.status_code == 401 and resp.json()["error"] == reason, (method, path, reason, resp.text)


def test_a_role_without_the_right_is_403(stack, theirs):
    finance = stack.token("other", "finance")
    for method, path in routes(theirs):
        resp = call(stack, method, path, finance, json={"files": []} if method == "POST" else None)
        assert resp.status_code == 403 and resp.json()["error"] == "role_not_allowed", (method, path)
    it = stack.token("other", "it")
    body = {"priority": "urgent", "files": [{"name": "a.dcm", "size": 1, "sha256": "0" * 64}]}
    urgent = call(stack, "POST", "/uploads", it, json=body)
    assert urgent.status_code == 403 and urgent.json()["error"] == "role_not_allowed"


def test_each_role_sees_only_its_fields(stack, theirs):
    key = theirs["study_key"]
    clinician = call(stack, "GET", f"/studies/{key}", stack.token("other", "clinician")).json()
    assert clinician["triage_level"] and clinician["result_urls"] and not INTERNAL & set(clinician)
    it = call(stack, "GET", f"/studies/{key}", stack.token("other", "it")).json()
    # IT sees where the study is and its triage (for the hospital's manifest), no findings or images.
    assert it["status"] == "DONE" and it["triage_level"] == clinician["triage_level"] and "score" in it
    assert not {"flags", "lesion_volume_ml", "involvement_pct", "result_urls", "signoff"} & set(it)
    assert not INTERNAL & set(it)
    upload = call(stack, "GET", f"/uploads/{theirs['upload_id']}", stack.token("other", "it")).json()
    assert upload["study_key"] == key and not INTERNAL - {"upload_id"} & set(upload)


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "bad_request"),
    (b"\xff\xfe{}", "bad_request"),  # not UTF-8
    (b"[" * 100_000 + b"]" * 100_000, "bad_request"),  # nested past any parser's recursion limit
    (b'["a list"]', "bad_request"),
    (b'{"files": "not a list"}', "bad_request"),
])
def test_malformed_bodies_are_400_with_a_reason(stack, body, reason):
    resp = requests.post(f"{stack.api_url}/api/uploads", data=body, timeout=30,
                         headers={"Authorization": f"Bearer {stack.token('demo', 'clinician')}",
                                  "Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"] == reason, resp.text[:200]


def raw_request(stack, head: str, body: bytes = b"", timeout_s: float = 30.0) -> bytes:
    host, port = stack.api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_the_door_refuses_bad_lengths_and_huge_bodies_without_reading_them(stack):
    token = stack.token("demo", "clinician")
    for length, status in (("-1", b" 400 "), ("abc", b" 400 "), (str(200 * 1024 * 1024), b" 413 ")):
        head = (f"POST /api/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Length: {length}\r\n")
        answer = raw_request(stack, head)  # nothing of the declared body is ever sent
        assert status in answer.split(b"\r\n", 1)[0], answer[:200]


def test_a_client_that_never_sends_its_body_is_cut_off(stack):
    head = "POST /api/uploads HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
    answer = raw_request(stack, head, timeout_s=60.0)  # the server closes the connection; recv returns
    assert b" 200 " not in answer.split(b"\r\n", 1)[0]
