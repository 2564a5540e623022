"""Upload -> ingest -> worker -> results -> alert, over HTTP against the local stack."""

from __future__ import annotations

import gzip
import io
import json

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ctfleet.intake import read_dataset
from ctfleet.local.demo import phantom_studies

pytestmark = pytest.mark.integration

REPORT_KEYS = {"model_version", "shape", "spacing_mm", "lung_volume_ml", "lesion_volume_ml", "involvement_pct",
               "severity_score", "score", "triage_level", "timings_s"}


@pytest.fixture(scope="module")
def phantoms():
    return {s.label: s for s in phantom_studies()}


@pytest.fixture(scope="module")
def finished(stack, api, phantoms):
    """Both phantoms sent through the stack once; their final states and the alerts."""
    uploads = {label: api.upload("demo", s.files) for label, s in phantoms.items()}
    states = {label: api.wait(up.upload_id, timeout_s=180) for label, up in uploads.items()}
    alerts = []
    for _ in range(6):  # alerts arrive through the stream poller and SNS -> SQS
        alerts += stack.drain_alerts(wait_s=1)
    return {"uploads": uploads, "states": states, "alerts": alerts}


def test_phantoms_reach_done_with_the_expected_triage(stack, finished, phantoms):
    for label, state in finished["states"].items():
        assert state["final"], f"{label} never reached a final state: {state}"
        shown = state["study"]
        assert not {"job", "upload_id", "worker_instance", "result_keys", "result_prefix"} & set(shown)
        record = stack.record(shown["study_key"])
        assert record["status"] == "DONE", record
        assert record["triage_level"] == phantoms[label].expect
        assert 0.0 <= record["score"] <= 1.0 and 0 <= record["severity_score"] <= 24
        assert record["attempts"] == 1
        assert record["gpu_seconds"] > 0 and record["cost_usd"] > 0
        for stage in ("ingest_download", "ingest_deidentify", "worker_queue_wait", "worker_download", "worker_decode", "worker_analyze", "worker_upload"):
            assert stage in record["timings_s"], stage


def test_results_are_in_s3_and_readable(stack, finished):
    s3 = stack.clients.s3
    for state in finished["states"].values():
        record = stack.record(state["study"]["study_key"])
        names = {k[len(record["result_prefix"]):] for k in record["result_keys"]}
        assert {"labels.nii.gz", "report.json", "seg.dcm"} <= names
        assert any(n.startswith("overlay/") and n.endswith(".png") for n in names)
        get = lambda name: s3.get_object(Bucket=stack.settings.results_bucket,  # noqa: E731
                                         Key=record["result_prefix"] + name)["Body"].read()
        report = json.loads(get("report.json"))
        assert REPORT_KEYS <= set(report)
        assert report["triage_level"] == record["triage_level"]
        img = nib.Nifti1Image.from_bytes(gzip.decompress(get("labels.nii.gz")))
        z, y, x = report["shape"]
        assert img.shape == (x, y, z) and img.get_data_dtype() == np.uint8
        labels = np.asarray(img.dataobj)
        assert set(np.unique(labels)) <= {0, 1, 2, 3}
        seg = hd.seg.segread(io.BytesIO(get("seg.dcm")))
        assert seg.PatientIdentityRemoved == "YES"
        assert len(seg.SegmentSequence) == 3
        for name in names:
            if name.endswith(".png"):
                assert Image.open(io.BytesIO(get(name))).size[0] > 16


def test_the_high_phantom_alerts_exactly_once(finished):
    high_key = finished["states"]["phantom-high"]["study"]["study_key"]
    clean_key = finished["states"]["phantom-clean"]["study"]["study_key"]
    keys = [a["study_key"] for a in finished["alerts"]]
    assert keys.count(high_key) == 1
    assert clean_key not in keys
    alert = next(a for a in finished["alerts"] if a["study_key"] == high_key)
    assert alert["triage_level"] == "HIGH" and alert["link"].endswith(high_key)


def test_raw_uploads_are_deleted_after_ingest(stack, finished):
    for up in finished["uploads"].values():
        listing = stack.clients.s3.list_objects_v2(Bucket=stack.settings.raw_bucket,
                                                   Prefix=f"raw/demo/{up.upload_id}/")
        assert listing.get("KeyCount", 0) == 0


def test_no_phi_past_ingest(stack, finished, phantoms, worker_log):
    """The phantoms' names, ids and UIDs appear nowhere outside raw/: not in S3, records, alerts or logs."""
    planted: set[bytes] = set()
    for study in phantoms.values():
        ds = read_dataset(study.files[0][1])
        planted |= {str(ds.PatientName).encode(), str(ds.PatientID).encode(),
                    str(ds.StudyInstanceUID).encode(), str(ds.SeriesInstanceUID).encode()}
        planted |= {read_dataset(b).SOPInstanceUID.encode() for _, b in study.files[:3]}
    planted.discard(b"")
    s3 = stack.clients.s3
    blobs = []
    for bucket in (stack.settings.studies_bucket, stack.settings.results_bucket):
        for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            blobs.append(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
            blobs.append(obj["Key"].encode())
    for spec in stack.settings.tables:
        blobs.append(json.dumps(stack.clients.dynamodb.scan(TableName=spec.name)["Items"]).encode())
    blobs.append(json.dumps(finished["alerts"]).encode())
    blobs.append(worker_log.read_bytes())
    assert len(blobs) > 10
    for value in planted:
        assert not any(value in blob for blob in blobs), f"PHI value leaked: {value[:8]!r}..."


def test_the_same_upload_twice_gives_one_study_and_one_job(stack, api, phantoms, finished):
    first = stack.record(finished["states"]["phantom-clean"]["study"]["study_key"])
    again = api.upload("demo", phantoms["phantom-clean"].files)
    state = api.wait(again.upload_id, timeout_s=60)
    assert state["upload"]["status"] == "QUEUED"
    assert state["upload"]["study_key"] == first["study_key"]
    record = stack.record(first["study_key"])
    assert record["job_id"] == first["job_id"] and record["attempts"] == 1
    assert record["status"] == "DONE"
