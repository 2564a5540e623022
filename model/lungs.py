"""Lung segmentation: the body, the aerated lungs, their left/right split and the pleural cavity.

Works on the coarse grid (about 4 mm), where connected components are cheap,
in canonical orientation (Z superior, Y posterior, X to the patient's left);
the lung mask ends on the work grid (about 2 mm), where lesions are found.
Dense disease counts as lung where the aerated lung encloses it in-plane
(:func:`side_regions`), where the per-slice hull of that lung spans it
(the pleural cavity), and, where one lung has lost most of its outline in a
slice (a consolidated lobe), inside the other lung mirrored about the midline.
Where a lesion has taken the lung's border, the hull is seeded with the border
the lung had: on the chest wall at the other lung's mirrored depth below the
skin (inside the ribs), beside the spine at the other lung's mirrored medial
border.
Masks are bool ``(Z, Y, X)``; side maps are uint8 with :class:`Side` values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .grid import Grid, ReducedGrid, radius_voxels
from .morphology import closing, dilate, erode, fill_2d, hull_2d, label, opening, shift, upsample
from .params import Params

__all__ = [
    "Chest",
    "Side",
    "aerated_lungs",
    "body_edge",
    "find_body",
    "looks_like_lungs",
    "one_lung_only",
    "partial_coverage",
    "side_regions",
    "split_sides",
    "work_grid_lungs",
]


class Side:
    """Values of a side map: which lung a voxel belongs to."""

    NONE = 0
    RIGHT = 1  # the patient's right: smaller X
    LEFT = 2
    NAMED = ((RIGHT, "right"), (LEFT, "left"))


@dataclass(frozen=True)
class Chest:
    """The patient's body on the coarse grid.

    Attributes
    ----------
    grid : ReducedGrid
        Coarse HU ``(Z, Y, X)``, spacing (mm) and the factors from the work grid.
    body : torch.Tensor
        bool: tissue of the largest component, blankets and the table cut off.
    body_fill : torch.Tensor
        bool: ``body`` with every slice's enclosed holes filled (the outline).
    """

    grid: ReducedGrid
    body: torch.Tensor
    body_fill: torch.Tensor


def find_body(coarse: ReducedGrid, p: Params) -> Chest:
    """Tissue, opened to cut blankets and bridges to the table, largest component.

    Parameters
    ----------
    coarse : ReducedGrid
        Coarse-grid HU in canonical orientation.
    p : Params
        Thresholds (``body_hu``, ``body_open_mm``).

    Returns
    -------
    Chest
    """
    tissue = coarse.hu > p.body_hu
    opened = opening(tissue, radius_voxels(p.body_open_mm, coarse.spacing_mm))
    lab, sizes = label(opened)
    body = torch.zeros_like(tissue)
    if sizes.numel() > 1:
        biggest = int(torch.argmax(sizes[1:])) + 1
        body = dilate(lab == biggest, radius_voxels(p.body_open_mm, coarse.spacing_mm)) & tissue
    return Chest(grid=coarse, body=body, body_fill=fill_2d(body))


def _internal_air(chest: Chest, p: Params) -> torch.Tensor:
    """Air inside the body outline that is not connected to outside air (bool ``(Z, Y, X)``).

    Ground glass counts (``p.internal_air_hu``): the lung it fills is still the lung's air space.
    """
    air = (chest.grid.hu < p.internal_air_hu) & chest.body_fill
    lab, sizes = label(air)
    edge = torch.zeros_like(air)
    edge[:, 0, :] = edge[:, -1, :] = edge[:, :, 0] = edge[:, :, -1] = True
    outside_ids = torch.unique(lab[edge & air])
    is_outside = torch.zeros(sizes.numel(), dtype=torch.bool, device=air.device)
    is_outside[outside_ids] = True
    is_outside[0] = True
    return ~is_outside[lab]


def aerated_lungs(chest: Chest, p: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """The aerated lungs: internal air, cut off the airways, small parts (gut gas) dropped.

    Parameters
    ----------
    chest : Chest
        The body on the coarse grid.
    p : Params
        Thresholds (``air_hu``, ``airway_erode_mm``, ``min_lung_part_frac``).

    Returns
    -------
    lung : torch.Tensor
        bool ``(Z, Y, X)`` on the coarse grid.
    hilar : torch.Tensor
        bool, the part of ``lung`` that is the last regrown layer beside the midline: the stubs of the
        main and lobar bronchi at the hila, and the lungs' medial skin there. It closes and fills no
        region (:func:`side_regions`): a bronchus beside its artery would take the artery into the lung.
    """
    internal = _internal_air(chest, p)
    hilar = torch.zeros_like(internal)
    # Erode to cut the main bronchi and the trachea off the lungs; the
    # airway remnants are small components and are dropped below.
    r_air = radius_voxels(p.airway_erode_mm, chest.grid.spacing_mm)
    core = erode(internal, r_air)
    lab, sizes = label(core)
    sizes[0] = 0
    lung = torch.zeros_like(core)
    if sizes.numel() > 1:
        keep = sizes >= max(float(sizes.max()) * p.min_lung_part_frac, 20.0 / chest.grid.voxel_ml)
        # A scan that stops inside the lungs cuts them to thin crescents: smaller cores that run into
        # the first or last slice count (gas-only "lungs" fail looks_like_lungs).
        cut = torch.zeros_like(keep)
        cut[torch.unique(torch.cat([lab[0].flatten(), lab[-1].flatten()]))] = True
        keep |= cut & (sizes >= p.min_lung_fragment_ml / chest.grid.voxel_ml)
        keep[0] = False
        keep |= _lung_fragments(internal, lab, sizes, keep, chest, p)
        lung = keep[lab]
        # Regrow to the lung surface, only through internal air; as far as
        # the erosion went and one more, so airways regrow only a stub (the
        # one more, beside the midline, is the hilar bronchi's).
        step = (min(1, r_air[0]), min(1, r_air[1]), min(1, r_air[2]))
        for _ in range(max(r_air)):
            lung = dilate(lung, step) & internal
        last = dilate(lung, step) & internal & ~lung
        lung = lung | last
        mid, width = _midline(chest.body)
        xs = torch.arange(lung.shape[2], device=lung.device, dtype=torch.float32)
        hilar = last & ((xs - mid).abs() <= p.airway_band_frac * width)[None, None, :]
    return lung, hilar


def _lung_fragments(internal: torch.Tensor, lab: torch.Tensor, sizes: torch.Tensor, keep: torch.Tensor,
                    chest: Chest, p: Params) -> torch.Tensor:
    """Small cores that are pieces of a lung: opacities cut the aerated lung into parts the erosion separates.

    A core of at least ``p.min_lung_fragment_ml`` is kept when, before the erosion, its air is one with a
    kept lung's, and it lies away from the midline (the trachea and main bronchi lie near it). Gut gas
    is air of its own under the diaphragm and stays out. Returns a bool per core id.
    """
    out = torch.zeros_like(keep)
    small = (sizes >= p.min_lung_fragment_ml / chest.grid.voxel_ml) & ~keep
    small[0] = False
    if not bool(small.any()) or not bool(keep.any()):
        return out
    air_lab, _ = label(internal)
    ids = lab.flatten()
    air_of_core = torch.zeros(sizes.numel(), dtype=air_lab.dtype, device=lab.device)
    air_of_core.scatter_reduce_(0, ids, air_lab.flatten(), reduce="amax")  # every core lies in one air component
    lung_air = torch.zeros(int(air_lab.max()) + 1, dtype=torch.bool, device=lab.device)
    lung_air[air_of_core[keep]] = True
    xs = torch.arange(lab.shape[2], device=lab.device, dtype=torch.float32).expand_as(lab).flatten()
    centre_x = torch.zeros(sizes.numel(), device=lab.device).scatter_add_(0, ids, xs) / sizes.clamp(min=1).float()
    mid, width = _midline(chest.body)
    lateral = (centre_x - mid).abs() > p.airway_band_frac * width
    return small & lung_air[air_of_core] & lateral


def partial_coverage(lung: torch.Tensor) -> bool:
    """Whether the lung mask runs into the volume's first or last slice: the scan stops inside the lungs."""
    return lung.shape[0] > 0 and bool(lung[0].any() or lung[-1].any())


