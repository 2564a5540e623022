"""Lung and lesion segmentation of a chest CT, and the triage report.

A classical (threshold + morphology) pipeline written as torch tensor ops so
the same code runs on CPU and CUDA. It works on two reduced grids:

* the *work* grid (about 2 mm in-plane) for lesions, where vessels and small
  opacities are still resolved;
* the *coarse* grid (about 4 mm) for the body, the air components and the
  lung/airway separation, where connected components are cheap.

Masks are upsampled by voxel repetition back to the input grid at the end.
All anatomy is handled in a canonical orientation derived from the affine
(Z to superior, Y to posterior, X to the patient's left), so left/right and
up/down never depend on how the input array was stored.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .morphology import closing, dilate, erode, fill_2d, hull_2d, label, opening, upsample
from .timing import Stopwatch
from .volume import Volume, VolumeError

__all__ = ["Analysis", "MODEL_VERSION", "MEDIUM_THRESHOLD", "ZONES", "analyze", "score_from_involvement"]

# Bump whenever any threshold, step or formula below changes: results are
# stored under the model version, so a stale version would mix outputs.
MODEL_VERSION = "lungseg-0.3.0"

ZONES = ("right_upper", "right_middle", "right_lower", "left_upper", "left_middle", "left_lower")

# score = 1 - exp(-involvement_pct / SCORE_SCALE_PCT): 0 at no involvement,
# strictly increasing, 0.865 at 30 % (so >= 30 % always reaches the default
# HIGH threshold of 0.85, which is crossed at 28.5 %).
SCORE_SCALE_PCT = 15.0
# MEDIUM from score 0.30, i.e. about 5.4 % of the lungs involved: beyond
# scattered small opacities, worth a radiologist's look the same day.
MEDIUM_THRESHOLD = 0.30

NOT_A_CHEST = "not_a_chest"


@dataclass(frozen=True)
class _Params:
    work_mm: float = 2.0  # target in-plane / slice spacing of the work grid
    coarse_mm: float = 4.0  # target spacing of the coarse grid
    body_hu: float = -350.0  # tissue vs air (body, table, blankets)
    air_hu: float = -400.0  # aerated lung vs tissue
    body_open_mm: float = 6.0  # cuts blankets and thin bridges to the table
    airway_erode_mm: float = 8.0  # removes trachea (r ~ 9 mm) links and main bronchi (r ~ 6 mm)
    min_lung_ml: float = 300.0  # less than this is not a pair of lungs
    min_lung_part_frac: float = 0.15  # lung cores smaller than this x largest are gut gas etc.
    lung_close_mm: float = 16.0  # lets peripheral dense lesions count as lung
    ggo_hu: tuple[float, float] = (-750.0, -300.0)
    consolidation_hu: tuple[float, float] = (-300.0, 100.0)
    vessel_open_mm: float = 3.0  # opening removes tubes thinner than about 2x this
    min_lesion_ml: float = 0.5  # about a 1 cm sphere
    max_obliquity_deg: float = 20.0  # array axes further than this from a patient axis: oblique
    max_gas_median_hu: float = -960.0  # "lungs" darker than this are gas (bowel, phantoms), not lung
    pv_dense_hu: float = -300.0  # tissue side of a partial-volume edge
    dome_mm: float = 40.0  # how high tissue standing on the diaphragm is followed up into the lung outline
    pv_sheet_mm: tuple[float, float] = (8.0, 4.0)  # GGO this thin on the lung wall (along z, in-plane) is partial volume
    cavity_slab_mm: float = 4.0  # the per-slice lung hull uses the aerated lung this far above and below


PARAMS = _Params()


@dataclass(frozen=True)
class Analysis:
    """The result of :func:`analyze`.

    Attributes
    ----------
    labels : numpy.ndarray
        uint8 ``(Z, Y, X)`` on the input volume's grid: 0 background, 1 lung,
        2 ground-glass opacity, 3 consolidation.
    report : dict
        JSON-serialisable report (see :func:`analyze`).
    overlays : dict of str to numpy.ndarray
        Name (``"axial_057"``, ``"coronal"``) to RGB uint8 ``(H, W, 3)`` image in
        radiological convention.
    """

    labels: np.ndarray = field(repr=False)
    report: dict[str, Any]
    overlays: dict[str, np.ndarray] = field(repr=False)


# -- helpers -----------------------------------------------------------------------------


def _device(device: str | torch.device) -> torch.device:
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cpu":
        # torch defaults to physical cores; the worker owns the machine, use all of it.
        n = os.cpu_count() or 1
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    return dev


@dataclass(frozen=True)
class _Orientation:
    """How to view the input array in canonical (S, P, L) orientation."""

    perm: tuple[int, int, int]  # canonical axis c takes input axis perm[c]
    flip: tuple[int, ...]  # canonical axes to flip after the permutation


def _orientation(affine: np.ndarray) -> _Orientation:
    # Array axis a (Z, Y, X) is affine column 2 - a (i = X, j = Y, k = Z).
    # Canonical axis 0 wants +S (RAS row 2), axis 1 wants -A (row 1), axis 2 wants -R (row 0).
    cols = np.stack([affine[:3, 2 - a] for a in range(3)])  # (array axis, RAS)
    unit = cols / np.linalg.norm(cols, axis=1, keepdims=True)
    perm = [-1, -1, -1]
    flips: list[int] = []
    wanted = {2: (0, 1.0), 1: (1, -1.0), 0: (2, -1.0)}  # RAS row -> (canonical axis, sign)
    worst = float(np.min(np.max(np.abs(unit), axis=1)))
    if worst < math.cos(math.radians(PARAMS.max_obliquity_deg)):
        angle = math.degrees(math.acos(min(1.0, worst)))
        raise VolumeError("bad_orientation", f"an array axis is {angle:.0f} degrees off every patient axis (oblique volume)")
    for a in range(3):
        ras = int(np.argmax(np.abs(unit[a])))
        c, sign = wanted[ras]
        if perm[c] != -1:
            raise VolumeError("bad_orientation", "two array axes point along the same patient axis")
        perm[c] = a
        if np.sign(unit[a, ras]) != sign:
            flips.append(c)
    return _Orientation(perm=(perm[0], perm[1], perm[2]), flip=tuple(flips))


def _to_canonical(t: torch.Tensor, o: _Orientation) -> torch.Tensor:
    t = t.permute(*o.perm)
    return t.flip(o.flip) if o.flip else t


def _from_canonical(t: torch.Tensor, o: _Orientation) -> torch.Tensor:
    if o.flip:
        t = t.flip(o.flip)
    inverse = [0, 0, 0]
    for c, a in enumerate(o.perm):
        inverse[a] = c
    return t.permute(*inverse)


def _finite_hu(hu: np.ndarray) -> torch.Tensor:
    """The volume as a tensor, NaN and infinities replaced; no copy when it is already finite."""
    t = torch.from_numpy(hu) if hu.flags.writeable else None
    # NaN or an infinity anywhere makes the sum NaN or infinite (a finite sum
    # proves all values finite; an overflowing one merely takes the slow path).
    if t is not None and math.isfinite(float(t.sum())):
        return t
    return torch.from_numpy(np.nan_to_num(hu, nan=-1000.0, posinf=3000.0, neginf=-1024.0))


def _factors(spacing: tuple[float, float, float], target_mm: float) -> tuple[int, int, int]:
    f = [max(1, int(math.floor(target_mm / s + 0.5))) for s in spacing]
    return (f[0], f[1], f[2])


def _pool(t: torch.Tensor, factors: tuple[int, int, int]) -> torch.Tensor:
    """Mean over non-overlapping blocks; the remainder at the far edges is cropped."""
    if factors == (1, 1, 1):
        return t
    z, y, x = (s // f * f for s, f in zip(t.shape, factors))
    z, y, x = max(z, factors[0]), max(y, factors[1]), max(x, factors[2])
    t = t[:z, :y, :x]
    fz, fy, fx = factors
    if t.device.type != "cpu" or t.dtype != torch.float32 or z < fz or y < fy or x < fx or t.shape != (z, y, x):
        return F.avg_pool3d(t[None, None], factors, factors)[0, 0]
    # avg_pool3d's CPU kernel sums each block in (z, y, x) order in float32 and
    # divides by the block size; the same sums as strided adds are ~3x faster
    # and bit-identical.
    blocks = t.reshape(z // fz, fz, y // fy, fy, x // fx, fx)
    acc: torch.Tensor | None = None
    for a in range(fz):
        for b in range(fy):
            for c in range(fx):
                part = blocks[:, a, :, b, :, c]
                acc = part.clone() if acc is None else acc.add_(part)
    assert acc is not None
    return acc.div_(fz * fy * fx)


def _radius(mm: float, spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    r = [max(0, int(round(mm / s))) for s in spacing]
    return (r[0], r[1], r[2])


def _keep_large(mask: torch.Tensor, min_voxels: float) -> torch.Tensor:
    lab, sizes = label(mask)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[lab]


def score_from_involvement(involvement_pct: float) -> float:
    """Map total lung involvement (percent) to the triage score in ``[0, 1)``.

    ``score = 1 - exp(-involvement_pct / 15)``; monotone, 0.865 at 30 %.
    """
    return float(1.0 - math.exp(-max(0.0, involvement_pct) / SCORE_SCALE_PCT))


def _zone_grade(pct: float) -> int:
    if pct <= 0.0:
        return 0
    if pct < 25.0:
        return 1
    if pct < 50.0:
        return 2
    if pct < 75.0:
        return 3
    return 4


def _triage(score: float, high_threshold: float) -> str:
    if score >= high_threshold:
        return "HIGH"
    if score >= MEDIUM_THRESHOLD:
        return "MEDIUM"
    return "LOW"


def _check(volume: Volume) -> None:
    z, y, x = volume.shape
    if min(z, y, x) < 8:
        raise VolumeError("too_few_slices", f"need at least 8 voxels along every axis, got shape {volume.shape}")
    if max(volume.spacing_mm) > 20.0:
        raise VolumeError("bad_spacing", f"voxel size {volume.spacing_mm} mm exceeds 20 mm")
    if min(volume.spacing_mm) < 0.05:
        raise VolumeError("bad_spacing", f"voxel size {volume.spacing_mm} mm is implausibly small")


# -- the pipeline -----------------------------------------------------------------------


def analyze(volume: Volume, device: str | torch.device = "auto", *, high_threshold: float = 0.85) -> Analysis:
    """Segment lungs and lesions and score involvement.

    Parameters
    ----------
    volume : Volume
        CT in HU, ``(Z, Y, X)``, with spacing (mm) and affine (RAS+ mm).
    device : str or torch.device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``...
    high_threshold : float
        Score at or above which the triage level is ``HIGH``.

    Returns
    -------
    Analysis
        ``labels`` uint8 ``(Z, Y, X)`` on the input grid, the ``report`` and
        overlay images. The report holds ``model_version``, ``shape`` ``[z, y, x]``,
        ``spacing_mm``, ``lung_volume_ml`` ``{left, right, total}``,
        ``lesion_volume_ml`` ``{ggo, consolidation}``, ``involvement_pct``
        ``{total, zones}`` (percent of lung volume), ``severity_score`` (0-24),
        ``score`` (0-1, see :func:`score_from_involvement`), ``triage_level``,
        ``timings_s``, ``device`` and ``flags``. When no plausible lungs are
        found, ``flags`` holds ``"not_a_chest"``, the score is 0 and the level LOW.

    Raises
    ------
    VolumeError
        ``too_few_slices``, ``bad_spacing`` or ``bad_orientation`` for volumes
        that cannot be a chest CT at all.
    """
    t_start = time.perf_counter()
    _check(volume)
    dev = _device(device)
    watch = Stopwatch(dev, start=t_start)
    timings, lap = watch.timings, watch.lap
    p = PARAMS
    orient = _orientation(volume.affine)
    spacing = tuple(volume.spacing_mm[a] for a in orient.perm)  # canonical (z, y, x) mm
    # float16 halves memory traffic on GPU and keeps HU to 0.5 HU; CPU half math is slow.
    dtype = torch.float16 if dev.type == "cuda" else torch.float32

    with torch.inference_mode():
        hu_in = _finite_hu(volume.hu)
        hu = _to_canonical(hu_in.to(dev, dtype=dtype, non_blocking=True), orient)
        full_shape = (hu.shape[0], hu.shape[1], hu.shape[2])
        wf = _factors(spacing, p.work_mm)  # type: ignore[arg-type]
        hu_w = _pool(hu.float() if dtype == torch.float16 and dev.type == "cpu" else hu, wf)
        sp_w = (spacing[0] * wf[0], spacing[1] * wf[1], spacing[2] * wf[2])
        cf = _factors(sp_w, p.coarse_mm)
        hu_c = _pool(hu_w, cf)
        sp_c = (sp_w[0] * cf[0], sp_w[1] * cf[1], sp_w[2] * cf[2])
        work_shape = (hu_w.shape[0], hu_w.shape[1], hu_w.shape[2])
        coarse_shape = (hu_c.shape[0], hu_c.shape[1], hu_c.shape[2])
        ml_w = sp_w[0] * sp_w[1] * sp_w[2] / 1000.0
        ml_c = sp_c[0] * sp_c[1] * sp_c[2] / 1000.0
        lap("prepare")

        flags: list[str] = []
        # Body: tissue, opened to cut blankets and bridges to the table, largest component.
        tissue = hu_c > p.body_hu
        opened = opening(tissue, _radius(p.body_open_mm, sp_c))
        lab, sizes = label(opened)
        body_c = torch.zeros_like(tissue)
        if sizes.numel() > 1:
            biggest = int(torch.argmax(sizes[1:])) + 1
            body_c = dilate(lab == biggest, _radius(p.body_open_mm, sp_c)) & tissue
        body_fill_c = fill_2d(body_c)
        lap("body")

        # Lungs: air inside the body outline that is not connected to outside air.
        air_c = (hu_c < p.air_hu) & body_fill_c
        lab, sizes = label(air_c)
        edge = torch.zeros_like(air_c)
        edge[:, 0, :] = edge[:, -1, :] = edge[:, :, 0] = edge[:, :, -1] = True
        outside_ids = torch.unique(lab[edge & air_c])
        is_outside = torch.zeros(sizes.numel(), dtype=torch.bool, device=dev)
        is_outside[outside_ids] = True
        is_outside[0] = True
        internal = ~is_outside[lab]
        # Erode to cut the main bronchi and the trachea off the lungs; the
        # airway remnants are small components and are dropped below.
        r_air = _radius(p.airway_erode_mm, sp_c)
        core = erode(internal, r_air)
        lab, sizes = label(core)
        sizes[0] = 0
        lung_c = torch.zeros_like(core)
        if sizes.numel() > 1:
            keep = sizes >= max(float(sizes.max()) * p.min_lung_part_frac, 20.0 / ml_c)
            keep[0] = False
            lung_c = keep[lab]
            # Regrow to the lung surface, only through internal air; as far as
            # the erosion went and one more, so airways regrow only a stub.
            for _ in range(max(r_air) + 1):
                lung_c = dilate(lung_c, tuple(min(1, r) for r in r_air)) & internal  # type: ignore[arg-type]
        lung_ml_coarse = float(lung_c.sum()) * ml_c
        # Lung parenchyma is air plus tissue (about -850 HU); pure gas (bowel,
        # a phantom's air pockets) has no parenchyma and is no lung.
        gas_only = lung_ml_coarse > 0 and float(hu_c[lung_c].float().median()) < p.max_gas_median_hu
        lap("lungs")

        if lung_ml_coarse < p.min_lung_ml or gas_only:
            flags.append(NOT_A_CHEST)
            labels_c = torch.zeros(full_shape, dtype=torch.uint8, device=dev)
            return _finish(volume, orient, labels_c, None, spacing, dev, timings, t_start, flags, high_threshold, hu, lap)

        # Left/right: per slice, cut at the emptiest column near the body's midline.
        side_c = _split(lung_c, body_c)
        lung_ml_side = [float((side_c == s).sum()) * ml_c for s in (1, 2)]
        if min(lung_ml_side) < 0.1 * max(lung_ml_side):
            flags.append("one_lung_only")
        # Lung regions per side: close (peripheral dense lesions) and fill holes
        # (central ones), never across the midline or outside the body.
        region_c = torch.zeros(coarse_shape, dtype=torch.uint8, device=dev)
        r_close = _radius(p.lung_close_mm, sp_c)
        r_close = (min(r_close[0], 1), r_close[1], r_close[2])  # mostly in-plane: keep domes apart from the liver
        for s in (1, 2):
            m = side_c == s
            m = fill_2d(closing(m, r_close) | m) & body_fill_c & ~body_edge(body_c, sp_c)
            region_c[m & (region_c == 0)] = s
        lap("split")

        # Back on the work grid: aerated lung inside the region, plus anything
        # well inside the region (dense lesions, vessels).
        region_w = upsample(region_c, cf, work_shape)
        # Diaphragm domes (and the heart on them): tissue enclosed in-plane by
        # the basal lung but continuous, straight up, with the tissue below the
        # lungs. Grown upward from there through tissue, at most dome_mm high.
        # Seeds only in the band of the lung bases, so tissue beside a lesion
        # on the chest wall higher up never counts as a dome.
        tissue_c = hu_c > p.pv_dense_hu
        n_dome = max(1, int(round(p.dome_mm / sp_c[0])))
        z_lung = torch.nonzero(region_c.flatten(1).any(dim=1)).squeeze(1)
        z_base = int(z_lung.min()) if z_lung.numel() else 0
        base_band = torch.zeros_like(tissue_c)
        base_band[: z_base + 1] = True
        dome_c = tissue_c & (region_c == 0) & base_band
        for _ in range(2 * n_dome):
            dome_c = dome_c | (tissue_c & _shift(dome_c, 0, 1))
        inner_w = upsample(erode(region_c > 0, (0, 1, 1)) & ~dome_c, cf, work_shape)
        # Pleural cavity beyond the closed outline: large consolidations
        # (wider than the closing) fill the space between the aerated lung
        # and the chest wall or the mediastinum. Per lung and slice, the
        # convex hull of the aerated lung (of a thin slab, so a slice fully
        # consolidated still has one) spans it; the chest wall is convex, so
        # the hull stays inside it, and the concave medial side (heart,
        # great vessels, spine) is removed by the mediastinum: per row, the
        # span between the two lungs' medial borders.
        cavity_c = _cavity(side_c, body_fill_c, sp_c, p)
        # Only solid coarse voxels: a coarse voxel half air, half wall is the lung's own border.
        cavity_c[(region_c > 0) | dome_c | body_edge(body_c, sp_c) | ~tissue_c] = 0
        region_c = region_c.clone()
        region_c[cavity_c > 0] = cavity_c[cavity_c > 0]
        region_w = upsample(region_c, cf, work_shape)
        ext_w = upsample(cavity_c > 0, cf, work_shape)
        air_w = hu_w < p.air_hu
        dense_tissue = (hu_w >= p.consolidation_hu[0]) & (hu_w <= p.consolidation_hu[1])
        lung_w = (region_w > 0) & (air_w | inner_w | (ext_w & dense_tissue))
        # Search lesions away from the lung surface, where partial volume with
        # the chest wall looks like ground glass.
        search = erode(lung_w, (0, 1, 1))
        ggo_hu = (hu_w >= p.ggo_hu[0]) & (hu_w < p.ggo_hu[1])
        dense_hu = (hu_w >= p.consolidation_hu[0]) & (hu_w <= p.consolidation_hu[1])
        # Partial volume: a voxel between aerated lung and tissue along any
        # axis (the tangential cut of a diaphragm dome, the heart border, a
        # vessel wall) has ground-glass HU without being ground glass.
        ggo = search & ggo_hu & ~_pv_edge(hu_w < p.ggo_hu[0], hu_w > p.pv_dense_hu, ggo_hu)
        # Ground glass lying as a thin sheet on the wall of the lung (a dome
        # cut obliquely over several slices, the pleura in-plane) is partial
        # volume of that wall, not disease.
        wall = (hu_w > p.pv_dense_hu) & ~lung_w
        runs = (max(1, int(round(p.pv_sheet_mm[0] / sp_w[0]))), max(1, int(round(p.pv_sheet_mm[1] / sp_w[1]))),
                max(1, int(round(p.pv_sheet_mm[1] / sp_w[2]))))
        ggo = ggo & ~_thin_sheet(ggo, wall, runs)
        dense = search & dense_hu
        lesion = ggo | dense
        # Vessel suppression: an opening removes thin bright tubes (and the GGO-like
        # halo partial volume puts around them); a one-voxel conditional dilation
        # gives the surviving blobs their edges back.
        r_open = _radius(p.vessel_open_mm, sp_w)
        r_open = (min(r_open[0], 1), max(1, r_open[1]), max(1, r_open[2]))
        core_lesion = opening(lesion, r_open)
        lesion = dilate(core_lesion, (1, 1, 1)) & lesion
        lesion = _keep_large(lesion, p.min_lesion_ml / ml_w)
        # Dense lesions touching the pleura: give back the rim the search erosion took.
        lesion_dense = lesion & dense
        lesion_dense = lesion_dense | (dilate(lesion_dense, (0, 1, 1)) & lung_w & dense_hu)
        labels_w = torch.zeros(work_shape, dtype=torch.uint8, device=dev)
        labels_w[lung_w] = 1
        labels_w[lesion & ggo] = 2
        labels_w[lesion_dense] = 3
        lap("lesions")

    return _finish(volume, orient, labels_w, region_w, sp_w, dev, timings, t_start, flags, high_threshold, hu, lap, wf)


def _shift(t: torch.Tensor, dim: int, d: int) -> torch.Tensor:
    """``out[i] = t[i - d]`` along ``dim`` (False shifted in at the border)."""
    n = t.shape[dim]
    out = torch.zeros_like(t)
    if abs(d) >= n:
        return out
    if d > 0:
        out.narrow(dim, d, n - d).copy_(t.narrow(dim, 0, n - d))
    else:
        out.narrow(dim, 0, n + d).copy_(t.narrow(dim, -d, n + d))
    return out


def _pv_edge(air: torch.Tensor, tissue: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
    """Voxels on an air-to-tissue transition one or two voxels wide, along any axis.

    A voxel is an edge when air lies on one side and tissue on the opposite
    side, directly or across one more intermediate (``mid``) voxel.
    """
    edge = torch.zeros_like(air)

    def term(dim: int, parts: tuple[tuple[torch.Tensor, int], ...]) -> None:
        # edge[i] |= AND of t[i + off] over parts, where every i + off is inside
        # the volume (outside counts as False, as with _shift); on views, no copies.
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
            reach = ggo & _shift(wall, dim, s)
            frontier = reach
            for _ in range(n - 1):
                frontier = ggo & _shift(frontier, dim, s) & ~reach
                reach = reach | frontier
            ends = reach & ~_shift(ggo, dim, -s)  # the next voxel away from the wall is not GGO
            done = ends
            for _ in range(n - 1):
                done = done | (reach & _shift(done, dim, -s))
            out |= done
    return out


def _cavity(side_c: torch.Tensor, body_fill_c: torch.Tensor, sp_c: tuple[float, float, float], p: _Params) -> torch.Tensor:
    """Side map (1 right, 2 left) of each lung's per-slice convex hull, minus the mediastinum."""
    z, y, x = side_c.shape
    dev = side_c.device
    xs = torch.arange(x, device=dev, dtype=torch.float32)
    slab = (max(0, int(round(p.cavity_slab_mm / sp_c[0]))), 0, 0)
    right, left = side_c == 1, side_c == 2
    # Mediastinum: per slice and row, the columns between the right lung's
    # most medial voxel and the left lung's; a row with one lung only runs
    # from that lung to the body's midline.
    cols = body_fill_c.any(dim=1)  # (Z, X)
    lo = torch.where(cols, xs, torch.full_like(xs, float(x))).amin(dim=1)
    hi = torch.where(cols, xs, torch.full_like(xs, -1.0)).amax(dim=1)
    mid = torch.where(cols.any(dim=1), (lo + hi) / 2.0, torch.full_like(lo, (x - 1) / 2.0))[:, None]  # (Z, 1)
    r_max = torch.where(right, xs, torch.full_like(xs, -1.0)).amax(dim=2)  # (Z, Y)
    l_min = torch.where(left, xs, torch.full_like(xs, float(x))).amin(dim=2)
    has_r, has_l = r_max >= 0, l_min < x
    r_edge = torch.where(has_r, r_max, mid.expand_as(r_max))
    l_edge = torch.where(has_l, l_min, mid.expand_as(l_min))
    med = (xs > r_edge[..., None]) & (xs < l_edge[..., None]) & (has_r | has_l)[..., None]
    out = torch.zeros(side_c.shape, dtype=torch.uint8, device=dev)
    for s, m in ((1, right), (2, left)):
        # Aerated lung both above and below (within the slab) counts too:
        # bridges a consolidation that fills a slice, never extends past the base or apex.
        above, below = torch.zeros_like(m), torch.zeros_like(m)
        for d in range(1, slab[0] + 1):
            above |= _shift(m, 0, -d)
            below |= _shift(m, 0, d)
        h = hull_2d(m | (above & below), (sp_c[1], sp_c[2])) & ~med & body_fill_c
        out[h & (out == 0)] = s
    return out


