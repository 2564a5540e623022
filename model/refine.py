"""Boundaries at the image's own resolution: the work grid's labels, re-decided voxel by voxel along their edges.

The analyzer finds the lungs and the lesions on the work grid (about 2 mm). Repeated back to
the input grid, a 0.7 mm image would show their edges as 2 mm stairs. Near every boundary of
the work grid (work voxels with another label within one work voxel), each input voxel is given
the label, among those found round it on the work grid, whose mean HU there lies nearest its own
HU: the edge falls halfway between the two sides' densities (half maximum), where a blurred step
edge really is, so the outline follows the image without growing or shrinking what was found.
Where the lung meets what is not lung, aerated voxels are lung and tissue beside normal lung is
the wall; where HU cannot tell (a consolidation on the chest wall or the mediastinum: tissue
against tissue) the work grid's label stays. No label appears where the work grid had none near,
so nothing is found here, only outlined.
"""

from __future__ import annotations

import torch

from .labels import Label
from .morphology import dilate, upsample
from .params import Params

__all__ = ["refine_labels"]

_LUNG_LABELS = (Label.LUNG, Label.GGO, Label.CONSOLIDATION)
_N_LABELS = Label.CONSOLIDATION + 1  # a power of two: the label is a code's low bits
_SIDE_SHIFT = 2


def _present(labels_w: torch.Tensor, reach: tuple[int, int, int]) -> torch.Tensor:
    """uint8 bit set per work voxel: bit ``L`` when label ``L`` lies within ``reach`` work voxels (box)."""
    bits = torch.zeros_like(labels_w)
    for lab in (Label.BACKGROUND, *_LUNG_LABELS):
        bits |= dilate(labels_w == lab, reach).to(torch.uint8) << lab
    return bits


_Zyx = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # the (z, y, x) indices of some voxels


def _unravel(at: torch.Tensor, shape: tuple[int, ...]) -> _Zyx:
    """The ``(z, y, x)`` indices of the flat indices ``at`` into a ``(Z, Y, X)`` volume of ``shape``."""
    _, y, x = shape
    return at // (y * x), (at // x) % y, at % x


def _neighbours(zyx: _Zyx, shape_w: tuple[int, ...], reach: tuple[int, int, int]) -> torch.Tensor:
    """Flat indices ``(n, k)`` of the work voxels within ``reach`` (box, clamped at the border) of each of ``zyx``."""
    zw, yw, xw = shape_w
    z, y, x = zyx
    out = []
    for dz in range(-reach[0], reach[0] + 1):
        for dy in range(-reach[1], reach[1] + 1):
            for dx in range(-reach[2], reach[2] + 1):
                zz, yy, xx = (z + dz).clamp(0, zw - 1), (y + dy).clamp(0, yw - 1), (x + dx).clamp(0, xw - 1)
                out.append((zz * yw + yy) * xw + xx)
    return torch.stack(out, dim=1)


def _class_means(hu_w: torch.Tensor, labels_w: torch.Tensor, edge_w: torch.Tensor, zyx: _Zyx, reach: int) -> torch.Tensor:
    """Per band work voxel (indices ``zyx``), each label's mean work-grid HU round it in-plane.

    Each side's density away from the edge, sampled at the voxel and at the eight ``reach`` voxels
    away along the rows, columns and diagonals: the samples off the boundary (``~edge_w``) where the
    label has any, else all of its samples (a lesion too small to have an inside). float ``(n, 4)``,
    nan where the label is absent.
    """
    _, yw, xw = labels_w.shape
    z, y, x = zyx
    n = z.numel()
    lab_f, hu_f, edge_f = labels_w.flatten(), hu_w.flatten(), edge_w.flatten()
    acc = torch.zeros((4, n * _N_LABELS), dtype=torch.float32, device=z.device)  # inner sum, count; all sum, count
    slot = torch.arange(n, device=z.device) * _N_LABELS
    for dy in range(-reach, reach + 1, reach):
        for dx in range(-reach, reach + 1, reach):
            i = (z * yw + (y + dy).clamp(0, yw - 1)) * xw + (x + dx).clamp(0, xw - 1)
            hu = hu_f[i].float()
            inner = (~edge_f[i]).float()
            acc.index_add_(1, slot + lab_f[i].long(), torch.stack([hu * inner, inner, hu, torch.ones_like(hu)]))
    acc = acc.view(4, n, _N_LABELS)
    return torch.where(acc[1] > 0, acc[0] / acc[1], acc[2] / acc[3])  # 0 / 0 = nan where absent


def _decide(hu: torch.Tensor, nearest: torch.Tensor, means: torch.Tensor, p: Params) -> torch.Tensor:
    """Labels ``(n, m)`` of the input voxels of ``n`` band work voxels.

    ``hu`` and ``nearest`` (the work grid's label) per input voxel; ``means`` ``(n, 4)``, each label's mean HU
    round the work voxel (nan where that label is absent).
    """
    out = nearest.clone()
    # Lung or not, where the lung meets what is not lung: aerated voxels are lung, tissue beside
    # normal lung is the wall; tissue of a lesion on the wall stays the lesion's.
    bg = ~torch.isnan(means[:, Label.BACKGROUND])[:, None]
    lesion = nearest >= Label.GGO
    in_lung = torch.where(bg, (hu < p.air_hu) | lesion, nearest > 0)
    out[~in_lung] = Label.BACKGROUND
    # Inside the lung: the lung label whose mean HU round here is nearest (the half-maximum edge
    # between them); denser than any lesion (a vessel) or tissue on the wall: as the work grid had it.
    lung_means = means[:, None, Label.LUNG:]  # (n, 1, 3)
    dist = (hu[..., None] - lung_means).abs()
    dist = torch.where(torch.isnan(dist), torch.full_like(dist, float("inf")), dist)
    best = (dist.argmin(dim=2) + Label.LUNG).to(out.dtype)
    free = in_lung & (hu <= p.consolidation_hu[1]) & ~(bg & (hu >= p.air_hu)) & torch.isfinite(dist.amin(dim=2))
    out[free] = best[free]
    # Below the ground-glass window nothing is a lesion, whatever lies round it.
    out[in_lung & (hu < p.ggo_hu[0])] = Label.LUNG
    grown = in_lung & ~free & (nearest == Label.BACKGROUND)
    out[grown] = Label.LUNG
    return out


