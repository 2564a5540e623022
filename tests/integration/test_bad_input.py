"""Bad uploads end REJECTED with a reason code: never lost, never retried forever."""

from __future__ import annotations

import numpy as np
import pytest

from ctfleet import dicom
from ctfleet.errors import BadInput

pytestmark = pytest.mark.integration


def _series(modality: str = "CT", slices: int = 6) -> list[tuple[str, bytes]]:
    hu = np.full((slices, 32, 32), -1000, dtype=np.float32)
    hu[:, 8:24, 8:24] = 40
    datasets = dicom.series_to_datasets(hu, (2.5, 1.0, 1.0), modality=modality, patient_name="BAD^INPUT")
    return [(f"IM{i:03d}.dcm", dicom.dataset_to_bytes(ds)) for i, ds in enumerate(datasets)]


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ([("report.txt", b"this is not a DICOM file at all")], "not_dicom"),
        ([("empty.dcm", b"")], "empty_upload"),
        (_series("MR"), "not_ct"),
    ],
    ids=["not-dicom", "empty", "mr"],
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


def test_unknown_facility_is_refused(api):
    with pytest.raises(BadInput) as err:
        api.upload("nowhere", [("a.dcm", b"x")])
    assert err.value.reason == "unknown_facility"


def test_completing_before_every_file_arrived_is_refused(api):
    created = api.http.post(f"{api.base}/uploads", json={
        "facility": "demo", "files": [{"name": "a.dcm", "size": 10}, {"name": "b.dcm", "size": 10}]}).json()
    resp = api.http.post(f"{api.base}/uploads/{created['upload_id']}/complete")
    assert resp.status_code == 409 and resp.json()["error"] == "upload_incomplete"
    assert api.get_upload(created["upload_id"])["status"] == "RECEIVED"