def body_edge(body_c: torch.Tensor, sp_c: tuple[float, float, float]) -> torch.Tensor:
    """The outer ~1 coarse voxel of the body (skin), never lung; not the tissue around the lungs."""
    filled = fill_2d(body_c)
    return filled & ~erode(filled, (0, 1, 1))


def _split(lung: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
    """Side map of the lung mask: 1 right (smaller X), 2 left (larger X).

    Each slice is cut at the column with the fewest lung voxels within 12 %
    of the body width of the body's midline; touching lungs are thus split
    at their thinnest junction, separate lungs in their gap.
    """
    z, _, x = lung.shape
    xs = torch.arange(x, device=lung.device, dtype=torch.float32)
    cols = body.any(dim=0).any(dim=0)
    if bool(cols.any()):
        idx = torch.nonzero(cols).squeeze(1).float()
        mid, width = float(idx.min() + idx.max()) / 2.0, float(idx.max() - idx.min() + 1)
    else:
        mid, width = (x - 1) / 2.0, float(x)
    counts = lung.sum(dim=1).float()  # (Z, X)
    # Smooth across z so one slice's noise cannot jump the cut.
    counts = F.avg_pool1d(counts.T[None], 3, 1, 1, count_include_pad=False)[0].T
    window = (xs - mid).abs() <= 0.12 * width
    cost = torch.where(window, counts + 1e-3 * (xs - mid).abs(), torch.full_like(counts, float("inf")))
    cut = torch.argmin(cost, dim=1)  # (Z,)
    left = xs[None, :] > cut[:, None].float()  # (Z, X)
    side = torch.zeros(lung.shape, dtype=torch.uint8, device=lung.device)
    side[lung & left[:, None, :]] = 2
    side[lung & ~left[:, None, :]] = 1
    return side


def _finish(
    volume: Volume,
    orient: _Orientation,
    labels_g: torch.Tensor,
    side_g: torch.Tensor | None,
    sp_g: tuple[float, ...],
    dev: torch.device,
    timings: dict[str, float],
    t_start: float,
    flags: list[str],
    high_threshold: float,
    hu: torch.Tensor,
    lap: Any,
    factors: tuple[int, int, int] = (1, 1, 1),
) -> Analysis:
    """Measure on the grid the labels were made on, upsample, render overlays."""
    from .overlay import render_overlays  # local: keeps the import graph flat for tests

    ml = sp_g[0] * sp_g[1] * sp_g[2] / 1000.0
    zones: dict[str, float] = {z: 0.0 for z in ZONES}
    lung_ml = {"left": 0.0, "right": 0.0, "total": 0.0}
    lesion_ml = {"ggo": 0.0, "consolidation": 0.0}
    total_pct = 0.0
    severity = 0
    if NOT_A_CHEST not in flags and side_g is not None:
        # One pass: per slice, voxel counts of (side, label) codes; zones and
        # volumes are then sums over short 1-D arrays.
        nz = labels_g.shape[0]
        code = side_g.to(torch.int64) * 4 + labels_g.to(torch.int64)  # side 0..2, label 0..3
        code += torch.arange(nz, device=dev, dtype=torch.int64)[:, None, None] * 12
        per_z = torch.bincount(code.reshape(-1), minlength=nz * 12).reshape(nz, 3, 4).cpu().numpy().astype(np.float64)
        zs = np.arange(nz, dtype=np.float64) * sp_g[0]
        for s, name in ((1, "right"), (2, "left")):
            lung_z = per_z[:, s, 1:].sum(axis=1)
            les_z = per_z[:, s, 2:].sum(axis=1)
            n_lung = float(lung_z.sum())
            lung_ml[name] = n_lung * ml
            if n_lung == 0:
                continue
            present = np.nonzero(lung_z)[0]
            lo, hi = float(zs[present.min()]), float(zs[present.max()])
            third = (hi - lo) / 3.0
            bounds = {"lower": (lo - 1.0, lo + third), "middle": (lo + third, lo + 2 * third), "upper": (lo + 2 * third, hi + 1.0)}
            for zone, (a, b) in bounds.items():
                band = (zs >= a) & (zs < b) if zone != "upper" else (zs >= a) & (zs <= b)
                n = float(lung_z[band].sum())
                zones[f"{name}_{zone}"] = 100.0 * float(les_z[band].sum()) / n if n else 0.0
        lung_ml["total"] = lung_ml["left"] + lung_ml["right"]
        inside = per_z[:, 1:, :].sum(axis=(0, 1))
        lesion_ml["ggo"] = float(inside[2]) * ml
        lesion_ml["consolidation"] = float(inside[3]) * ml
        if lung_ml["total"] > 0:
            total_pct = 100.0 * (lesion_ml["ggo"] + lesion_ml["consolidation"]) / lung_ml["total"]
        severity = sum(_zone_grade(v) for v in zones.values())
    lap("measure")

    with torch.inference_mode():
        full_shape = (hu.shape[0], hu.shape[1], hu.shape[2])
        labels_full = upsample(labels_g, factors, full_shape) if labels_g.shape != hu.shape else labels_g
        exact = all(n * f <= s for n, f, s in zip(labels_g.shape, factors, full_shape))  # padded, never cropped
        grid = (labels_g, factors) if labels_g.shape != hu.shape and exact else None
        overlays = render_overlays(hu, labels_full, tuple(volume.spacing_mm[a] for a in orient.perm), orient, grid)  # type: ignore[arg-type]
        lap("overlays")
        labels_np = _from_canonical(labels_full, orient).contiguous().cpu().numpy()
        lap("upsample")

    score = 0.0 if NOT_A_CHEST in flags else score_from_involvement(total_pct)
    level = "LOW" if NOT_A_CHEST in flags else _triage(score, high_threshold)
    timings["total"] = round(time.perf_counter() - t_start, 4)
    report: dict[str, Any] = {
        "model_version": MODEL_VERSION,
        "shape": list(volume.shape),
        "spacing_mm": [round(float(s), 4) for s in volume.spacing_mm],
        "lung_volume_ml": {k: round(v, 1) for k, v in lung_ml.items()},
        "lesion_volume_ml": {k: round(v, 1) for k, v in lesion_ml.items()},
        "involvement_pct": {"total": round(total_pct, 2), "zones": {k: round(v, 2) for k, v in zones.items()}},
        "severity_score": int(severity),
        "score": round(score, 4),
        "score_formula": f"1 - exp(-involvement_pct.total / {SCORE_SCALE_PCT:g})",
        "triage_level": level,
        "thresholds": {"medium": MEDIUM_THRESHOLD, "high": float(high_threshold)},
        "timings_s": timings,
        "device": str(dev),
        "flags": flags,
    }
    return Analysis(labels=labels_np, report=report, overlays=overlays)
