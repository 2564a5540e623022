"""model.analyze on synthetic phantoms (CPU): triage, accuracy, orientation, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctfleet.contracts import Labels
from ctfleet.phantom import from_preset
from model.analysis import MODEL_VERSION, ZONES, Analysis, analyze
from model.volume import Volume, VolumeError

REPORT_KEYS = {
    "model_version", "shape", "spacing_mm", "lung_volume_ml", "lesion_volume_ml", "involvement_pct",
    "severity_score", "score", "triage_level", "timings_s", "device", "flags",
}


@pytest.fixture(scope="module")
def clean() -> tuple:
    p = from_preset("clean")
    v = Volume.from_spacing(p.hu, p.spacing_mm)
    return p, v, analyze(v, "cpu")


@pytest.fixture(scope="module")
def high() -> tuple:
    p = from_preset("high")
    v = Volume.from_spacing(p.hu, p.spacing_mm)
    return p, v, analyze(v, "cpu")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


def test_clean_is_low_without_lesions(clean: tuple) -> None:
    p, v, a = clean
    assert isinstance(a, Analysis)
    assert a.report["triage_level"] == "LOW"
    assert a.report["flags"] == []
    lesion_ml = (a.labels >= Labels.GGO).sum() * v.voxel_ml
    assert lesion_ml < 0.01 * (p.truth > 0).sum() * p.voxel_ml  # < 1 % of the lungs


def test_high_is_high(high: tuple) -> None:
    _, _, a = high
    assert a.report["triage_level"] == "HIGH"
    assert a.report["score"] >= 0.85
    assert a.report["involvement_pct"]["total"] > 25


def test_lesion_dice_and_lung_volume(high: tuple) -> None:
    p, v, a = high
    assert _dice(a.labels >= 2, p.truth >= 2) > 0.8
    assert _dice(a.labels > 0, p.truth > 0) > 0.9
    lung_ml = a.report["lung_volume_ml"]["total"]
    truth_ml = (p.truth > 0).sum() * p.voxel_ml
    assert abs(lung_ml - truth_ml) / truth_ml < 0.1


def test_labels_on_grid_and_inside_body(clean: tuple, high: tuple) -> None:
    for p, v, a in (clean, high):
        assert a.labels.shape == v.shape and a.labels.dtype == np.uint8
        assert set(np.unique(a.labels)) <= {0, 1, 2, 3}
        outside = p.hu < -900  # air around the body (and airways) never gets a label
        assert (a.labels[outside & (p.truth == 0)] >= 2).sum() == 0
        body_rows = (p.hu > -500).any(axis=(0, 2))  # table rows
        assert (a.labels[:, p.hu.shape[1] - 5 :, :] == 0).all() or not body_rows[-5:].any()


def test_report_complete_and_json(high: tuple) -> None:
    _, v, a = high
    r = a.report
    assert REPORT_KEYS <= set(r)
    assert r["model_version"] == MODEL_VERSION
    assert r["shape"] == list(v.shape)
    assert set(r["involvement_pct"]["zones"]) == set(ZONES)
    assert set(r["lung_volume_ml"]) == {"left", "right", "total"}
    assert set(r["lesion_volume_ml"]) == {"ggo", "consolidation"}
    assert 0 <= r["severity_score"] <= 24
    json.dumps(r)


def test_overlays(high: tuple) -> None:
    _, _, a = high
    assert "coronal" in a.overlays
    assert any(k.startswith("axial_") for k in a.overlays)
    for img in a.overlays.values():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    # Coronal aspect: Z 64 x 2.5 mm over X 160 x 2.2 mm.
    h, w, _ = a.overlays["coronal"].shape
    assert abs(h / w - (64 * 2.5) / (160 * 2.2)) < 0.02


def test_left_only_lands_in_left_zones() -> None:
    p = from_preset("left_only")
    a = analyze(Volume.from_spacing(p.hu, p.spacing_mm), "cpu")
    zones = a.report["involvement_pct"]["zones"]
    assert max(zones[z] for z in ZONES if z.startswith("left")) > 5
    assert max(zones[z] for z in ZONES if z.startswith("right")) < 1


def test_flipped_x_with_affine_gives_same_sides() -> None:
    p = from_preset("left_only")
    v = Volume.from_spacing(p.hu, p.spacing_mm)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = p.hu.shape[2] - 1  # i' = (X - 1) - i
    v2 = Volume(hu=p.hu[:, :, ::-1].copy(), spacing_mm=v.spacing_mm, affine=v.affine @ flip)
    a1, a2 = analyze(v, "cpu"), analyze(v2, "cpu")
    assert a1.report["involvement_pct"] == a2.report["involvement_pct"]
    assert a1.report["lung_volume_ml"] == a2.report["lung_volume_ml"]
    assert np.array_equal(a1.labels, a2.labels[:, :, ::-1])


def test_one_slice_rejected() -> None:
    p = from_preset("clean")
    with pytest.raises(VolumeError) as err:
        analyze(Volume.from_spacing(p.hu[30:31], p.spacing_mm), "cpu")
    assert err.value.reason == "too_few_slices"


def test_huge_spacing_rejected() -> None:
    p = from_preset("clean")
    with pytest.raises(VolumeError) as err:
        analyze(Volume.from_spacing(p.hu, (50.0, 2.2, 2.2)), "cpu")
    assert err.value.reason == "bad_spacing"


@pytest.mark.parametrize("fill", [-1000.0, 0.0, np.nan])
def test_all_air_or_uniform_is_not_a_chest(fill: float) -> None:
    hu = np.full((32, 64, 64), fill, dtype=np.float32)
    a = analyze(Volume.from_spacing(hu, (2.5, 2.5, 2.5)), "cpu")
    assert "not_a_chest" in a.report["flags"]
    assert a.report["triage_level"] == "LOW" and a.report["score"] == 0
    assert not a.labels.any()


def test_noise_is_never_high() -> None:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 1000, size=(32, 64, 64)).astype(np.float32)
    try:
        a = analyze(Volume.from_spacing(hu, (2.5, 2.5, 2.5)), "cpu")
    except VolumeError:
        return
    assert a.report["triage_level"] != "HIGH"
