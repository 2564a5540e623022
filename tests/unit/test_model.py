"""model.analyze on synthetic phantoms (CPU): triage, accuracy, orientation, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctfleet.contracts import Label
from ctfleet.dev.phantom import from_preset
from model.analysis import MODEL_VERSION, Analysis, analyze
from model.report import ZONES
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
    lesion_ml = (a.labels >= Label.GGO).sum() * v.voxel_ml
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


# -- robustness (issue 5) --------------------------------------------------------------------


def _flip_ap(v: Volume) -> Volume:
    """The same patient stored with the rows reversed (as a prone series reads), affine updated."""
    flip = np.eye(4)
    flip[1, 1] = -1.0
    flip[1, 3] = v.hu.shape[1] - 1  # j' = (Y - 1) - j
    return Volume(hu=v.hu[:, ::-1, :].copy(), spacing_mm=v.spacing_mm, affine=v.affine @ flip)


def test_prone_flip_with_affine_agrees(high: tuple) -> None:
    _, v, a1 = high
    a2 = analyze(_flip_ap(v), "cpu")
    assert a2.report["involvement_pct"] == a1.report["involvement_pct"]
    assert a2.report["lung_volume_ml"] == a1.report["lung_volume_ml"]
    assert np.array_equal(a1.labels, a2.labels[:, ::-1, :])


def test_sagittal_storage_reoriented_via_affine() -> None:
    """A volume stored sagittally (array axes X, Z, Y) with a matching affine gives the axial result."""
    p = from_preset("left_only")
    v = Volume.from_spacing(p.hu, p.spacing_mm)
    a1 = analyze(v, "cpu")
    hu = np.ascontiguousarray(p.hu.transpose(2, 0, 1))  # new (Z', Y', X') = old (X, Z, Y)
    # New column i' (X') walks old Y, j' (Y') old Z, k' (Z') old X.
    aff = np.zeros((4, 4))
    aff[:, 0], aff[:, 1], aff[:, 2] = v.affine[:, 1], v.affine[:, 2], v.affine[:, 0]
    aff[3, 3] = 1.0
    sz, sy, sx = v.spacing_mm
    v2 = Volume(hu=hu, spacing_mm=(sx, sz, sy), affine=aff)
    a2 = analyze(v2, "cpu")
    assert a2.report["involvement_pct"] == a1.report["involvement_pct"]
    assert np.array_equal(a1.labels, a2.labels.transpose(1, 2, 0))


def test_oblique_volume_rejected() -> None:
    p = from_preset("clean")
    v = Volume.from_spacing(p.hu, p.spacing_mm)
    t = np.radians(35.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0, 0], [np.sin(t), np.cos(t), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    with pytest.raises(VolumeError) as err:
        analyze(Volume(hu=v.hu, spacing_mm=v.spacing_mm, affine=rot @ v.affine), "cpu")
    assert err.value.reason == "bad_orientation"


def test_small_tilt_accepted() -> None:
    p = from_preset("clean")
    v = Volume.from_spacing(p.hu, p.spacing_mm)
    t = np.radians(8.0)
    rot = np.array([[1, 0, 0, 0], [0, np.cos(t), -np.sin(t), 0], [0, np.sin(t), np.cos(t), 0], [0, 0, 0, 1]])
    a = analyze(Volume(hu=v.hu, spacing_mm=v.spacing_mm, affine=rot @ v.affine), "cpu")
    assert a.report["flags"] == [] and a.report["triage_level"] == "LOW"


@pytest.mark.parametrize("make", ["head_phantom", "abdomen_phantom", "water_cylinder"])
def test_not_a_chest_phantoms(make: str) -> None:
    from ctfleet.dev import phantom

    p = getattr(phantom, make)()
    a = analyze(Volume.from_spacing(p.hu, p.spacing_mm), "cpu")
    assert "not_a_chest" in a.report["flags"]
    assert a.report["triage_level"] == "LOW" and a.report["score"] == 0 and a.report["severity_score"] == 0
    assert not a.labels.any()


def test_airways_not_lung() -> None:
    from ctfleet.dev.phantom import DEFAULT_SHAPE, DEFAULT_SPACING_MM, chest_phantom

    p = chest_phantom(DEFAULT_SHAPE, DEFAULT_SPACING_MM, seed=5)
    a = analyze(Volume.from_spacing(p.hu, p.spacing_mm), "cpu")
    # Air inside the body that the truth calls background: the trachea and main bronchi.
    body = p.hu > -500
    inside = np.zeros_like(body)
    for z in range(body.shape[0]):
        cols = np.nonzero(body[z].any(axis=0))[0]
        rows = np.nonzero(body[z].any(axis=1))[0]
        if cols.size and rows.size:
            inside[z, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    airway = inside & (p.hu < -950) & (p.truth == 0)
    assert airway.sum() > 100
    assert (a.labels[airway] > 0).mean() < 0.2  # at most a stub at the carina regrows


def test_peripheral_consolidation_counted() -> None:
    from ctfleet.dev.phantom import Opacity, chest_phantom, lung_point_mm

    c = lung_point_mm("right", (0.5, 0.5, 1.0))  # on the lateral chest wall
    p = chest_phantom(opacities=[Opacity("consolidation", c, 16.0)], seed=2)
    a = analyze(Volume.from_spacing(p.hu, p.spacing_mm), "cpu")
    truth = p.truth == 3
    found = (a.labels == 3) & truth
    assert found.sum() / truth.sum() > 0.5  # the part deepest in the wall bay is still missed


def test_small_specks_below_min_size_ignored() -> None:
    from ctfleet.dev.phantom import Opacity, chest_phantom, lung_point_mm

    ops = [Opacity("consolidation", lung_point_mm(s, (0.5, 0.5, 0.5)), 2.5) for s in ("left", "right")]
    p = chest_phantom(opacities=ops, seed=1)
    a = analyze(Volume.from_spacing(p.hu, p.spacing_mm), "cpu")
    assert (a.labels >= 2).sum() == 0


def test_large_consolidation_counted_and_triaged(clean: tuple) -> None:
    """Consolidations >= 50 mm (wider than the lung-outline closing) count as lung + consolidation."""
    from ctfleet.dev.phantom import Opacity, chest_phantom, lung_point_mm

    ops = [
        Opacity("consolidation", lung_point_mm("right", (0.45, 0.55, 0.75)), 30.0),  # on the lateral chest wall
        Opacity("consolidation", lung_point_mm("left", (0.6, 0.6, 0.7)), 27.0),
    ]
    p = chest_phantom(opacities=ops, seed=0)
    a = analyze(Volume.from_spacing(p.hu, p.spacing_mm), "cpu")
    truth = p.truth == Label.CONSOLIDATION
    truth_ml = truth.sum() * p.voxel_ml
    assert truth_ml > 150.0  # both lesions are large, even clipped to the lungs
    pred_ml = a.report["lesion_volume_ml"]["consolidation"]
    assert abs(pred_ml - truth_ml) <= 0.3 * truth_ml
    assert ((a.labels == Label.CONSOLIDATION) & truth).sum() >= 0.6 * truth.sum()
    lung_ml = a.report["lung_volume_ml"]["total"]
    truth_lung_ml = (p.truth > 0).sum() * p.voxel_ml
    assert abs(lung_ml - truth_lung_ml) / truth_lung_ml < 0.1  # the consolidated lung is still lung
    _, _, a0 = clean
    assert a.report["score"] > a0.report["score"] + 0.2
    assert a0.report["triage_level"] == "LOW" and a.report["triage_level"] in ("MEDIUM", "HIGH")


def test_heart_and_mediastinum_unlabelled(clean: tuple) -> None:
    """The clean phantom's heart, mediastinum and chest wall (all soft tissue, non-lung truth) get no label."""
    p, v, a = clean
    soft = (p.hu > -300) & (p.truth == 0)
    labelled = a.labels > 0
    # Rim voxels on the lung surface (about 18 ml of partial volume, as in 0.2.0) are tolerated.
    assert (labelled & soft).sum() * v.voxel_ml < 25.0
    assert (a.labels[soft] >= 2).sum() == 0
    # Solid tissue away from the lung surface (heart, mediastinum, chest wall) in the heart's slices.
    nz, ny, nx = p.hu.shape
    core = np.zeros_like(soft)
    core[int(0.25 * nz) : int(0.4 * nz), :, :] = True
    import torch

    from model.morphology import erode

    solid = erode(torch.from_numpy(soft), (1, 3, 3)).numpy()  # at least ~6 mm from any lung surface
    core &= solid
    assert core.sum() > 1000 and not (labelled & core).any()


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_consolidated_lower_lobe_is_found_inside_the_other_lung_s_mirror(side: str) -> None:
    # The back half of one lung, over the middle of its height, turned to consolidation: no aerated
    # lung is left there to span, so only the other lung's outline says it is lung.
    from ctfleet.dev import phantom as ph

    p = ph.chest_phantom(seed=101)
    code = 1 if side == "right" else 2
    truth_side = p.truth > 0
    xs = np.arange(p.hu.shape[2])[None, None, :]
    mid = p.hu.shape[2] / 2.0
    on_side = (xs < mid) if side == "right" else (xs > mid)
    z = np.nonzero(truth_side.any(axis=(1, 2)))[0]
    zs = np.arange(p.hu.shape[0])[:, None, None]
    rows = np.nonzero(truth_side.any(axis=(0, 2)))[0]
    back = np.arange(p.hu.shape[1])[None, :, None] > (rows.min() + rows.max()) / 2.0
    lobe = truth_side & on_side & back & (zs > z.min() + 0.3 * (z.max() - z.min())) & (zs < z.min() + 0.7 * (z.max() - z.min()))
    hu = p.hu.copy()
    hu[lobe] = 30.0 + np.random.default_rng(code).normal(0, 15, int(lobe.sum()))
    a = analyze(Volume.from_spacing(hu, p.spacing_mm), "cpu")
    found = float((a.labels[lobe] == Label.CONSOLIDATION).mean())
    assert found >= 0.5, f"{100 * found:.0f} % of the consolidated lobe labelled"
    clean_ml = float(truth_side.sum()) * p.voxel_ml
    assert a.report["lung_volume_ml"]["total"] >= 0.8 * clean_ml  # the mirror stands 8 mm inside the outline
