"""Outside checks: what ctfleet writes for others passes validators it did not write.

dicom3tools' ``dciodvfy`` (each file against its IOD) and ``dcentvfy`` (the entities across a
series), and dcmtk's ``dcmftest`` (a Part 10 file), on de-identified output of a series
with the faults real archives have (SOP UIDs only in the file meta, a negative
SpacingBetweenSlices, an empty FrameOfReferenceUID), on the real CT, and on the SEG: no
error that de-identification introduced or left in a UID; the SEG without any error.
``make test`` installs the Debian packages (``make dicom-tools``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ctfleet.cli.deid import run
from ctfleet.dev.phantom import chest_phantom
from ctfleet.dev.synthetic import series_to_datasets
from ctfleet.intake import dataset_to_bytes, read_dataset
from ctfleet.results.seg import make_seg

TOOLS = ("dciodvfy", "dcentvfy", "dcmftest")
pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS),
                                reason="needs dicom3tools and dcmtk: make dicom-tools")
SECRET = b"v" * 32


def errors(path: Path) -> set[str]:
    """dciodvfy's error lines for one file (warnings are advice, not faults)."""
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return {line.strip() for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")}


def messy_series(folder: Path, n: int = 8) -> list[Path]:
    folder.mkdir(parents=True)
    hu = chest_phantom((n, 64, 64), (5.0, 5.0, 5.0), seed=5).hu
    paths = []
    for i, ds in enumerate(series_to_datasets(hu, (5.0, 5.0, 5.0), patient_name="Doe^Jane", patient_id="MRN7",
                                              study_date="20260301")):
        if i % 2 == 0:
            ds.SOPInstanceUID = ""  # only the file meta names it
        ds.SpacingBetweenSlices = "-5.0"  # signed, along the table
        ds.FrameOfReferenceUID = ""
        paths.append(folder / f"IM{i:02d}.dcm")
        paths[-1].write_bytes(dataset_to_bytes(ds))
    return paths


def test_deid_output_has_no_error_deid_introduced_and_no_uid_error(tmp_path):
    sources = messy_series(tmp_path / "in")
    run(tmp_path / "in", tmp_path / "out", "north", SECRET)
    outputs = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(outputs) == len(sources)
    before = set().union(*(errors(p) for p in sources))
    assert any("SOPInstanceUID" in e for e in before) and any("FrameOfReferenceUID" in e for e in before)
    for path in outputs:
        found = errors(path)
        assert not {e for e in found if re.search(r"UID", e)}, found
        assert found <= before, found - before  # what is left was the scanner's (laterality, the negative spacing)
    entities = subprocess.run(["dcentvfy", *map(str, outputs)], capture_output=True, text=True, timeout=120)
    assert "Error" not in entities.stdout + entities.stderr, entities.stdout + entities.stderr
    parts = subprocess.run(["dcmftest", *map(str, outputs)], capture_output=True, text=True, timeout=60)
    assert parts.returncode == 0 and parts.stdout.count("yes:") == len(outputs), parts.stdout


def test_the_seg_of_a_messy_series_has_no_error_and_no_negative_spacing(tmp_path):
    import numpy as np

    sources = [read_dataset(p.read_bytes()) for p in messy_series(tmp_path / "in")]
    for ds in sources:  # as analyze hands them over: SOP UIDs repaired from the meta
        ds.SOPInstanceUID = ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID
    labels = np.zeros((len(sources), 64, 64), np.uint8)
    labels[:, 20:40, 10:30] = 1
    labels[3, 25:30, 15:20] = 3
    seg = tmp_path / "seg.dcm"
    seg.write_bytes(make_seg(labels, sources, model_version="test-1"))
    assert errors(seg) == set()
    dumped = subprocess.run(["dcmdump", "+P", "0018,0088", "+s", str(seg)], capture_output=True, text=True)
    assert "-5" not in dumped.stdout


def test_deid_of_the_real_ct_introduces_no_error(real_ct_dir, tmp_path):
    picked = sorted(real_ct_dir.glob("*.dcm"))[::20]
    src = tmp_path / "in"
    src.mkdir()
    for p in picked:
        shutil.copy(p, src / p.name)
    run(src, tmp_path / "out", "north", SECRET)
    outputs = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(outputs) == len(picked)
    before = set().union(*(errors(p) for p in picked))
    for path in outputs:
        found = errors(path)
        assert not {e for e in found if "UID" in e} and found <= before, found - before


def test_analyze_seg_of_the_messy_series_as_scanned_exits_0_with_a_valid_seg(tmp_path):
    import json
    import sys

    messy_series(tmp_path / "in", n=16)
    run_ = subprocess.run([sys.executable, "-m", "ctfleet", "analyze", str(tmp_path / "in"), "--out",
                           str(tmp_path / "out"), "--seg"], capture_output=True, text=True, timeout=300)
    assert run_.returncode == 0, run_.stderr[-2000:]
    assert json.loads(run_.stdout.strip().splitlines()[-1])["triage_level"]
    assert errors(tmp_path / "out" / "seg.dcm") == set()