def looks_like_lungs(chest: Chest, lung: torch.Tensor, p: Params) -> bool:
    """Whether ``lung`` (coarse bool mask) is large enough and holds parenchyma, not gas only.

    Lungs the scan cuts (:func:`partial_coverage`: the bases of an abdominal CT, part of a chest)
    need only ``p.min_partial_lung_ml``.
    """
    lung_ml = float(lung.sum()) * chest.grid.voxel_ml
    # Lung parenchyma is air plus tissue (about -850 HU); pure gas (bowel,
    # a phantom's air pockets) has no parenchyma and is no lung.
    gas_only = lung_ml > 0 and float(chest.grid.hu[lung].float().median()) < p.max_gas_median_hu
    least = p.min_partial_lung_ml if partial_coverage(lung) else p.min_lung_ml
    return not (lung_ml < least or gas_only)


def _midline(body: torch.Tensor) -> tuple[float, float]:
    """The body's midline column and its width in columns, over the whole volume (the array's when empty)."""
    x = body.shape[2]
    cols = body.any(dim=0).any(dim=0)
    if not bool(cols.any()):
        return (x - 1) / 2.0, float(x)
    idx = torch.nonzero(cols).squeeze(1).float()
    return float(idx.min() + idx.max()) / 2.0, float(idx.max() - idx.min() + 1)


