"""The validation machinery: metrics on hand-made maps, and a --quick run on tiny phantoms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctfleet.dev import validate as V


def test_wilson_known_values() -> None:
    p, lo, hi = V.wilson(8, 10)
    assert p == 0.8
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    p, lo, hi = V.wilson(0, 20)
    assert p == 0.0 and lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert math.isnan(V.wilson(0, 0)[0])


def test_dice_exact() -> None:
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[0, 0, :4] = True  # 4 voxels
    b[0, 0, 2:4] = True  # 2 voxels, both in a
    assert V.dice(a, b) == pytest.approx(2 * 2 / 6)
    assert V.dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_kappa() -> None:
    assert V.cohen_kappa([0, 1, 2, 3], [0, 1, 2, 3]) == pytest.approx(1.0)
    # 2x2 textbook example: agreement 0.7, chance 0.5 -> kappa 0.4.
    a = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert V.cohen_kappa(a, b, k=2) == pytest.approx(0.4)


def test_grades_and_zones_on_hand_made_map() -> None:
    assert [V.grade(x) for x in (0, 0.1, 25, 49.9, 50, 75, 100)] == [0, 1, 2, 2, 3, 4, 4]
    lung = np.zeros((30, 10, 20), bool)
    lung[:, 2:8, 1:8] = True  # right (low X)
    lung[:, 2:8, 12:19] = True  # left
    side = V.reference_sides(lung)
    assert (side[:, :, :9][lung[:, :, :9]] == 1).all() and (side[:, :, 11:][lung[:, :, 11:]] == 2).all()
    lesion = np.zeros_like(lung)
    lesion[20:30, 2:8, 12:19] = True  # the whole upper third of the left lung
    pct = V.zone_pcts(lesion, side)
    assert pct["left_upper"] == pytest.approx(100.0) and pct["right_upper"] == 0.0
    assert V.zone_grades(pct) == [0, 0, 0, 4, 0, 0]


def test_insert_lesions_truth_and_hu() -> None:
    hu = np.full((40, 60, 60), -850.0, np.float32)
    lung = np.ones(hu.shape, bool)
    les = [V.Lesion("consolidation", (40.0, 60.0, 60.0), (10.0, 10.0, 10.0), 20.0), V.Lesion("ggo", (40.0, 60.0, 20.0), (8.0, 8.0, 8.0), -500.0)]
    out, truth, ids = V.insert_lesions(hu, (2.0, 2.0, 2.0), lung, les, seed=1)
    cons = truth == 3
    ml = cons.sum() * 8 / 1000.0
    assert ml == pytest.approx(les[0].volume_ml, rel=0.15)
    assert abs(float(np.median(out[cons])) - 20.0) < 25
    assert -600 < float(np.median(out[truth == 2])) < -400
    assert set(np.unique(ids)) == {0, 1, 2}
    assert (out[~lung] == hu[~lung]).all()


def test_quick_run_and_report() -> None:
    s = V.run(quick=True)
    assert s["cases"] >= 4 and s["lesions"] > 0
    t = s["triage"]
    assert t["tp"] + t["fn"] + t["fp"] + t["tn"] == s["cases"]
    assert 0.0 <= s["zone_exact"] <= 1.0
    text = V.render_markdown(s)
    for heading in ("Per-lesion sensitivity", "False-positive", "Dice", "Severity score agreement", "Triage", "Limitations"):
        assert heading in text


def test_a_region_lesion_fills_its_mask_and_a_nodule_is_painted_but_never_truth() -> None:
    hu = np.full((30, 50, 50), -850.0, np.float32)
    lung = np.ones(hu.shape, bool)
    region = np.zeros(hu.shape, bool)
    region[5:25, 10:40, 10:25] = True
    les = [V.Lesion("consolidation", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 20.0, "right", "lobe", region),
           V.Lesion("nodule", (30.0, 60.0, 70.0), (3.0, 3.0, 3.0), 40.0, "left")]
    out, truth, ids = V.insert_lesions(hu, (2.0, 2.0, 2.0), lung, les, seed=3)
    cons = truth == 3
    assert 0.9 < cons.sum() / region.sum() < 1.1 and (cons & ~region).sum() < 0.1 * region.sum()
    assert abs(float(np.median(out[region])) - 20.0) < 25
    nodule = ids == 2
    assert nodule.sum() > 0 and not (truth[nodule] > 0).any(), "a nodule is no opacity"
    assert float(out[nodule].mean()) > -300