def refine_labels(hu: torch.Tensor, hu_w: torch.Tensor, labels_w: torch.Tensor, sides_w: torch.Tensor,
                  factors: tuple[int, int, int], p: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """The work grid's labels and side map on the input grid, with every boundary re-decided at full resolution.

    Parameters
    ----------
    hu, hu_w : torch.Tensor
        HU ``(Z, Y, X)`` on the input grid and on the work grid (its block means), canonical orientation.
    labels_w, sides_w : torch.Tensor
        uint8 work-grid labels (:class:`model.labels.Label`) and side map (:class:`model.lungs.Side`).
    factors : tuple of int
        Input voxels per work voxel along ``(z, y, x)``.
    p : Params
        HU thresholds (``air_hu``, ``consolidation_hu``).

    Returns
    -------
    labels, sides : torch.Tensor
        uint8 ``(Z, Y, X)`` on the input grid; every lung voxel has a side.
    """
    shape = (int(hu.shape[0]), int(hu.shape[1]), int(hu.shape[2]))
    # One uint8 code per voxel (side << 2 | label), repeated to the input grid in one pass.
    sides_w = torch.where(labels_w > 0, sides_w, torch.zeros_like(sides_w))
    code = upsample((sides_w << _SIDE_SHIFT) | labels_w, factors, shape)
    if tuple(factors) != (1, 1, 1):
        reach = (1 if factors[0] > 1 else 0, 1, 1)
        bits_w = _present(labels_w, reach)
        # The input voxels of the work voxels with more than one label near: the boundary band.
        edge_w = (bits_w & (bits_w - 1)) > 0
        at = torch.nonzero(edge_w.flatten()).squeeze(1)
        zyx = _unravel(at, tuple(labels_w.shape))
        zf, yf, xf = _block_voxels(zyx, factors)
        n = zf.shape[1]
        means = _class_means(hu_w, labels_w, edge_w, zyx, 2)  # each side's density, from up to two work voxels away
        labs = torch.arange(_N_LABELS, device=at.device)
        near_labels = ((bits_w.flatten()[at][:, None] >> labs) & 1).bool()  # (n, 4): the labels one work voxel round
        means = torch.where(near_labels, means, torch.full_like(means, float("nan")))
        flat = (zf * shape[1] + yf) * shape[2] + xf
        decided = _decide(hu.reshape(-1)[flat].float(), labels_w.flatten()[at][:, None].expand(-1, n), means, p)
        # Sides: none outside the lung; a voxel added to the lung takes the side of the work voxels round it.
        side = sides_w.flatten()[at][:, None].expand(-1, n)
        side_near = sides_w.flatten()[_neighbours(zyx, tuple(labels_w.shape), reach)].amax(dim=1)[:, None].expand(-1, n)
        side = torch.where(decided == 0, torch.zeros_like(side), torch.where(side == 0, side_near, side))
        code.view(-1)[flat] = (side << _SIDE_SHIFT) | decided
        # Lesion voxels that touch at most one other (face to face) are noise the per-voxel decision
        # left, specks and pairs off the lesion's edge (or a thin line's end): normal lung. Then the
        # specks that pass left.
        for most in (1, 0):
            speck = (decided >= Label.GGO) & (_lesion_neighbours(code, zf, yf, xf) <= most)
            if not bool(speck.any()):
                break
            decided = torch.where(speck, torch.full_like(decided, Label.LUNG), decided)
            code.view(-1)[flat[speck]] = (side[speck] << _SIDE_SHIFT) | Label.LUNG
    return code & (_N_LABELS - 1), code >> _SIDE_SHIFT


def _lesion_neighbours(code: torch.Tensor, zf: torch.Tensor, yf: torch.Tensor, xf: torch.Tensor) -> torch.Tensor:
    """How many of the six face neighbours of the given voxels carry a lesion label in ``code`` (0 outside the volume)."""
    z, y, x = code.shape
    flat = code.view(-1)
    count = torch.zeros(zf.shape, dtype=torch.uint8, device=code.device)
    for dz, dy, dx in ((-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)):
        zz, yy, xx = zf + dz, yf + dy, xf + dx
        inside = (zz >= 0) & (zz < z) & (yy >= 0) & (yy < y) & (xx >= 0) & (xx < x)
        i = (zz.clamp(0, z - 1) * y + yy.clamp(0, y - 1)) * x + xx.clamp(0, x - 1)
        count += (inside & ((flat[i] & (_N_LABELS - 1)) >= Label.GGO)).to(torch.uint8)
    return count


def _block_voxels(zyx: _Zyx, factors: tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
    """Input-grid indices ``(n, fz * fy * fx)`` of the work voxels with indices ``zyx``."""
    fz, fy, fx = factors
    z, y, x = zyx
    dev = z.device
    a, b, c = torch.meshgrid(torch.arange(fz, device=dev), torch.arange(fy, device=dev), torch.arange(fx, device=dev),
                             indexing="ij")
    return ((z[:, None] * fz + a.flatten()), (y[:, None] * fy + b.flatten()), (x[:, None] * fx + c.flatten()))
