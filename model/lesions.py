"""Opacity detection: ground glass and consolidation inside the lung, on the work grid (about 2 mm).

Masks are bool ``(Z, Y, X)`` in canonical orientation; the result is the
label map of the work grid (:class:`model.labels.Label` values).
"""

from __future__ import annotations

import torch

from .grid import Grid, radius_voxels
from .labels import Label
from .morphology import bounding_box, dilate, erode, keep_large, opening, shift
from .params import Params

__all__ = ["label_lesions"]

# Voxels round the lung in which lesions are worked out: more than the widest step (the thin-sheet
# runs, the vessel opening, the partial-volume edges) reaches.
_BOX_MARGIN = 6


def _pv_edge(air: torch.Tensor, tissue: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
    """Voxels on an air-to-tissue transition one or two voxels wide, along any axis.

    A voxel is an edge when air lies on one side and tissue on the opposite
    side, directly or across one more intermediate (``mid``) voxel.
    """
    edge = torch.zeros_like(air)

    def term(dim: int, parts: tuple[tuple[torch.Tensor, int], ...]) -> None:
        # edge[i] |= AND of t[i + off] over parts, where every i + off is inside
        # the volume (outside counts as False, as with shift); on views, no copies.
        n = edge.shape[dim]
        offs = [off for _, off in parts]
        lo, hi = max(0, -min(offs)), min(n, n - max(offs))
        if hi <= lo:
            return
        acc = parts[0][0].narrow(dim, lo + parts[0][1], hi - lo) & parts[1][0].narrow(dim, lo + parts[1][1], hi - lo)
        for t, off in parts[2:]:
            acc &= t.narrow(dim, lo + off, hi - lo)
        edge.narrow(dim, lo, hi - lo).logical_or_(acc)

    for dim in range(3):
        if air.shape[dim] < 3:
            continue
        for s in (1, -1):
            # air before, tissue after (directly or across one mid voxel)
            term(dim, ((air, -s), (tissue, s)))
            term(dim, ((air, -s), (mid, s), (tissue, 2 * s)))
            term(dim, ((air, -2 * s), (mid, -s), (tissue, s)))
    return edge


def _thin_sheet(ggo: torch.Tensor, wall: torch.Tensor, runs: tuple[int, int, int]) -> torch.Tensor:
    """GGO voxels in a run, along some axis, that starts at the wall and ends within ``runs[axis]`` voxels.

    Along each axis and direction: voxels reachable from the wall through at
    most ``n`` GGO voxels, of runs that stop (the next voxel is not GGO) within
    those ``n``. Runs longer than ``n`` (a thick opacity on the wall) stay.
    """
    out = torch.zeros_like(ggo)
    for dim, n in enumerate(runs):
        if ggo.shape[dim] < 3:
            continue
        for s in (1, -1):
            reach = ggo & shift(wall, dim, s)
            frontier = reach
            for _ in range(n - 1):
                frontier = ggo & shift(frontier, dim, s) & ~reach
                reach = reach | frontier
            ends = reach & ~shift(ggo, dim, -s)  # the next voxel away from the wall is not GGO
            done = ends
            for _ in range(n - 1):
                done = done | (reach & shift(done, dim, -s))
            out |= done
    return out


def _ground_glass(work: Grid, lung: torch.Tensor, search: torch.Tensor, ggo_hu: torch.Tensor, p: Params) -> torch.Tensor:
    """Ground-glass candidates: GGO HU in the search region, partial volume removed."""
    hu, sp = work.hu, work.spacing_mm
    # Partial volume: a voxel between aerated lung and tissue along any
    # axis (the tangential cut of a diaphragm dome, the heart border, a
    # vessel wall) has ground-glass HU without being ground glass.
    ggo = search & ggo_hu & ~_pv_edge(hu < p.ggo_hu[0], hu > p.pv_dense_hu, ggo_hu)
    # Ground glass lying as a thin sheet on the wall of the lung (a dome
    # cut obliquely over several slices, the pleura in-plane) is partial
    # volume of that wall, not disease.
    wall = (hu > p.pv_dense_hu) & ~lung
    runs = (max(1, int(round(p.pv_sheet_mm[0] / sp[0]))), max(1, int(round(p.pv_sheet_mm[1] / sp[1]))),
            max(1, int(round(p.pv_sheet_mm[1] / sp[2]))))
    return ggo & ~_thin_sheet(ggo, wall, runs)


def _without_vessels(lesion: torch.Tensor, sp: tuple[float, float, float], p: Params) -> torch.Tensor:
    """Vessel suppression: an opening removes thin bright tubes (and the GGO-like halo partial volume puts around them).

    A one-voxel conditional dilation gives the surviving blobs their edges back.
    """
    r_open = radius_voxels(p.vessel_open_mm, sp)
    r_open = (min(r_open[0], 1), max(1, r_open[1]), max(1, r_open[2]))
    core = opening(lesion, r_open)
    return dilate(core, (1, 1, 1)) & lesion


def label_lesions(work: Grid, lung: torch.Tensor, p: Params) -> torch.Tensor:
    """Label lung, ground-glass opacity and consolidation on the work grid.

    Every step is local (a few voxels) and nothing lies outside the lung, so the work is done in the
    lung's bounding box (with a margin wider than any step reaches) and pasted back.

    Parameters
    ----------
    work : Grid
        Work-grid HU ``(Z, Y, X)``, canonical orientation, spacing in mm.
    lung : torch.Tensor
        bool ``(Z, Y, X)`` lung on the same grid.
    p : Params
        Thresholds (HU windows, vessel and lesion sizes).

    Returns
    -------
    torch.Tensor
        uint8 ``(Z, Y, X)``: 0 background, :attr:`Label.LUNG`, :attr:`Label.GGO`,
        :attr:`Label.CONSOLIDATION`.
    """
    labels = torch.zeros(work.shape, dtype=torch.uint8, device=work.hu.device)
    box = bounding_box(lung, _BOX_MARGIN)
    if box is None:
        return labels
    labels[box] = _label_lesions(Grid(work.hu[box], work.spacing_mm), lung[box], p)
    return labels


def _label_lesions(work: Grid, lung: torch.Tensor, p: Params) -> torch.Tensor:
    """:func:`label_lesions` on a grid that holds the whole lung."""
    hu = work.hu
    # Search lesions away from the lung surface, where partial volume with
    # the chest wall looks like ground glass.
    search = erode(lung, (0, 1, 1))
    ggo_hu = (hu >= p.ggo_hu[0]) & (hu < p.ggo_hu[1])
    dense_hu = (hu >= p.consolidation_hu[0]) & (hu <= p.consolidation_hu[1])
    ggo = _ground_glass(work, lung, search, ggo_hu, p)
    dense = search & dense_hu
    lesion = _without_vessels(ggo | dense, work.spacing_mm, p)
    lesion = keep_large(lesion, p.min_lesion_ml / work.voxel_ml)
    # Dense lesions touching the pleura: give back the rim the search erosion took.
    lesion_dense = lesion & dense
    lesion_dense = lesion_dense | (dilate(lesion_dense, (0, 1, 1)) & lung & dense_hu)
    labels = torch.zeros(work.shape, dtype=torch.uint8, device=hu.device)
    labels[lung] = Label.LUNG
    labels[lesion & ggo] = Label.GGO
    labels[lesion_dense] = Label.CONSOLIDATION
    return labels