def _slice_midlines(body_fill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per slice, the body's midline column and width, float ``(Z, 1)``; a slice without body: the array's."""
    x = body_fill.shape[2]
    xs = torch.arange(x, device=body_fill.device, dtype=torch.float32)
    cols = body_fill.any(dim=1)  # (Z, X)
    lo = torch.where(cols, xs, torch.full_like(xs, float(x))).amin(dim=1)
    hi = torch.where(cols, xs, torch.full_like(xs, -1.0)).amax(dim=1)
    has = cols.any(dim=1)
    mid = torch.where(has, (lo + hi) / 2.0, torch.full_like(lo, (x - 1) / 2.0))
    width = torch.where(has, hi - lo + 1, torch.full_like(lo, float(x)))
    return mid[:, None], width[:, None]


def _slice_centroids(body: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per slice, the body's centre row and column, float ``(Z,)`` each (0 for a slice without body)."""
    _, y, x = body.shape
    ys = torch.arange(y, device=body.device, dtype=torch.float32)[None, :, None]
    xs = torch.arange(x, device=body.device, dtype=torch.float32)[None, None, :]
    count = body.sum(dim=(1, 2)).clamp(min=1).float()
    return (body.float() * ys).sum(dim=(1, 2)) / count, (body.float() * xs).sum(dim=(1, 2)) / count


def split_sides(lung: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
    """Side map of the lung mask: :attr:`Side.RIGHT` (smaller X), :attr:`Side.LEFT` (larger X).

    Each slice is cut at the column with the fewest lung voxels within 12 %
    of the body width of the body's midline; touching lungs are thus split
    at their thinnest junction, separate lungs in their gap.

    Parameters
    ----------
    lung, body : torch.Tensor
        bool ``(Z, Y, X)``, canonical orientation, any grid.

    Returns
    -------
    torch.Tensor
        uint8 ``(Z, Y, X)``: 0 outside the lung, else the side.
    """
    z, _, x = lung.shape
    xs = torch.arange(x, device=lung.device, dtype=torch.float32)
    mid, width = _midline(body)
    counts = lung.sum(dim=1).float()  # (Z, X)
    # Smooth across z so one slice's noise cannot jump the cut.
    counts = F.avg_pool1d(counts.T[None], 3, 1, 1, count_include_pad=False)[0].T
    window = (xs - mid).abs() <= 0.12 * width
    cost = torch.where(window, counts + 1e-3 * (xs - mid).abs(), torch.full_like(counts, float("inf")))
    cut = torch.argmin(cost, dim=1)  # (Z,)
    left = xs[None, :] > cut[:, None].float()  # (Z, X)
    side = torch.zeros(lung.shape, dtype=torch.uint8, device=lung.device)
    side[lung & left[:, None, :]] = Side.LEFT
    side[lung & ~left[:, None, :]] = Side.RIGHT
    return side


def one_lung_only(side: torch.Tensor, voxel_ml: float) -> bool:
    """Whether one lung of the side map has less than a tenth of the other's volume."""
    side_ml = [float((side == s).sum()) * voxel_ml for s in (Side.RIGHT, Side.LEFT)]
    return min(side_ml) < 0.1 * max(side_ml)


def body_edge(body_c: torch.Tensor, sp_c: tuple[float, float, float]) -> torch.Tensor:
    """The outer ~1 coarse voxel of the body (skin), never lung; not the tissue around the lungs."""
    filled = fill_2d(body_c)
    return filled & ~erode(filled, (0, 1, 1))


def side_regions(chest: Chest, side: torch.Tensor, hilar: torch.Tensor, p: Params) -> torch.Tensor:
    """Lung regions per side: closed (peripheral dense lesions) and filled (central ones).

    The bronchial stubs at the hila (``hilar``) are lung but close and fill nothing: a bronchus
    beside its artery would enclose the artery. Never across the midline or outside the body.
    Returns a uint8 side map ``(Z, Y, X)`` on the coarse grid.
    """
    region = torch.zeros(chest.grid.shape, dtype=torch.uint8, device=side.device)
    r_close = radius_voxels(p.lung_close_mm, chest.grid.spacing_mm)
    r_close = (min(r_close[0], 1), r_close[1], r_close[2])  # mostly in-plane: keep domes apart from the liver
    allowed = chest.body_fill & ~body_edge(chest.body, chest.grid.spacing_mm)
    for s in (Side.RIGHT, Side.LEFT):
        own = side == s
        m = own & ~hilar
        m = (fill_2d(closing(m, r_close) | m) & allowed) | own
        region[m & (region == 0)] = s
    return region


def _diaphragm_domes(tissue: torch.Tensor, region: torch.Tensor, sp_c: tuple[float, float, float], p: Params) -> torch.Tensor:
    """Tissue enclosed in-plane by the basal lung but continuous, straight up, with the tissue below the lungs.

    Diaphragm domes (and the heart on them), grown upward from the lung bases
    through tissue, at most ``dome_mm`` high, one voxel narrower per slice: a dome
    narrows as it rises, a lesion standing on it widens. Seeds only in the band of the
    lung bases, so tissue beside a lesion on the chest wall higher up never
    counts as a dome.
    """
    n_dome = max(1, int(round(p.dome_mm / sp_c[0])))
    z_lung = torch.nonzero(region.flatten(1).any(dim=1)).squeeze(1)
    z_base = int(z_lung.min()) if z_lung.numel() else 0
    base_band = torch.zeros_like(tissue)
    base_band[: z_base + 1] = True
    dome = tissue & (region == 0) & base_band
    for _ in range(2 * n_dome):
        dome = dome | (tissue & shift(erode(dome, (0, 1, 1)), 0, 1))
    return dome


def _mediastinum(side_c: torch.Tensor, body_fill_c: torch.Tensor, bay: tuple[int, int, int], heart: torch.Tensor,
                 solid: torch.Tensor) -> torch.Tensor:
    """Per slice and row, the columns between the right lung's most medial voxel and the left lung's.

    A row with one lung only runs from that lung to the body's midline. By ``bay`` (rows ``lo``,
    ``hi``; columns ``depth``), outside the rows of the ``heart``, the left lung's medial border where
    it steps out by at least ``depth`` over a run of rows, with the border further in both in front
    and behind, ``lo`` to ``hi`` rows apart, is a lesion the lung wraps round, not mediastinum: the
    border there goes in as far as the nearer of the two, but no further than the right lung's
    medial border, mirrored, and never across a coarse voxel of fat or air (not ``solid``).
    """
    x = side_c.shape[2]
    xs = torch.arange(x, device=side_c.device, dtype=torch.float32)
    right, left = side_c == Side.RIGHT, side_c == Side.LEFT
    mid, _ = _slice_midlines(body_fill_c)  # (Z, 1)
    r_max = torch.where(right, xs, torch.full_like(xs, -1.0)).amax(dim=2)  # (Z, Y)
    l_min = torch.where(left, xs, torch.full_like(xs, float(x))).amin(dim=2)
    has_r, has_l = r_max >= 0, l_min < x
    r_edge = torch.where(has_r, r_max, mid.expand_as(r_max))
    l_edge = torch.where(has_l, l_min, mid.expand_as(l_min))
    inf = float("inf")
    floor = torch.where(has_r, 2.0 * mid - r_max, torch.full_like(r_max, inf)).masked_fill(heart.any(dim=2), inf)
    # The last fat or air voxel medial of the aerated lung (its partial-volume rim aside).
    stop = torch.where(~solid & (xs < (l_min - 1.0)[..., None]), xs, torch.full_like(xs, -1.0)).amax(dim=2) + 1.0
    l_edge = torch.where(has_l, _bridged(l_min.masked_fill(~has_l, inf), bay, floor, stop), l_edge)
    return (xs > r_edge[..., None]) & (xs < l_edge[..., None]) & (has_r | has_l)[..., None]


def _bridged(edge: torch.Tensor, bay: tuple[int, int, int], floor: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """A medial border ``(Z, Y)`` (distance outward, inf where none) bridged over runs of rows where it steps out.

    Where, within ``hi`` rows in front and within ``hi`` rows behind, the border lies at least
    ``depth`` further in, and those rows are at least ``lo`` apart, the border here is the nearer of
    the two, but not further in than ``floor`` (inf: not bridged) nor than the further of the two,
    and never further in than ``stop``.
    """
    lo, hi, depth = bay
    inf = float("inf")
    y = edge.shape[1]
    before = torch.full_like(edge, inf)
    after = torch.full_like(edge, inf)
    b_at = torch.zeros_like(edge)
    a_at = torch.zeros_like(edge)
    for k in range(1, min(hi, y - 1) + 1):
        prev = torch.full_like(edge, inf)
        prev[:, k:] = edge[:, :-k]
        nxt = torch.full_like(edge, inf)
        nxt[:, :-k] = edge[:, k:]
        better = prev < before
        before = torch.where(better, prev, before)
        b_at = torch.where(better, torch.full_like(edge, float(k)), b_at)
        better = nxt < after
        after = torch.where(better, nxt, after)
        a_at = torch.where(better, torch.full_like(edge, float(k)), a_at)
    cap = torch.minimum(torch.maximum(before, after), torch.maximum(torch.minimum(before, after), floor))
    cap = torch.maximum(cap, stop)
    bridge = ((b_at + a_at) >= lo) & torch.isfinite(floor) & torch.isfinite(cap) & (edge - cap >= depth)
    return torch.where(bridge, cap, edge)


def _heart(tissue: torch.Tensor, region: torch.Tensor, sp_c: tuple[float, float, float], p: Params) -> torch.Tensor:
    """The heart and what stands on the diaphragm with it: tissue grown up, slice by slice, from below the lung bases.

    Each slice keeps the tissue outside the lung regions that lies within the slice below it, one
    coarse voxel narrower every ``p.heart_narrow_mm``: the heart narrows as it rises; a lesion
    above it, off its axis, is never reached.
    """
    heart = torch.zeros_like(tissue)
    z_lung = torch.nonzero(region.flatten(1).any(dim=1)).squeeze(1)
    if z_lung.numel() == 0:
        return heart
    z_base = int(z_lung.min())
    free = tissue & (region == 0)
    heart[: z_base + 1] = free[: z_base + 1]
    every = max(1, int(round(p.heart_narrow_mm / sp_c[0])))
    for z in range(z_base + 1, tissue.shape[0]):
        below = heart[z - 1: z]
        if (z - z_base) % every == 0:
            below = erode(below, (0, 1, 1))
        heart[z] = free[z] & below[0]
        if not bool(heart[z].any()):
            break
    return heart


def _skin_depth(body_fill: torch.Tensor, sp_c: tuple[float, float, float], max_mm: float) -> torch.Tensor:
    """In-plane depth below the skin (mm, float ``(Z, Y, X)``), up to ``max_mm``: alternate box and cross erosions."""
    depth = torch.zeros(body_fill.shape, dtype=torch.float32, device=body_fill.device)
    m = body_fill
    step = 0.5 * (sp_c[1] + sp_c[2])
    for i in range(int(max_mm / step)):
        if i % 2:
            m = erode(m, (0, 1, 1))
        else:
            m = erode(m, (0, 1, 0)) & erode(m, (0, 0, 1))
        if not bool(m.any()):
            break
        depth += m.float()
    return depth * step


@dataclass(frozen=True)
class _Sectors:
    """Per slice, ``n`` angular sectors round the body's centre: each voxel's flat (slice, sector) index."""

    n: int
    flat: torch.Tensor  # long (Z * Y * X,): slice * n + sector
    centre: torch.Tensor  # (n,) sector directions in radians; +x the patient's left, +pi/2 posterior
    cx: torch.Tensor  # (Z,) the body's centre column per slice

    @staticmethod
    def of(body: torch.Tensor, sp: tuple[float, float, float], n: int) -> "_Sectors":
        z, y, x = body.shape
        dev = body.device
        ys = torch.arange(y, device=dev, dtype=torch.float32)[None, :, None]
        xs = torch.arange(x, device=dev, dtype=torch.float32)[None, None, :]
        cy, cx = _slice_centroids(body)
        theta = torch.atan2((ys - cy[:, None, None]) * sp[1], (xs - cx[:, None, None]) * sp[2])
        b = ((theta + math.pi) / (2 * math.pi) * n).long().clamp(0, n - 1)
        flat = (torch.arange(z, device=dev)[:, None, None] * n + b).flatten()
        centre = -math.pi + (torch.arange(n, device=dev).float() + 0.5) * 2 * math.pi / n
        return _Sectors(n, flat, centre, cx)

    def reduce(self, values: torch.Tensor, fill: float, how: str) -> torch.Tensor:
        """``amin`` or ``amax`` of ``values`` (float ``(Z, Y, X)``) per slice and sector, ``(Z, n)``."""
        z = values.shape[0]
        out = torch.full((z * self.n,), fill, device=values.device)
        return out.scatter_reduce_(0, self.flat, values.flatten(), reduce=how).view(z, self.n)

    def spread(self, per_sector: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """A ``(Z, n)`` value at every voxel of its sector."""
        return per_sector.flatten()[self.flat].view(shape)


def _wall_seeds(side_c: torch.Tensor, chest: Chest, p: Params) -> torch.Tensor:
    """Where one lung has left the chest wall that the other lung, mirrored, still touches: its expected surface.

    The chest wall is symmetric and about as thick at one level all round the lung. Per slice and
    direction from the body's centre (``p.wall_bins`` sectors), the lung's nearest voxel to the skin
    lies at the wall's depth, just inside the ribs. A lesion on the wall pushes that depth inward (or
    takes the whole sector); where it lies more than ``p.wall_tol_mm`` deeper than the other lung's in
    the mirrored sector (and than this side's ribs), the voxels at that depth are seeds of this lung's
    outline. Not in front and behind, where the heart and the spine keep the lungs off the wall
    unevenly, nor where the heart's apex meets the wall left and in front.
    Returns a uint8 side map of the seeds.
    """
    out = torch.zeros_like(side_c)
    body, sp = chest.body_fill, chest.grid.spacing_mm
    if not bool(body.any()):
        return out
    depth = _skin_depth(body, sp, p.wall_max_mm)
    sec = _Sectors.of(body, sp, int(p.wall_bins))
    inf = float("inf")
    obs = {s: sec.reduce(torch.where(side_c == s, depth, torch.full_like(depth, inf)), inf, "amin")
           for s in (Side.RIGHT, Side.LEFT)}
    bins = torch.arange(sec.n, device=side_c.device)
    mirror = (sec.n // 2 - bins - 1) % sec.n
    front = sec.centre + math.pi / 2  # 0 straight ahead, positive towards the patient's left
    ant = front.abs() < math.radians(p.wall_skip_deg[0])
    post = (sec.centre - math.pi / 2).abs() < math.radians(p.wall_skip_deg[1])
    heart = (front >= 0) & (front < math.radians(p.wall_skip_deg[2]))
    usable = {Side.RIGHT: ~(ant | post), Side.LEFT: ~(ant | post | heart)}
    step = 0.5 * (sp[1] + sp[2])
    # The deepest bone per sector, over a few slices (ribs run obliquely): the lung lies inside it.
    bone = (chest.grid.hu > p.bone_hu) & body & (depth < p.wall_max_mm)
    rib = sec.reduce(torch.where(bone, depth, torch.full_like(depth, -1.0)), -1.0, "amax")
    kz = 2 * max(1, int(round(p.rib_z_mm / sp[0]))) + 1
    rib = F.max_pool1d(rib.T[None], kz, 1, kz // 2)[0].T
    xs = torch.arange(side_c.shape[2], device=side_c.device, dtype=torch.float32)[None, None, :]
    for s, o in ((Side.RIGHT, Side.LEFT), (Side.LEFT, Side.RIGHT)):
        want = torch.maximum(obs[o][:, mirror], rib + step)  # (Z, n)
        lost = torch.isfinite(want) & (obs[s] > want + p.wall_tol_mm) & (want < p.wall_max_mm - step) & usable[s][None, :]
        on_side = (xs < sec.cx[:, None, None]) if s == Side.RIGHT else (xs > sec.cx[:, None, None])
        want_v = sec.spread(want, side_c.shape)
        seed = sec.spread(lost, side_c.shape) & on_side & body & (depth >= want_v) & (depth < want_v + 1.5 * step)
        out[seed & (out == 0)] = s
    return out


def _medial_seeds(side_c: torch.Tensor, chest: Chest, solid: torch.Tensor, p: Params) -> torch.Tensor:
    """Beside the spine, where one lung's medial border lies far off the other's mirrored: its expected border.

    Beside the spine and behind the heart the lungs' medial borders are about symmetric: per slice row
    from ``p.medial_ahead_mm`` in front of the vertebral body back (for the right lung in every row: the
    heart pushes the left lung's border out, never the right's in), a lung whose most medial voxel lies
    more than ``p.medial_tol_mm`` (right, left) further from the body's midline than the other lung's
    (or that has none in the row) has lost its medial part to a lesion; the other lung's medial border,
    mirrored, is a seed of its outline. The left tolerance exceeds the aorta's width, which moves the
    left border out. A lesion is solid: between the lung and the seed, at most ``p.solid_frac`` of the
    coarse voxels may be fat or air (not ``solid``), as they are beside the azygos, the oesophagus and
    the hilum. Returns a uint8 side map of the seeds.
    """
    z, y, x = side_c.shape
    dev = side_c.device
    out = torch.zeros_like(side_c)
    body = chest.body_fill
    if not bool(body.any()):
        return out
    xs = torch.arange(x, device=dev, dtype=torch.float32)
    ys = torch.arange(y, device=dev, dtype=torch.float32)
    inf = float("inf")
    mid, width = _slice_midlines(body)  # (Z, 1)
    cy, _ = _slice_centroids(body)
    # From the front of the vertebral body back: the bone near the midline behind the body's centre.
    spine = (chest.grid.hu > p.bone_hu) & ((xs[None, :] - mid).abs() < p.spine_band_frac * width)[:, None, :]
    spine &= (ys[None, :] > cy[:, None])[:, :, None]
    front = torch.where(spine.any(dim=2), ys[None, :].expand(z, y), torch.full((z, y), inf, device=dev)).amin(dim=1)
    posterior = ys[None, :] >= front[:, None] - p.medial_ahead_mm / chest.grid.spacing_mm[1]  # (Z, Y); a slice without spine: none
    sp_x = chest.grid.spacing_mm[2]
    dist = {}
    for s in (Side.RIGHT, Side.LEFT):
        d = (mid - xs[None, :]) if s == Side.RIGHT else (xs[None, :] - mid)  # (Z, X): distance from the midline
        d = torch.where(d[:, None, :] > 0, d[:, None, :].expand(z, y, x), torch.full((1, 1, 1), inf, device=dev))
        dist[s] = torch.where(side_c == s, d, torch.full_like(d, inf)).amin(dim=2)  # (Z, Y)
    for s, o in ((Side.RIGHT, Side.LEFT), (Side.LEFT, Side.RIGHT)):
        want = dist[o]
        rows = posterior if s == Side.LEFT else torch.ones_like(posterior)
        tol = p.medial_tol_mm[0 if s == Side.RIGHT else 1]
        lost = rows & torch.isfinite(want) & (dist[s] > want + tol / sp_x)
        col = (mid - want) if s == Side.RIGHT else (mid + want)  # (Z, Y)
        # The columns from the lung's medial voxel (its partial-volume rim aside) to the seed.
        gap = (dist[s] - want - 1.0)[..., None]  # (Z, Y, 1); inf where the row has no lung
        off = (mid - xs[None, :]) if s == Side.RIGHT else (xs[None, :] - mid)  # (Z, X)
        span = (off[:, None, :] >= want[..., None] - 0.5) & (off[:, None, :] < want[..., None] + gap)
        holes = (span & ~solid).sum(dim=2).float()
        lost &= ~torch.isfinite(dist[s]) | (holes <= p.solid_frac * span.sum(dim=2).float())
        seed = lost[..., None] & ((xs[None, None, :] - col[..., None]).abs() <= 0.5) & body
        out[seed & (out == 0)] = s
    return out


def _pleural_cavity(side_c: torch.Tensor, med: torch.Tensor, body_fill_c: torch.Tensor, sp_c: tuple[float, float, float],
                    p: Params) -> torch.Tensor:
    """Side map of each lung's per-slice convex hull, minus the mediastinum.

    Large consolidations (wider than the closing) fill the space between the
    aerated lung and the chest wall or the mediastinum. Per lung and slice,
    the convex hull of the aerated lung (of a thin slab, so a slice fully
    consolidated still has one) spans it; the chest wall is convex, so the
    hull stays inside it, and the concave medial side (heart, great vessels,
    spine) is removed by the mediastinum ``med`` (:func:`_mediastinum`).
    """
    slab = max(0, int(round(p.cavity_slab_mm / sp_c[0])))
    out = torch.zeros(side_c.shape, dtype=torch.uint8, device=side_c.device)
    for s in (Side.RIGHT, Side.LEFT):
        m = side_c == s
        # Aerated lung both above and below (within the slab) counts too:
        # bridges a consolidation that fills a slice, never extends past the base or apex.
        above, below = torch.zeros_like(m), torch.zeros_like(m)
        for d in range(1, slab + 1):
            above |= shift(m, 0, -d)
            below |= shift(m, 0, d)
        h = hull_2d(m | (above & below), (sp_c[1], sp_c[2])) & ~med & body_fill_c
        out[h & (out == 0)] = s
    return out


def _mirrored_lungs(region: torch.Tensor, chest: Chest, excluded: torch.Tensor, p: Params) -> torch.Tensor:
    """The other lung, mirrored about the body's midline, where one lung has lost most of its outline.

    A consolidated lobe leaves no aerated lung to span: where, in the middle of the lungs' height,
    a slice row of one side's region holds under ``p.mirror_ratio`` of the other side's mirrored, the
    mirrored other lung (two voxels inside) stands for this one. Never in the anterior middle of the chest, where the heart
    makes the two sides differ, nor where ``excluded`` (mediastinum, domes, skin, air) says no.

    Returns a uint8 side map on the coarse grid (0 where nothing is added).
    """
    z, y, x = region.shape
    dev = region.device
    out = torch.zeros_like(region)
    present = torch.nonzero(region.flatten(1).any(dim=1)).squeeze(1)
    if present.numel() < 3 or not bool(chest.body_fill.any()):
        return out
    z0, z1 = int(present.min()), int(present.max())
    zs = torch.arange(z, device=dev)
    margin = p.mirror_skip_frac * (z1 - z0)
    middle = (zs >= z0 + margin) & (zs <= z1 - margin)
    xs = torch.arange(x, device=dev, dtype=torch.float32)
    mid, width = _slice_midlines(chest.body_fill)  # (Z, 1)
    idx = (2.0 * mid - xs[None, :]).round().clamp(0, x - 1).long()  # (Z, X): the mirror of each column
    rows = chest.body_fill.any(dim=2).any(dim=0)
    ry = torch.nonzero(rows).squeeze(1).float() if bool(rows.any()) else torch.tensor([0.0, y - 1.0], device=dev)
    ys = torch.arange(y, device=dev, dtype=torch.float32)
    anterior = (ys < float(ry.min() + ry.max()) / 2.0)[None, :, None]
    # The heart lies left of the midline: the mirrored right lung is no guide there over a wider band.
    heart = {Side.RIGHT: anterior & ((xs[None, :] - mid) > -0.25 * width)[:, None, :],
             Side.LEFT: anterior & ((xs[None, :] - mid) < 0.35 * width)[:, None, :]}
    for s, o in ((Side.RIGHT, Side.LEFT), (Side.LEFT, Side.RIGHT)):
        on_side = (xs[None, :] < mid) if s == Side.RIGHT else (xs[None, :] > mid)  # (Z, X)
        mirrored = torch.gather(region == o, 2, idx[:, None, :].expand(z, y, x)) & on_side[:, None, :]
        # Per slice and row: a half-consolidated lobe leaves whole rows (its back) without lung.
        area_s = (region == s).sum(dim=2).float()  # (Z, Y)
        area_m = mirrored.sum(dim=2).float()
        lost = (middle[:, None] & (area_s < p.mirror_ratio * area_m) & (area_m >= 4))[:, :, None]
        # Two voxels (8 mm) inside the mirrored outline: the sides are alike, not equal (the aorta, the heart's edge).
        add = erode(mirrored, (0, 2, 2)) & lost & ~heart[s] & ~excluded & (out == 0) & (region == 0)
        out[add] = s
    return out


def work_grid_lungs(chest: Chest, side: torch.Tensor, region: torch.Tensor, work: Grid, p: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """The lung on the work grid: aerated lung inside the region, plus what lies well inside it.

    Dense lesions and vessels well inside the region count; so do dense voxels
    of the pleural cavity the region does not reach; the diaphragm domes do not.

    Parameters
    ----------
    chest : Chest
        The body on the coarse grid (whose factors lead from the work grid to it).
    side, region : torch.Tensor
        uint8 coarse side maps of the aerated lungs and of their regions (:func:`side_regions`).
    work : Grid
        Work-grid HU.
    p : Params
        Thresholds.

    Returns
    -------
    region_w : torch.Tensor
        uint8 side map ``(Z, Y, X)`` of the regions and the cavity on the work grid.
    lung_w : torch.Tensor
        bool ``(Z, Y, X)`` lung on the work grid.
    """
    sp_c, cf, hu_w = chest.grid.spacing_mm, chest.grid.factors, work.hu
    tissue_c = chest.grid.hu > p.pv_dense_hu
    dome_c = _diaphragm_domes(tissue_c, region, sp_c, p)
    inner_w = upsample(erode(region > 0, (0, 1, 1)) & ~dome_c, cf, work.shape)
    # Where a lesion has taken the lung's border, seeds of the border it had: beside the spine (which
    # also move the mediastinum's edge) and on the chest wall.
    solid_c = chest.grid.hu > p.solid_hu
    medial_c = _medial_seeds(side, chest, solid_c, p)
    seeded = torch.where(medial_c > 0, medial_c, side)
    # A lesion the left lung wraps round in front and behind is no mediastinum; the heart is.
    heart_c = dilate(_heart(tissue_c, region, sp_c, p), (0, 2, 2))
    bay = (round(p.bay_mm[0] / sp_c[1]), round(p.bay_mm[1] / sp_c[1]), max(1, round(p.bay_mm[2] / sp_c[2])))
    med_c = _mediastinum(seeded, chest.body_fill, bay, heart_c, solid_c)
    skin_c = body_edge(chest.body, sp_c)
    wall_c = _wall_seeds(side, chest, p)
    seeded = torch.where(wall_c > 0, wall_c, seeded)
    cavity_c = _pleural_cavity(seeded, med_c, chest.body_fill, sp_c, p)
    no_lung = med_c | skin_c | ~tissue_c | ~chest.body_fill
    # Only solid coarse voxels: a coarse voxel half air, half wall is the lung's own border.
    cavity_c[(region > 0) | dome_c | skin_c | ~tissue_c] = 0
    # The other lung's mirror is evidence of lung, also over tissue standing on the diaphragm.
    mirror_c = _mirrored_lungs(region, chest, no_lung, p)
    cavity_c[(mirror_c > 0) & (cavity_c == 0)] = mirror_c[(mirror_c > 0) & (cavity_c == 0)]
    region = region.clone()
    region[cavity_c > 0] = cavity_c[cavity_c > 0]
    region_w = upsample(region, cf, work.shape)
    ext_w = upsample(cavity_c > 0, cf, work.shape)
    air_w = hu_w < p.air_hu
    dense_tissue = (hu_w >= p.consolidation_hu[0]) & (hu_w <= p.consolidation_hu[1])
    lung_w = (region_w > 0) & (air_w | inner_w | (ext_w & dense_tissue))
    return region_w, lung_w
