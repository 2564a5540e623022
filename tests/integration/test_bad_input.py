"""Bad uploads end REJECTED with a reason code: never lost, never retried forever."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from ctfleet.dev.synthetic import series_to_datasets
from ctfleet.intake import dataset_to_bytes, read_dataset
from ctfleet.errors import Forbidden

pytestmark = pytest.mark.integration


def _series(modality: str = "CT", slices: int = 6, **kwargs) -> list[tuple[str, bytes]]:
    hu = np.full((slices, 32, 32), -1000, dtype=np.float32)
    hu[:, 8:24, 8:24] = 40
    datasets = series_to_datasets(hu, (2.5, 1.0, 1.0), modality=modality, patient_name="BAD^INPUT", **kwargs)
    return [(f"IM{i:03d}.dcm", dataset_to_bytes(ds)) for i, ds in enumerate(datasets)]


def _without_pixels() -> list[tuple[str, bytes]]:
    out = []
    for name, data in _series():
        ds = read_dataset(data)
        del ds.PixelData
        out.append((name, dataset_to_bytes(ds)))
    return out


def _two_studies() -> list[tuple[str, bytes]]:
    a = _series(study_instance_uid="1.2.826.0.1.3680043.8.498.1")
    b = [(f"b/{n}", d) for n, d in _series(study_instance_uid="1.2.826.0.1.3680043.8.498.2")]
    return a + b


def _truncated() -> list[tuple[str, bytes]]:
    return [(n, d[: len(d) - 700]) for n, d in _series()]


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ([("report.txt", b"this is not a DICOM file at all")], "not_dicom"),
        ([("empty.dcm", b"")], "empty_upload"),
        (_series("MR"), "not_ct"),
        (_truncated(), "not_dicom"),
        (_without_pixels(), "no_pixel_data"),
        (_two_studies(), "multiple_studies"),
        (_series(extra={"BurnedInAnnotation": "YES"}), "burned_in_annotation"),
        (_series(extra={"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}), "derived_image"),
        (_series(extra={"ConversionType": "WSD"}), "secondary_capture"),
    ],
    ids=["not-dicom", "empty", "mr", "truncated", "no-pixels", "two-studies", "burned-in", "screen-save",
         "secondary-capture"],
)
def test_bad_uploads_are_rejected_with_a_reason(api, stack, files, reason):
    up = api.upload("demo", files)
    state = api.wait(up.upload_id, timeout_s=60)
    assert state["final"]
    assert state["upload"]["status"] == "REJECTED"
    assert state["upload"]["reason"] == reason
    listing = stack.clients.s3.list_objects_v2(Bucket=stack.settings.raw_bucket, Prefix=f"raw/demo/{up.upload_id}/")
    assert listing.get("KeyCount", 0) == 0, "rejected raw uploads are deleted too"


def test_an_upload_with_no_files_is_refused_and_recorded(api):
    resp = api.http.post(f"{api.base}/uploads", json={"facility": "demo", "files": []})
    assert resp.status_code == 400 and resp.json()["error"] == "empty_upload"
    record = api.get_upload(resp.json()["upload_id"])
    assert record["status"] == "REJECTED" and record["reason"] == "empty_upload"


def test_naming_a_facility_other_than_the_token_s_is_refused(api):
    with pytest.raises(Forbidden) as err:
        api.upload("nowhere", [("a.dcm", b"x")])
    assert err.value.reason == "facility_mismatch"


def test_completing_before_every_file_arrived_is_refused(api):
    created = api.http.post(f"{api.base}/uploads", json={
        "facility": "demo", "files": [{"name": "a.dcm", "size": 10, "sha256": "0" * 64},
                                      {"name": "b.dcm", "size": 10, "sha256": "1" * 64}]}).json()
    resp = api.http.post(f"{api.base}/uploads/{created['upload_id']}/complete")
    assert resp.status_code == 409 and resp.json()["error"] == "upload_incomplete"
    assert api.get_upload(created["upload_id"])["status"] == "RECEIVED"


def _upload_raw(api, listing: list[dict], payload: dict[str, bytes], *, complete: bool = True) -> str:
    """The browser's steps by hand, so a test can send what the manifest does not promise."""
    created = api.http.post(f"{api.base}/uploads", json={"facility": "demo", "files": listing}).json()
    for target in created["files"]:
        if target["name"] in payload:
            resp = api.http.post(target["url"], data=target["fields"], files={"file": payload[target["name"]]})
            assert resp.status_code in (200, 201, 204)
    if complete:
        resp = api.http.post(f"{api.base}/uploads/{created['upload_id']}/complete")
        assert resp.status_code == 202, resp.text
    return str(created["upload_id"])


def test_a_file_that_differs_from_its_checksum_is_rejected(api):
    files = _series()
    listing = [{"name": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files]
    listing[2]["sha256"] = hashlib.sha256(b"something else").hexdigest()
    upload_id = _upload_raw(api, listing, dict(files))
    state = api.wait(upload_id, timeout_s=60)
    assert state["upload"]["status"] == "REJECTED" and state["upload"]["reason"] == "checksum_mismatch"


def test_uploads_that_never_complete_expire_as_upload_incomplete(api, stack):
    from dispatcher.deps import HandlerDeps
    from dispatcher.sweeper import sweep

    files = _series()
    listing = [{"name": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files]
    upload_id = _upload_raw(api, listing, dict(files[:3]), complete=False)  # the rest never arrives
    deps = HandlerDeps(stack.clients)
    assert sweep(deps, at=time.time()) == 0, "not yet expired"
    assert api.get_upload(upload_id)["status"] == "RECEIVED"
    assert sweep(deps, at=time.time() + stack.settings.upload_expiry_s + 1) >= 1
    record = api.get_upload(upload_id)
    assert record["status"] == "REJECTED" and record["reason"] == "upload_incomplete"
    listing_after = stack.clients.s3.list_objects_v2(Bucket=stack.settings.raw_bucket, Prefix=f"raw/demo/{upload_id}/")
    assert listing_after.get("KeyCount", 0) == 0, "the partial upload's PHI is deleted"
