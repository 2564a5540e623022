"""model.analyze on the real chest CT (fixture ``real_ct_dir``; provenance in tests/conftest.py).

No timing thresholds here: benchmarks live elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctfleet.intake.files import load_study
from ctfleet.dev.validate import Lesion, insert_lesions, reference_sides
from model.analysis import analyze
from model.volume import Volume


@pytest.fixture(scope="module")
def volume(real_ct_dir: Path) -> Volume:
    return load_study(real_ct_dir).volume


@pytest.fixture(scope="module")
def clean(volume: Volume):
    return analyze(volume, "cpu")


def test_lung_volumes_plausible(clean) -> None:
    ml = clean.report["lung_volume_ml"]
    assert 3000 <= ml["total"] <= 8000
    assert 0.7 <= ml["left"] / ml["right"] <= 1.1
    assert clean.report["flags"] == []
    assert clean.report["triage_level"] != "HIGH"


def test_labels_only_inside_the_body(volume: Volume, clean) -> None:
    labelled = clean.labels > 0
    # Never in the air around the patient: every labelled voxel has body tissue on both sides along X.
    body = volume.hu > -400
    row_any = body.any(axis=2)
    assert not (labelled & ~row_any[:, :, None]).any()
    first = np.argmax(body, axis=2)
    last = body.shape[2] - 1 - np.argmax(body[:, :, ::-1], axis=2)
    xs = np.arange(body.shape[2])[None, None, :]
    inside = (xs >= first[:, :, None]) & (xs <= last[:, :, None])
    assert (labelled & ~inside).sum() == 0
    # Nor on the table (the lowest 15 % of rows: the array rows run anterior -> posterior here).
    assert not labelled[:, int(0.85 * volume.shape[1]) :, :].any()


def test_inserted_left_consolidation_volume(volume: Volume, clean) -> None:
    # The affine of this series is a plain axial one (X to the left, Y posterior, Z superior).
    assert np.allclose(np.sign(np.diag(volume.affine)[:3]), [-1, -1, 1])
    lung = clean.labels > 0
    side = reference_sides(lung)
    left = (side == 2) & (clean.labels == 1)
    # A centre deep in the left lung, mid-height: the left-lung voxel farthest from non-lung in-plane, roughly.
    z_mid = int(np.median(np.nonzero(left)[0]))
    ys, xs = np.nonzero(left[z_mid])
    cy, cx = int(np.median(ys)), int(np.median(xs))
    assert left[z_mid, cy, cx]
    sp = volume.spacing_mm
    lesion = Lesion("consolidation", (z_mid * sp[0], cy * sp[1], cx * sp[2]), (12.0, 12.0, 12.0), 20.0, "left")
    hu, truth, _ = insert_lesions(volume.hu, sp, lung, [lesion], seed=3)
    ref_ml = float((truth == 3).sum()) * volume.voxel_ml
    assert ref_ml > 5.0
    a = analyze(Volume(hu=hu, spacing_mm=sp, affine=volume.affine), "cpu")
    found = (a.labels >= 2) & (truth == 3)
    found_ml = float(found.sum()) * volume.voxel_ml
    near = np.zeros_like(truth, dtype=bool)
    zs, ys2, xs2 = np.nonzero(truth == 3)
    near[zs.min() - 3 : zs.max() + 4, ys2.min() - 6 : ys2.max() + 7, xs2.min() - 6 : xs2.max() + 7] = True
    pred_ml = float(((a.labels >= 2) & near & ~(clean.labels >= 2)).sum()) * volume.voxel_ml
    assert found_ml >= 0.7 * ref_ml
    assert abs(pred_ml - ref_ml) <= 0.3 * ref_ml
    assert a.report["involvement_pct"]["zones"]["left_middle"] > clean.report["involvement_pct"]["zones"]["left_middle"]


def test_prone_flip_agrees(volume: Volume, clean) -> None:
    flip = np.eye(4)
    flip[1, 1] = -1.0
    flip[1, 3] = volume.shape[1] - 1
    v2 = Volume(hu=volume.hu[:, ::-1, :].copy(), spacing_mm=volume.spacing_mm, affine=volume.affine @ flip)
    a2 = analyze(v2, "cpu")
    assert a2.report["lung_volume_ml"] == clean.report["lung_volume_ml"]
    assert a2.report["involvement_pct"] == clean.report["involvement_pct"]
    assert np.array_equal(a2.labels[:, ::-1, :], clean.labels)


@pytest.mark.parametrize("part", ["bases", "apices"])
def test_partial_coverage_finds_the_lung_that_is_there(volume: Volume, clean, part: str) -> None:
    # An abdominal CT shows the lung bases only; a short scan may stop below the apices. Cut the real CT so:
    # the lung there is found (not "not_a_chest") and the report says the coverage is partial.
    lung_z = np.nonzero((clean.labels > 0).any(axis=(1, 2)))[0]  # z runs inferior -> superior here
    n = int(round(40.0 / volume.spacing_mm[0]))  # 40 mm of lung
    cut = slice(0, int(lung_z.min()) + n) if part == "bases" else slice(int(lung_z.max()) + 1 - n, None)
    sub = Volume.from_spacing(np.ascontiguousarray(volume.hu[cut]), volume.spacing_mm)
    a = analyze(sub, "cpu")
    assert "partial_coverage" in a.report["flags"] and "not_a_chest" not in a.report["flags"]
    found, there = int((a.labels > 0).sum()), int((clean.labels[cut] > 0).sum())
    assert 0.75 <= found / there <= 1.1
