"""Boundaries re-decided at the input grid's resolution (model.refine): the edge follows the image, nothing is invented."""

from __future__ import annotations

import torch

from model.grid import block_mean
from model.labels import Label
from model.morphology import upsample
from model.params import PARAMS
from model.refine import refine_labels

FACTORS = (1, 2, 2)


def _disc(shape: tuple[int, int, int], centre: tuple[float, float], radius: float) -> torch.Tensor:
    """Distance (voxels) of each voxel from a vertical axis through ``centre``, minus ``radius``: < 0 inside."""
    _, y, x = shape
    ys = torch.arange(y, dtype=torch.float32)[:, None]
    xs = torch.arange(x, dtype=torch.float32)[None, :]
    d = torch.sqrt((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2) - radius
    return d.expand(shape)


def _scene(lesion_hu: float, ramp: float = 0.0, radius: float = 13.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Input-grid HU of a lung (-850 HU) in a chest wall (40 HU) with a round lesion, and its work-grid labels.

    The work grid (2 x 2 in-plane blocks) labels as the analyzer's thresholds do: aerated blocks inside
    the wall are lung, blocks of the lesion denser than normal lung its type (the analyzer keeps the
    partial volume of the wall and of a consolidation's rim out of ground glass).
    """
    shape = (4, 96, 96)
    lung = _disc(shape, (47.5, 47.5), 40.0) < 0
    d = _disc(shape, (40.0, 52.0), radius)
    w = ((0.5 - d / max(ramp, 1e-6)).clamp(0, 1)) if ramp else (d < 0).float()
    hu = torch.where(lung, -850.0 + w * (lesion_hu + 850.0), torch.full(shape, 40.0))
    hu_w = block_mean(hu, FACTORS)
    lung_w = block_mean(lung.float(), FACTORS) >= 0.5
    labels_w = torch.zeros(hu_w.shape, dtype=torch.uint8)
    labels_w[lung_w] = Label.LUNG
    lesion_w = lung_w & (block_mean(w * lung, FACTORS) > 0) & (hu_w >= PARAMS.ggo_hu[0])
    labels_w[lesion_w] = Label.CONSOLIDATION if lesion_hu >= PARAMS.consolidation_hu[0] else Label.GGO
    return hu, labels_w


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_a_lesion_s_outline_follows_the_image_not_the_work_grid() -> None:
    hu, labels_w = _scene(0.0)
    sides_w = (labels_w > 0).to(torch.uint8)
    labels, _ = refine_labels(hu, block_mean(hu, FACTORS), labels_w, sides_w, FACTORS, PARAMS)
    truth = hu >= -300.0  # the lesion's own voxels (the wall is 40 HU but no lesion)
    truth &= _disc(hu.shape, (40.0, 52.0), 13.3) < 0
    blocky = upsample(labels_w, FACTORS, tuple(hu.shape)) == Label.CONSOLIDATION
    refined = labels == Label.CONSOLIDATION
    assert _dice(refined, truth) > 0.995
    assert _dice(refined, truth) > _dice(blocky, truth) + 0.01


def test_the_edge_of_a_blurred_lesion_lies_at_half_maximum() -> None:
    # Ground glass (-500 HU) with a 6-voxel linear ramp into lung (-850 HU): the half-maximum
    # edge is where the edge weight is 0.5, the lesion's nominal radius.
    hu, labels_w = _scene(-500.0, ramp=6.0)
    labels, _ = refine_labels(hu, block_mean(hu, FACTORS), labels_w, (labels_w > 0).to(torch.uint8), FACTORS, PARAMS)
    ggo = (labels == Label.GGO)[0]
    nominal = (_disc(hu.shape, (40.0, 52.0), 13.3) < 0)[0]
    assert abs(float(ggo.sum()) / float(nominal.sum()) - 1.0) < 0.06


def test_nothing_is_found_where_the_work_grid_found_nothing() -> None:
    hu, labels_w = _scene(0.0)
    hu[:, 70:73, 30:33] = -500.0  # a ground-glass speck too small for the work grid, far from any lesion
    labels, _ = refine_labels(hu, block_mean(hu, FACTORS), labels_w, (labels_w > 0).to(torch.uint8), FACTORS, PARAMS)
    assert not bool((labels[:, 60:80, 20:40] >= Label.GGO).any())
    assert set(torch.unique(labels).tolist()) <= {Label.BACKGROUND, Label.LUNG, Label.CONSOLIDATION}


def test_the_lung_edge_follows_the_pleura_and_a_consolidation_on_the_wall_stays() -> None:
    hu, labels_w = _scene(0.0, radius=34.0)  # reaches the chest wall: tissue against tissue there
    labels, sides = refine_labels(hu, block_mean(hu, FACTORS), labels_w, (labels_w > 0).to(torch.uint8), FACTORS, PARAMS)
    lung = _disc(hu.shape, (47.5, 47.5), 40.0) < 0
    aerated = lung & (hu < -600.0)
    # Every voxel of the lung nearer to air than to the lesion's density is lung; no wall voxel beside normal lung is.
    assert bool((labels[aerated] == Label.LUNG).all())
    blocky = upsample(labels_w, FACTORS, tuple(hu.shape))
    wall = ~lung & (blocky != Label.CONSOLIDATION)
    assert bool((wall & (blocky == Label.LUNG)).any()) and not bool((labels[wall] > 0).any())
    # Where the consolidation meets the wall, the work grid's label stays (HU cannot tell them apart).
    touching = ~lung & (blocky == Label.CONSOLIDATION)
    assert bool(touching.any()) and bool((labels[touching] == Label.CONSOLIDATION).all())
    assert bool((sides[labels > 0] > 0).all()) and not bool((sides[labels == 0] > 0).any())


def test_on_the_work_grid_itself_labels_are_unchanged() -> None:
    hu, labels_w = _scene(0.0)
    hu_w = block_mean(hu, FACTORS)
    sides_w = (labels_w > 0).to(torch.uint8)
    labels, sides = refine_labels(hu_w, hu_w, labels_w, sides_w, (1, 1, 1), PARAMS)
    assert torch.equal(labels, labels_w) and torch.equal(sides, sides_w)


def test_noise_on_a_blurred_edge_leaves_no_specks() -> None:
    from model.morphology import label

    hu, labels_w = _scene(-500.0, ramp=6.0)
    hu = hu + 40.0 * torch.randn(hu.shape, generator=torch.Generator().manual_seed(3))
    labels, _ = refine_labels(hu, block_mean(hu, FACTORS), labels_w, (labels_w > 0).to(torch.uint8), FACTORS, PARAMS)
    _, sizes = label(labels >= Label.GGO)
    assert int(sizes[1:].max()) > 1000 and int((sizes[1:] <= 2).sum()) == 0
