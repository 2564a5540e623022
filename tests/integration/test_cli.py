"""The console script as a user runs it: subprocesses, exit codes, last-line JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ctfleet.dev.synthetic import series_to_datasets
from ctfleet.intake import choose_series, dataset_to_bytes, group_series, read_dataset
from ctfleet.intake.files import load_study

pytestmark = pytest.mark.integration

REPORT_KEYS = {"model_version", "shape", "spacing_mm", "lung_volume_ml", "lesion_volume_ml", "involvement_pct",
               "severity_score", "score", "triage_level", "timings_s"}
ZONES = {"right_upper", "right_middle", "right_lower", "left_upper", "left_middle", "left_lower"}


def ctfleet(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CTFLEET_", "AWS_ENDPOINT_URL"))}
    return subprocess.run([sys.executable, "-m", "ctfleet", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def analyzed(real_ct_dir: Path, tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("analyze") / "ct00"
    proc = ctfleet("analyze", str(real_ct_dir), "--out", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1]), proc


def test_analyze_real_ct_writes_labels_report_and_overlays(analyzed):
    out, report, _ = analyzed
    assert REPORT_KEYS <= set(report)
    assert set(report["involvement_pct"]["zones"]) == ZONES
    assert report["shape"] == [141, 512, 512]
    assert report["triage_level"] in ("LOW", "MEDIUM", "HIGH") and 0 <= report["severity_score"] <= 24
    assert json.loads((out / "report.json").read_text())["score"] == report["score"]
    pngs = sorted((out / "overlay").glob("*.png"))
    assert len(pngs) >= 2
    for png in pngs:
        assert Image.open(png).mode == "RGB"


def test_real_ct_lungs_are_plausible(analyzed):
    _, report, _ = analyzed
    lungs = report["lung_volume_ml"]
    assert 3000 <= lungs["total"] <= 8000
    assert 0.7 <= lungs["left"] / lungs["right"] <= 1.1


def test_labels_open_in_nibabel_on_the_dicom_grid(analyzed, real_ct_dir):
    out, _, _ = analyzed
    img = nib.load(str(out / "labels.nii.gz"))
    assert img.shape == (512, 512, 141) and img.get_data_dtype() == np.uint8
    labels = np.asarray(img.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and (labels == 1).sum() > 0
    # Every voxel centre maps to the same RAS point as the DICOM geometry says (LPS -> RAS).
    datasets = [read_dataset(p.read_bytes()) for p in sorted(real_ct_dir.glob("*.dcm"))]
    series = choose_series(group_series(datasets))
    first = series.datasets[0]
    lps = np.array([float(v) for v in first.ImagePositionPatient])
    np.testing.assert_allclose(img.affine[:3, 3], lps * [-1, -1, 1], atol=1e-3)
    dx, dy = float(first.PixelSpacing[1]), float(first.PixelSpacing[0])  # columns, rows
    np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), [dx, dy, 2.0], atol=1e-3)


def test_labels_only_inside_the_body(analyzed, real_ct_dir):
    out, _, _ = analyzed
    labels = np.asarray(nib.load(str(out / "labels.nii.gz")).dataobj).transpose(2, 1, 0)
    volume = load_study(real_ct_dir).volume
    # Lung is air: labelled voxels may be dark, but none may be outside air beyond the body's edge
    # (the first and last 5 columns are outside every patient on this 50 cm field of view).
    assert labels[:, :, :5].max() == 0 and labels[:, :, -5:].max() == 0
    assert volume.hu[labels > 0].mean() < -300  # lungs and lesions, not soft tissue or bone


def _folder_without_dicom(tmp: Path) -> Path:
    (tmp / "notes").mkdir()
    (tmp / "notes" / "a.txt").write_text("not an image")
    return tmp / "notes"


@pytest.mark.parametrize(
    ("make_input", "reason"),
    [(lambda tmp: tmp / "missing", "no_input"), (_folder_without_dicom, "not_dicom")],
    ids=["missing", "no-dicom"],
)
def test_analyze_bad_input_exits_2_with_a_reason(tmp_path, make_input, reason):
    proc = ctfleet("analyze", str(make_input(tmp_path)), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {reason}:")
    assert not (tmp_path / "out").exists(), "a failed command leaves no partial output"


def test_analyze_refuses_to_overwrite_results(tmp_path, real_ct_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    proc = ctfleet("analyze", str(real_ct_dir), "--out", str(out))
    assert proc.returncode == 2 and "output_exists" in proc.stderr
    assert (out / "keep.txt").read_text() == "x"


def test_demo_command_runs_upload_to_alert(tmp_path):
    proc = ctfleet("demo", "--timeout", "300", timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary == {**summary, "studies": 2, "done": 2, "rejected": 0, "failed": 0, "alerts": 1, "lost": 0}
    # The fleet started at zero, grew for the work, and went back to zero after the idle grace.
    assert summary["fleet_peak"] >= 1 and summary["fleet_end"] == 0 and summary["first_result_s"] > 0
    assert "phantom-high: DONE" in proc.stderr and "triage=HIGH ok" in proc.stderr


def test_local_up_serves_the_page_signs_users_in_and_stops_cleanly_on_sigterm(tmp_path):
    import signal
    import urllib.error
    import urllib.request

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CTFLEET_", "AWS_ENDPOINT_URL"))}
    env["CTFLEET_HOME"] = str(tmp_path)  # its own secrets and user-pool state, beside any other local stack
    proc = subprocess.Popen([sys.executable, "-m", "ctfleet", "local", "up", "--port", "0", "--fleet-max", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        urls = json.loads(proc.stdout.readline())  # the first stdout line: where everything is
        assert {"api", "web", "endpoint"} <= set(urls)
        with urllib.request.urlopen(urls["web"], timeout=10) as resp:
            assert resp.status == 200 and b"ctfleet" in resp.read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urls["api"] + "/studies", timeout=10)
        assert refused.value.code == 401 and json.loads(refused.value.read())["error"] == "no_token"
        signed = subprocess.run([sys.executable, "-m", "ctfleet", "local", "token", "--facility", "demo",
                                 "--role", "clinician"], capture_output=True, text=True, env=env, timeout=60)
        assert signed.returncode == 0, signed.stderr
        token = json.loads(signed.stdout.strip().splitlines()[-1])
        assert token["expires_at"] > time.time()
        request = urllib.request.Request(urls["api"] + "/studies", headers={"Authorization": f"Bearer {token['token']}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.loads(resp.read()) == {"studies": []}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "local: stopping" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_analyze_writes_a_dicom_seg_on_request(tmp_path):
    from ctfleet.dev.phantom import from_preset

    phantom = from_preset("high")
    study = tmp_path / "study"
    study.mkdir()
    for i, ds in enumerate(series_to_datasets(phantom.hu, phantom.spacing_mm)):
        (study / f"IM{i:03d}.dcm").write_bytes(dataset_to_bytes(ds))
    proc = ctfleet("analyze", str(study), "--out", str(tmp_path / "out"), "--seg")
    assert proc.returncode == 0, proc.stderr[-2000:]
    import highdicom as hd

    seg = hd.seg.segread(str(tmp_path / "out" / "seg.dcm"))
    labels = np.asarray(nib.load(str(tmp_path / "out" / "labels.nii.gz")).dataobj).transpose(2, 1, 0)
    assert len(seg.SegmentSequence) == 3
    # One frame per (segment, slice) where that label is present: empty frames are omitted.
    expected_frames = sum(int((labels == v).any(axis=(1, 2)).sum()) for v in (1, 2, 3))
    assert int(seg.NumberOfFrames) == expected_frames
    assert "HIGH" in proc.stdout
