"""The synthetic chest phantom: deterministic, anatomically laid out, truth consistent."""

from __future__ import annotations

import numpy as np
import pytest

from ctfleet.contracts import Label
from ctfleet.dev.phantom import PRESETS, Opacity, chest_phantom, from_preset, lung_point_mm


def test_deterministic_for_a_seed() -> None:
    a = chest_phantom((24, 64, 64), (5.0, 5.0, 5.0), seed=3)
    b = chest_phantom((24, 64, 64), (5.0, 5.0, 5.0), seed=3)
    c = chest_phantom((24, 64, 64), (5.0, 5.0, 5.0), seed=4)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.truth, b.truth)
    assert not np.array_equal(a.hu, c.hu)


def test_materials_and_dtypes() -> None:
    p = from_preset("clean")
    assert p.hu.dtype == np.float32 and p.truth.dtype == np.uint8
    assert p.hu.shape == p.truth.shape == PRESETS["clean"].shape
    assert abs(float(p.hu[:, 2, 2].mean()) + 1000) < 10  # outside air
    assert -900 < float(np.median(p.hu[p.truth == Label.LUNG])) < -800
    assert p.hu.max() > 600  # bone
    assert set(np.unique(p.truth)) == {Label.BACKGROUND, Label.LUNG}


def test_right_lung_bigger_and_on_the_low_x_side() -> None:
    p = from_preset("clean")
    lung = p.truth > 0
    x = lung.shape[2]
    right, left = lung[:, :, : x // 2].sum(), lung[:, :, x // 2 :].sum()
    assert right > left > 0


def test_opacity_clipped_to_lung_and_labelled() -> None:
    center = lung_point_mm("left", (0.5, 0.5, 0.5))
    p = chest_phantom(opacities=[Opacity("consolidation", center, 12.0)])
    cons = p.truth == Label.CONSOLIDATION
    assert cons.sum() > 0
    assert np.all(cons[:, :, : cons.shape[2] // 2] == 0)  # only in the patient's left (high X)
    assert abs(float(np.median(p.hu[cons])) - 20) < 10


def test_high_preset_is_over_30_percent() -> None:
    p = from_preset("high")
    lung = (p.truth > 0).sum()
    assert (p.truth >= Label.GGO).sum() / lung > 0.30


def test_bad_opacity_kind() -> None:
    with pytest.raises(ValueError):
        Opacity("tumour", (0.0, 0.0, 0.0), 5.0)


@pytest.mark.parametrize("name", ["head_phantom", "abdomen_phantom", "water_cylinder"])
def test_non_chest_phantoms(name: str) -> None:
    from ctfleet.dev import phantom

    p = getattr(phantom, name)()
    assert p.hu.dtype == np.float32 and p.hu.ndim == 3
    assert not p.truth.any()
    q = getattr(phantom, name)()
    assert np.array_equal(p.hu, q.hu)
