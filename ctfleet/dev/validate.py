"""Validation of the default analyzer against ground truth made by lesion insertion.

``python -m ctfleet.dev.validate [--quick] [--out docs/validation.md]``

Reference standard: synthetic ground-glass and consolidation opacities of known
size, density and position, inserted into the lungs of (a) the one real chest CT
of the shared test data (``../shared/data/ct00.tar.xz``; provenance: the
ITKElastix repository, InsightSoftwareConsortium/ITKElastix, Apache-2.0, commit
787db6d, ``examples/data/00``, one phase of a public 4D lung CT set) and (b)
generated phantoms (:mod:`ctfleet.dev.phantom`). On the real CT the lungs and the
pre-existing findings (the real mass) come from the analysis of the clean scan;
inserted lesions are placed away from those findings, and the findings are part
of the reference (``pre-existing``) but never of the per-lesion statistics.

Definitions (also written into the report):

* a lesion is *detected* when at least :data:`DETECT_FRACTION` of its
  reference voxels carry a predicted lesion label (GGO or consolidation);
* a *false-positive lesion* is a 6-connected predicted lesion component that
  touches no reference lesion voxel (inserted or pre-existing, the latter
  dilated by two voxels);
* Dice per type compares predicted and reference voxels of that type, pooled
  over all cases, outside the pre-existing findings;
* severity grades and the triage level of the reference come from the
  reference map with the analyzer's own formulas (zones: thirds of each
  lung's height; grades 0-4; score ``1 - exp(-pct / 15)``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from model.analysis import MODEL_VERSION, analyze
from model.labels import Label, TriageLevel
from model.lungs import Side
from model.morphology import dilate, erode, label
from model.orientation import canonical_orientation, to_canonical
from model.report import ZONES, score_from_involvement
from model.volume import Volume

from ctfleet.dev import phantom as ph

__all__ = [
    "DETECT_FRACTION", "Lesion", "Case", "CaseResult", "insert_lesions", "wilson", "dice", "cohen_kappa",
    "zone_grades", "reference_sides", "evaluate_case", "summarise", "run", "main",
]

DETECT_FRACTION = 0.3
GRADE_EDGES = (25.0, 50.0, 75.0)
REAL_CT_ARCHIVE = Path(__file__).resolve().parents[3] / "shared" / "data" / "ct00.tar.xz"


# -- statistics ----------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float, float]:
    """Proportion ``k / n`` and its Wilson score interval ``(p, lo, hi)``; ``(nan, 0, 1)`` for n = 0."""
    if n <= 0:
        return (float("nan"), 0.0, 1.0)
    p = k / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (p, max(0.0, centre - half), min(1.0, centre + half))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean arrays; 1.0 when both are empty."""
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def cohen_kappa(a: Sequence[int], b: Sequence[int], k: int = 5, weights: str = "none") -> float:
    """Cohen's kappa of two ratings on categories ``0..k-1``; ``weights``: ``"none"`` or ``"linear"``."""
    cm = np.zeros((k, k), dtype=np.float64)
    for x, y in zip(a, b):
        cm[int(x), int(y)] += 1
    n = cm.sum()
    if n == 0:
        return float("nan")
    i, j = np.indices((k, k))
    w = (i != j).astype(np.float64) if weights == "none" else np.abs(i - j) / (k - 1)
    expected = np.outer(cm.sum(1), cm.sum(0)) / n
    denom = float((w * expected).sum())
    if denom == 0:
        return 1.0
    return 1.0 - float((w * cm).sum()) / denom


def grade(pct: float) -> int:
    """Zone grade 0-4 from percent involved (the analyzer's rule)."""
    if pct <= 0:
        return 0
    return 1 + sum(pct >= e for e in GRADE_EDGES)


# -- reference geometry --------------------------------------------------------------------


def reference_sides(lung: np.ndarray) -> np.ndarray:
    """Side map of a canonical-orientation lung mask (X to the patient's left): 1 right, 2 left.

    Per slice, cut at the emptiest column within the middle fifth of the
    lungs' X extent.
    """
    side = np.zeros(lung.shape, np.uint8)
    cols = lung.any(axis=(0, 1))
    if not cols.any():
        return side
    xs = np.nonzero(cols)[0]
    x0, x1 = int(xs.min()), int(xs.max())
    mid = (x0 + x1) / 2.0
    lo, hi = int(mid - 0.1 * (x1 - x0)), int(mid + 0.1 * (x1 - x0)) + 1
    counts = lung.sum(axis=1)  # (Z, X)
    cut = lo + np.argmin(counts[:, lo:hi] + 1e-3 * np.abs(np.arange(lo, hi) - mid), axis=1)
    left = np.arange(lung.shape[2])[None, :] > cut[:, None]
    side[lung & left[:, None, :]] = Side.LEFT
    side[lung & ~left[:, None, :]] = Side.RIGHT
    return side


def zone_pcts(lesion: np.ndarray, side: np.ndarray) -> dict[str, float]:
    """Percent of each zone's lung involved (zones: thirds of each lung's Z extent)."""
    out = {z: 0.0 for z in ZONES}
    nz = side.shape[0]
    for s, name in Side.NAMED:
        m = side == s
        lung_z = m.sum(axis=(1, 2)).astype(np.float64)
        les_z = (m & lesion).sum(axis=(1, 2)).astype(np.float64)
        present = np.nonzero(lung_z)[0]
        if present.size == 0:
            continue
        lo, hi = float(present.min()), float(present.max())
        third = (hi - lo) / 3.0
        zs = np.arange(nz, dtype=np.float64)
        bands = {"lower": (zs < lo + third), "middle": (zs >= lo + third) & (zs < lo + 2 * third), "upper": zs >= lo + 2 * third}
        for zone, band in bands.items():
            n = lung_z[band].sum()
            out[f"{name}_{zone}"] = 100.0 * les_z[band].sum() / n if n else 0.0
    return out


def zone_grades(pcts: dict[str, float]) -> list[int]:
    return [grade(pcts[z]) for z in ZONES]


# -- lesion insertion ----------------------------------------------------------------------


@dataclass(frozen=True)
class Lesion:
    """One inserted opacity: an ellipsoid with soft edges and texture.

    ``center_mm`` is in canonical array mm (index times spacing, (z, y, x)),
    ``radii_mm`` the ellipsoid's semi-axes, ``hu`` its mean attenuation.
    """

    kind: str  # "ggo" | "consolidation" | "nodule" (solid, small: must not be counted as an opacity)
    center_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    hu: float
    side: str = ""
    position: str = "random"  # where it was put: random, medial (on the mediastinum), basal (on the diaphragm), lobe, diffuse
    region: np.ndarray | None = field(default=None, repr=False, compare=False)  # bool mask: a lobe or the lungs, not an ellipsoid

    @property
    def volume_ml(self) -> float:
        a, b, c = self.radii_mm
        return 4.0 / 3.0 * math.pi * a * b * c / 1000.0

    @property
    def diameter_mm(self) -> float:
        """Mean diameter of the ellipsoid (0 for a region: :func:`evaluate_case` sizes a region by its reference volume)."""
        return 2.0 * float(np.mean(self.radii_mm))


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, passes: int = 2) -> np.ndarray:
    t = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))[None, None]
    for _ in range(passes):
        t = torch.nn.functional.avg_pool3d(t, 3, 1, 1, count_include_pad=False)
    a = t[0, 0].numpy()
    sd = float(a.std()) or 1.0
    return a / sd


def insert_lesions(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    lung: np.ndarray,
    lesions: Sequence[Lesion],
    seed: int = 0,
    edge_mm: float = 3.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint lesions into a copy of ``hu`` (Z superior, X patient left, canonical) within ``lung``.

    Returns ``(hu_new, truth, ids)``: ``truth`` uint8 (2 GGO, 3 consolidation;
    consolidation wins overlaps), ``ids`` int16 lesion index + 1 (later wins).
    Edges ramp linearly over ``edge_mm``; the reference voxel set of a lesion is
    where its weight is at least 0.5, inside the lung. GGO keeps vessels (only
    voxels below -200 HU change); GGO texture is smoothed noise of 40 HU SD
    plus 15 HU white noise, consolidation 20 HU SD.
    """
    rng = np.random.default_rng(seed)
    out = hu.copy()
    truth = np.zeros(hu.shape, np.uint8)
    ids = np.zeros(hu.shape, np.int16)
    for n, les in enumerate(lesions):
        placed = _weights(les, spacing, hu.shape, edge_mm)
        if placed is None:
            continue
        box, w = placed
        in_lung = lung[box]
        w *= in_lung
        sub = out[box]
        shape = sub.shape
        if les.kind == "nodule":  # solid and small: painted, never part of the opacity truth
            sub[:] = sub + w * (les.hu + 10.0 * rng.standard_normal(shape).astype(np.float32) - sub)
            ref = (w >= 0.5) & in_lung
        elif les.kind == "ggo":
            tex = 40.0 * _smooth_noise(shape, rng) + 15.0 * rng.standard_normal(shape).astype(np.float32)
            target = les.hu + tex
            change = sub < -200.0
            sub[:] = np.where(change, sub + w * (target - sub), sub)
            ref = (w >= 0.5) & in_lung
            truth[box][ref & (truth[box] != Label.CONSOLIDATION)] = Label.GGO
        else:
            tex = 20.0 * _smooth_noise(shape, rng, passes=1) + 10.0 * rng.standard_normal(shape).astype(np.float32)
            target = les.hu + tex
            sub[:] = sub + w * (target - sub)
            ref = (w >= 0.5) & in_lung
            truth[box][ref] = Label.CONSOLIDATION
        ids[box][ref] = n + 1
    return out, truth, ids


def _weights(les: Lesion, spacing: tuple[float, float, float], shape: tuple[int, ...],
             edge_mm: float) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """The box a lesion lies in and its edge weight there (1 inside, ramping to 0 over ``edge_mm``)."""
    if les.region is not None:
        hit = np.nonzero(les.region)
        if hit[0].size == 0:
            return None
        box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in hit)
        # The region's edge ramps over about edge_mm: a box mean of the mask, stretched so 0.5 stays on the edge.
        k = tuple(max(1, int(round(edge_mm / s)) | 1) for s in spacing)
        t = torch.from_numpy(les.region.astype(np.float32))[None, None]
        smooth = torch.nn.functional.avg_pool3d(t, k, 1, tuple(i // 2 for i in k), count_include_pad=False)[0, 0].numpy()
        return box, np.clip(smooth[box] * 2.0 - 0.5, 0.0, 1.0).astype(np.float32)
    lo = [max(0, int(math.floor((c - r - edge_mm) / s))) for c, r, s in zip(les.center_mm, les.radii_mm, spacing)]
    hi = [min(dim, int(math.ceil((c + r + edge_mm) / s)) + 1) for c, r, s, dim in zip(les.center_mm, les.radii_mm, spacing, shape)]
    if any(h <= l for l, h in zip(lo, hi)):
        return None
    box = tuple(slice(l, h) for l, h in zip(lo, hi))
    grids = np.meshgrid(*[np.arange(l, h, dtype=np.float32) * s for l, h, s in zip(lo, hi, spacing)], indexing="ij")
    rho = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, les.center_mm, les.radii_mm)))
    edge = min(edge_mm, 0.5 * float(np.mean(les.radii_mm))) if les.kind == "nodule" else edge_mm  # a 3 mm nodule keeps a core
    return box, np.clip((1.0 - rho) * float(np.mean(les.radii_mm)) / edge + 0.5, 0.0, 1.0).astype(np.float32)


# -- cases ---------------------------------------------------------------------------------


@dataclass
class Base:
    """A clean scan in canonical orientation with its reference lungs and findings."""

    name: str
    hu: np.ndarray  # canonical (Z superior, Y posterior, X left)
    spacing: tuple[float, float, float]
    lung: np.ndarray
    side: np.ndarray
    preexisting: np.ndarray  # bool: findings of the clean scan (part of the reference)
    preexisting_zone: np.ndarray  # bool: the findings dilated (excluded from FP / Dice)
    placeable: dict[str, np.ndarray] = field(default_factory=dict)  # side -> candidate centre voxels


@dataclass
class Case:
    name: str
    base: str
    lesions: list[Lesion]
    seed: int


@dataclass
class CaseResult:
    name: str
    base: str
    n_lesions: int
    per_lesion: list[dict[str, Any]]
    fp_components: int
    ref_zone_pct: dict[str, float]
    pred_zone_pct: dict[str, float]
    ref_grades: list[int]
    pred_grades: list[int]
    ref_total_pct: float
    pred_total_pct: float
    ref_level_high: bool
    pred_level: str
    voxels: dict[str, int]  # tp/fp/fn counts per type for pooled Dice
    seconds: float
    fp_ml: float = 0.0  # predicted opacity outside every reference lesion (dilated 2 voxels) and excluded zone
    lung_ratio: float = 1.0  # predicted lung volume / reference lung volume
    family: str = ""  # the recipe: clean, small, moderate, borderline, high, large, lobe, diffuse, nodules


def _canonical_volume(hu: np.ndarray, spacing: tuple[float, float, float]) -> Volume:
    """A volume whose array is already canonical (X left, Y posterior, Z superior)."""
    return Volume.from_spacing(hu, spacing)


# What a reader marks on the clean real CT (canonical voxel boxes ``(z0, z1), (y0, y1), (x0, x1)``, read
# on a lung window): the right-lung mass beside the hilum is a finding; the faint density behind it is
# indeterminate (haze or motion of the 4D acquisition) and counts neither for nor against the analyzer.
# Every other label on the clean scan is a false positive.
Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
REAL_CT_FINDINGS: dict[str, Box] = {"mass": ((70, 89), (225, 280), (145, 210))}
REAL_CT_INDETERMINATE: dict[str, Box] = {"posterior haze": ((70, 89), (276, 316), (148, 202))}


def _boxes(shape: tuple[int, ...], boxes: dict[str, Box]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for (z0, z1), (y0, y1), (x0, x1) in boxes.values():
        out[z0:z1, y0:y1, x0:x1] = True
    return out


def make_base(name: str, hu: np.ndarray, spacing: tuple[float, float, float], lung: np.ndarray | None = None,
              device: str = "cpu") -> Base:
    """Analyze the clean scan; its lungs (or ``lung``, when given) are the reference lungs.

    Without ``lung`` (the real CT) the reference findings are the clean scan's labels inside
    :data:`REAL_CT_FINDINGS`; labels inside :data:`REAL_CT_INDETERMINATE` are excluded from scoring.
    """
    a = analyze(_canonical_volume(hu, spacing), device)
    pred = a.labels
    ref_lung = (pred > 0) if lung is None else lung
    pre = np.zeros(hu.shape, bool)
    pre_zone = pre
    if lung is None:
        labelled = pred >= Label.GGO
        pre = labelled & _boxes(hu.shape, REAL_CT_FINDINGS)
        pre_zone = dilate(torch.from_numpy(pre), (2, 2, 2)).numpy() | (labelled & _boxes(hu.shape, REAL_CT_INDETERMINATE))
    side = reference_sides(ref_lung)
    base = Base(name, hu, spacing, ref_lung, side, pre, pre_zone)
    # Candidate centres: lung at least 8 mm (in-plane) / 4 mm (z) inside, 20 mm from findings.
    r = (max(1, round(4.0 / spacing[0])), max(1, round(8.0 / spacing[1])), max(1, round(8.0 / spacing[2])))
    inner = erode(torch.from_numpy(ref_lung), r)
    if pre_zone.any():
        far = (max(1, round(20.0 / spacing[0])), max(1, round(20.0 / spacing[1])), max(1, round(20.0 / spacing[2])))
        inner &= ~dilate(torch.from_numpy(pre_zone), far)
    inner_np = inner.numpy()
    for s, nm in Side.NAMED:
        base.placeable[nm] = np.argwhere(inner_np & (side == s))
    return base


def _centre(base: Base, rng: np.random.Generator, side: str, position: str) -> np.ndarray | None:
    """A placeable centre voxel: anywhere, on the mediastinum (most medial 5 %) or on the diaphragm (lowest 10 %).

    Drawn uniformly by rejection inside the candidates' bounding box, with a generator of its own
    seeded from ``rng`` (which advances by one draw whatever happens): a slightly different reference
    lung (another analyzer version's, on the real CT) moves only the lesions whose draw fell where it
    changed, not every lesion after it.
    """
    cand = base.placeable[side]
    if cand.size == 0:
        return None
    own = np.random.default_rng(int(rng.integers(1 << 62)))
    if position == "medial":
        xs = np.nonzero(base.lung.any(axis=(0, 1)))[0]
        mid = (xs.min() + xs.max()) / 2.0
        d = np.abs(cand[:, 2] - mid)
        cand = cand[d <= np.quantile(d, 0.05)]
    elif position == "basal":
        cand = cand[cand[:, 0] <= np.quantile(cand[:, 0], 0.10)]
    lo, hi = cand.min(axis=0), cand.max(axis=0)
    ok = np.zeros(tuple(hi - lo + 1), dtype=bool)
    ok[tuple((cand - lo).T)] = True
    for _ in range(10_000):
        c = own.integers(lo, hi + 1)
        if ok[tuple(c - lo)]:
            return c
    return cand[own.integers(len(cand))]


def lower_lobe(base: Base, side: str) -> np.ndarray:
    """An approximate lower lobe: the lung of ``side`` below an oblique fissure rising from the front of the
    base to about 60 % of the lung's height at the back."""
    s = dict((nm, v) for v, nm in Side.NAMED)[side]
    m = base.side == s
    z, y, _ = np.nonzero(m)
    if z.size == 0:
        return m
    zn = (np.arange(m.shape[0])[:, None, None] - z.min()) / max(1, z.max() - z.min())
    yn = (np.arange(m.shape[1])[None, :, None] - y.min()) / max(1, y.max() - y.min())
    return m & (zn < 0.05 + 0.55 * yn)


def random_lesions(base: Base, rng: np.random.Generator, spec: Sequence[tuple[Any, ...]]) -> list[Lesion]:
    """Lesions from ``(kind, side, radius_mm[, position])``: ellipsoids at placeable centres of random shape
    and HU; ``position`` ``lobe`` (the side's lower lobe) and ``diffuse`` (both lungs) are regions instead."""
    out: list[Lesion] = []
    for kind, side, r, *rest in spec:
        position = rest[0] if rest else "random"
        hu = float(rng.uniform(-600, -400)) if kind == "ggo" else float(rng.uniform(-50, 50))
        if position in ("lobe", "diffuse"):
            region = lower_lobe(base, side) if position == "lobe" else base.lung
            if position == "diffuse":
                hu = float(rng.uniform(-650, -550))  # a haze: the lung is still aerated, denser
            out.append(Lesion(kind, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), hu, side, position, region))
            continue
        c = _centre(base, rng, side, position)
        if c is None:
            continue
        center = tuple(float(i * s) for i, s in zip(c, base.spacing))
        radii = tuple(float(r * f) for f in rng.uniform(0.75, 1.25, 3))
        if kind == "nodule":
            hu = float(rng.uniform(0, 60))
        out.append(Lesion(kind, center, radii, hu, side, position))  # type: ignore[arg-type]
    return out


def evaluate_case(base: Base, case: Case, device: str = "cpu") -> CaseResult:
    """Insert, analyze, compare."""
    t0 = time.perf_counter()
    hu, truth, ids = insert_lesions(base.hu, base.spacing, base.lung, case.lesions, seed=case.seed)
    a = analyze(_canonical_volume(hu, base.spacing), device)
    pred = a.labels
    pred_les = pred >= Label.GGO
    ref_les = (truth >= Label.GGO) | base.preexisting
    per: list[dict[str, Any]] = []
    voxel_ml = float(np.prod(base.spacing)) / 1000.0
    for n, les in enumerate(case.lesions):
        m = ids == n + 1
        k = int(m.sum())
        if k == 0:
            continue
        hit = int((m & pred_les).sum())
        # A region's size is the diameter of the sphere of its reference volume.
        diameter = les.diameter_mm if les.region is None else 2.0 * (3.0 * k * voxel_ml * 1000.0 / (4.0 * math.pi)) ** (1 / 3)
        per.append({
            "kind": les.kind, "side": les.side, "radius_mm": diameter / 2.0, "hu": les.hu, "position": les.position,
            "ref_ml": k * voxel_ml, "overlap": hit / k, "detected": hit / k >= DETECT_FRACTION,
        })
    comp, sizes = label(torch.from_numpy(pred_les))
    comp_np = comp.numpy()
    touched = np.unique(comp_np[(ref_les | base.preexisting_zone) & pred_les])
    n_comp = int(sizes.numel()) - 1
    fp = n_comp - int((touched > 0).sum())
    outside_pre = ~base.preexisting_zone
    near_ref = dilate(torch.from_numpy(ref_les), (2, 2, 2)).numpy() if ref_les.any() else ref_les
    fp_ml = float((pred_les & ~near_ref & outside_pre).sum()) * voxel_ml
    vox: dict[str, int] = {}
    for code, nm in ((Label.GGO, "ggo"), (Label.CONSOLIDATION, "consolidation")):
        p, r = (pred == code) & outside_pre, (truth == code) & outside_pre
        vox[f"{nm}_tp"], vox[f"{nm}_p"], vox[f"{nm}_r"] = int((p & r).sum()), int(p.sum()), int(r.sum())
    p, r = pred_les & outside_pre, (truth >= Label.GGO) & outside_pre
    vox["any_tp"], vox["any_p"], vox["any_r"] = int((p & r).sum()), int(p.sum()), int(r.sum())
    ref_zones = zone_pcts(ref_les & base.lung, base.side)
    ref_total = 100.0 * float((ref_les & base.lung).sum()) / max(1, int(base.lung.sum()))
    pred_zones = dict(a.report["involvement_pct"]["zones"])
    return CaseResult(
        name=case.name, base=base.name, n_lesions=len(per), per_lesion=per, fp_components=fp,
        ref_zone_pct=ref_zones, pred_zone_pct=pred_zones, ref_grades=zone_grades(ref_zones),
        pred_grades=[grade(pred_zones[z]) for z in ZONES], ref_total_pct=ref_total,
        pred_total_pct=float(a.report["involvement_pct"]["total"]),
        ref_level_high=score_from_involvement(ref_total) >= 0.85, pred_level=a.report["triage_level"],
        voxels=vox, seconds=time.perf_counter() - t0, fp_ml=fp_ml,
        lung_ratio=float((pred > 0).sum()) / max(1, int(base.lung.sum())), family=case.name.split("/")[-1].rsplit("_", 1)[0],
    )


# -- case sets -----------------------------------------------------------------------------

# (kind, side, radius_mm) lists; "mixed" sets are built by the generator below.
_SMALL = [("ggo", "right", 7.0), ("consolidation", "left", 6.0)]


def _hard_set(rng: np.random.Generator, scale: float) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """What a triage must never miss and must not invent: large consolidations (50-120 mm) on the
    mediastinum, on the diaphragm and anywhere; a consolidated lower lobe; diffuse ground glass over
    both lungs; small solid nodules (4-8 mm) that are no opacity."""
    recipes: list[tuple[str, list[tuple[Any, ...]]]] = []
    for i, (position, side) in enumerate((("medial", "right"), ("medial", "left"), ("basal", "right"),
                                          ("basal", "left"), ("random", "right"), ("random", "left"))):
        recipes.append((f"large_{position}_{i + 1:02d}", [("consolidation", side, float(rng.uniform(25, 60)) * scale, position)]))
    recipes.append(("lobe_01", [("consolidation", "right", 0.0, "lobe")]))
    recipes.append(("lobe_02", [("consolidation", "left", 0.0, "lobe")]))
    recipes.append(("diffuse_01", [("ggo", "right", 0.0, "diffuse")]))
    recipes.append(("nodules_01", [("nodule", ("right", "left")[j % 2], float(rng.uniform(2.0, 4.0))) for j in range(8)]))
    return recipes


def _spec_set(rng: np.random.Generator, n_cases: int, scale: float = 1.0) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Case recipes: clean, few small, moderate, borderline, HIGH (diffuse)."""
    recipes: list[tuple[str, list[tuple[Any, ...]]]] = [("clean", [])]
    kinds = ("ggo", "consolidation")
    sides = ("right", "left")
    plan = ["small", "moderate", "high", "small", "borderline", "high", "moderate", "high", "small", "borderline", "high", "moderate"]
    for i in range(max(0, n_cases - 1)):
        what = plan[i % len(plan)]
        if what == "small":
            spec = [(kinds[j % 2], sides[(j // 2) % 2], float(rng.uniform(5, 12))) for j in range(int(rng.integers(1, 5)))]
        elif what == "moderate":
            spec = [(kinds[j % 2], sides[j % 2], float(rng.uniform(10, 22))) for j in range(int(rng.integers(3, 7)))]
        elif what == "borderline":
            spec = [("ggo", sides[j % 2], float(rng.uniform(24, 32))) for j in range(8)] + [("consolidation", "right", 15.0)]
        else:  # high: diffuse, both lungs
            spec = [("ggo" if j % 3 else "consolidation", sides[j % 2], float(rng.uniform(34, 48))) for j in range(14)]
        recipes.append((f"{what}_{i + 1:02d}", [(k, s, r * scale) for k, s, r in spec]))
    return recipes


def _load_real_ct(cache: Path) -> tuple[np.ndarray, tuple[float, float, float]] | None:
    from ctfleet.intake.files import load_study

    series = cache / "ct00" / "00"
    if len(list(series.glob("*.dcm"))) != 141:
        if not REAL_CT_ARCHIVE.exists():
            return None
        (cache / "ct00").mkdir(parents=True, exist_ok=True)
        with tarfile.open(REAL_CT_ARCHIVE) as tar:
            tar.extractall(cache / "ct00", filter="data")
    vol = load_study(series).volume
    o = canonical_orientation(vol.affine)  # the analyzer's own canonical view
    hu = to_canonical(torch.from_numpy(vol.hu), o).contiguous().numpy()
    return hu, o.spacing(vol.spacing_mm)


def _cache_dir() -> Path:
    base = os.environ.get("CTFLEET_TEST_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ctfleet-test")
    return Path(base)


def run(quick: bool = False, real: bool = True, seed: int = 20260501, log: Any = None) -> dict[str, Any]:
    """Build the bases and cases, evaluate them all, return the summary (see :func:`summarise`)."""
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rng = np.random.default_rng(seed)
    results: list[CaseResult] = []
    bases: list[tuple[Base, int, float]] = []
    t0 = time.perf_counter()
    if quick:
        shape, spacing = (40, 96, 96), (4.0, 3.6, 3.6)
        for s in range(2):
            p = ph.chest_phantom(shape, spacing, seed=100 + s)
            bases.append((make_base(f"phantom_small_{s}", p.hu, p.spacing_mm, lung=p.truth > 0), 3, 1.0))
    else:
        for s in range(3):
            p = ph.chest_phantom(seed=100 + s)
            bases.append((make_base(f"phantom_{s}", p.hu, p.spacing_mm, lung=p.truth > 0), 7, 0.6))
        if real:
            loaded = _load_real_ct(_cache_dir())
            if loaded is not None:
                bases.append((make_base("real_ct00", loaded[0], loaded[1]), 14, 1.0))
    for base, n_cases, scale in bases:
        for name, spec in [*_spec_set(rng, n_cases, scale), *_hard_set(rng, scale)]:
            case = Case(f"{base.name}/{name}", base.name, random_lesions(base, rng, spec), int(rng.integers(1 << 30)))
            r = evaluate_case(base, case)
            results.append(r)
            if log is not None:
                print(f"{case.name}: {r.n_lesions} lesions, ref {r.ref_total_pct:.1f} % pred {r.pred_total_pct:.1f} %, "
                      f"{r.pred_level}, fp {r.fp_components}, {r.seconds:.1f} s", file=log, flush=True)
    summary = summarise(results)
    summary["seconds"] = time.perf_counter() - t0
    summary["bases"] = [{"name": b.name, "shape": list(b.hu.shape), "spacing_mm": list(b.spacing),
                         "lung_ml": float(b.lung.sum() * np.prod(b.spacing) / 1000.0),
                         "preexisting_ml": float(b.preexisting.sum() * np.prod(b.spacing) / 1000.0)} for b, _, _ in bases]
    summary["quick"] = quick
    return summary


def _sensitivity(lesions: Sequence[dict[str, Any]]) -> tuple[dict[str, tuple[Any, ...]], list[bool]]:
    """Per-lesion sensitivity by stratum (kind, size, position: Wilson interval and counts), and whether
    each nodule was counted as an opacity."""
    strata: dict[str, tuple[int, int]] = {}

    def add(key: str, det: bool) -> None:
        k, n = strata.get(key, (0, 0))
        strata[key] = (k + int(det), n + 1)

    nodules: list[bool] = []
    for l in lesions:
        if l["kind"] == "nodule":
            nodules.append(l["detected"])
            continue
        d = 2 * l["radius_mm"]
        size = "<15 mm" if d < 15 else ("15-30 mm" if d < 30 else ("30-50 mm" if d < 50 else ">=50 mm"))
        add("all", l["detected"])
        add(l["kind"], l["detected"])
        add(f"{l['kind']} {size}", l["detected"])
        if d >= 50 and l.get("position", "random") != "random":
            add(f"{l['kind']} >=50 mm, {l['position']}", l["detected"])
    sens = {k: wilson(*v) + v for k, v in sorted(strata.items())}
    return sens, nodules


def summarise(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Pooled metrics over case results."""
    lesions = [dict(l, case=r.name) for r in results for l in r.per_lesion]
    sens, nodules = _sensitivity(lesions)
    vox = {k: sum(r.voxels.get(k, 0) for r in results) for k in results[0].voxels} if results else {}
    dices = {nm: (2 * vox[f"{nm}_tp"] / (vox[f"{nm}_p"] + vox[f"{nm}_r"]) if vox.get(f"{nm}_p", 0) + vox.get(f"{nm}_r", 0) else float("nan"))
             for nm in ("ggo", "consolidation", "any")}
    ref_g = [g for r in results for g in r.ref_grades]
    pred_g = [g for r in results for g in r.pred_grades]
    conf = np.zeros((5, 5), int)
    for a, b in zip(ref_g, pred_g):
        conf[a, b] += 1
    ref_tot = [sum(r.ref_grades) for r in results]
    pred_tot = [sum(r.pred_grades) for r in results]
    tp = sum(r.ref_level_high and r.pred_level == TriageLevel.HIGH for r in results)
    fn = sum(r.ref_level_high and r.pred_level != TriageLevel.HIGH for r in results)
    fp = sum((not r.ref_level_high) and r.pred_level == TriageLevel.HIGH for r in results)
    tn = sum((not r.ref_level_high) and r.pred_level != TriageLevel.HIGH for r in results)
    by_base: dict[str, list[int]] = {}
    fp_ml: dict[str, list[float]] = {}
    lung_ratio: dict[str, list[float]] = {}
    for r in results:
        by_base.setdefault(r.base, []).append(r.fp_components)
        fp_ml.setdefault(r.base, []).append(r.fp_ml)
        lung_ratio.setdefault(r.family, []).append(r.lung_ratio)
    clean_fp = {r.base: r.fp_ml for r in results if r.family == "clean"}
    return {
        "fp_ml": {b: (float(np.mean(v)), float(max(v)), clean_fp.get(b, float("nan"))) for b, v in fp_ml.items()},
        "lung_ratio": {f: (float(np.mean(v)), float(min(v)), float(max(v)), len(v)) for f, v in sorted(lung_ratio.items())},
        "nodules": (sum(nodules), len(nodules)),
        "model_version": MODEL_VERSION,
        "cases": len(results),
        "lesions": len(lesions),
        "sensitivity": sens,
        "fp_per_scan": {b: (float(np.mean(v)), int(max(v)), len(v)) for b, v in by_base.items()},
        "fp_per_scan_all": float(np.mean([r.fp_components for r in results])) if results else float("nan"),
        "dice": dices,
        "zone_exact": float(np.mean([a == b for a, b in zip(ref_g, pred_g)])) if ref_g else float("nan"),
        "zone_within1": float(np.mean([abs(a - b) <= 1 for a, b in zip(ref_g, pred_g)])) if ref_g else float("nan"),
        "zone_kappa": cohen_kappa(ref_g, pred_g),
        "zone_kappa_linear": cohen_kappa(ref_g, pred_g, weights="linear"),
        "zone_confusion": conf.tolist(),
        "total_exact": float(np.mean([a == b for a, b in zip(ref_tot, pred_tot)])) if ref_tot else float("nan"),
        "total_within1": float(np.mean([abs(a - b) <= 1 for a, b in zip(ref_tot, pred_tot)])) if ref_tot else float("nan"),
        "total_mean_diff": float(np.mean(np.subtract(pred_tot, ref_tot))) if ref_tot else float("nan"),
        "involvement_mean_abs_diff_pct": float(np.mean([abs(r.pred_total_pct - r.ref_total_pct) for r in results])) if results else float("nan"),
        "triage": {"tp": tp, "fn": fn, "fp": fp, "tn": tn,
                   "sensitivity": wilson(tp, tp + fn), "specificity": wilson(tn, tn + fp),
                   "ppv": wilson(tp, tp + fp), "npv": wilson(tn, tn + fn)},
        "per_case": [{"name": r.name, "lesions": r.n_lesions, "ref_pct": round(r.ref_total_pct, 2), "pred_pct": round(r.pred_total_pct, 2),
                      "ref_severity": sum(r.ref_grades), "pred_severity": sum(r.pred_grades),
                      "ref_high": r.ref_level_high, "pred_level": r.pred_level, "fp": r.fp_components, "fp_ml": round(r.fp_ml, 1),
                      "lung_pct": round(100 * r.lung_ratio, 1),
                      "detected": f"{sum(l['detected'] for l in r.per_lesion)}/{r.n_lesions}", "seconds": round(r.seconds, 1)} for r in results],
        "detect_fraction": DETECT_FRACTION,
    }


# -- report --------------------------------------------------------------------------------


def _ci(t: tuple[float, ...]) -> str:
    p, lo, hi = t[0], t[1], t[2]
    if math.isnan(p):
        return "n/a (no cases)"
    return f"{100 * p:.1f} % (95 % CI {100 * lo:.1f}-{100 * hi:.1f})"


def _row(cells: Sequence[Any]) -> str:
    """One Markdown table row (an empty cell is a single space)."""
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table: header, separator, rows."""
    return [_row(columns), "|" + "---|" * len(columns), *(_row(r) for r in rows)]


def _section(title: str, lines: Sequence[str]) -> list[str]:
    return [f"## {title}", "", *lines, ""]


def _md_method(s: dict[str, Any]) -> list[str]:
    return _section("Method (STARD-style summary)", [
        "* **Index test**: `model.analyze` (classical threshold + morphology pipeline), CPU, default `high_threshold` 0.85.",
        "* **Reference standard**: the inserted ground truth. Ellipsoidal opacities (semi-axes 0.75-1.25 x a nominal radius) "
        "with a 3 mm linear edge ramp and texture: ground glass (GGO) at a mean of -600 to -400 HU (smoothed noise SD 40 HU "
        "+ white noise 15 HU; only voxels below -200 HU are changed, so vessels stay visible) and consolidation at -50 to +50 HU "
        "(SD 20 + 10 HU). Reference voxels: edge weight >= 0.5, clipped to the reference lungs. Consolidation wins where lesions overlap.",
        "* **Scans**: (a) the one real chest CT of the shared data (`ct00`, 141 x 512 x 512, 0.98 x 0.98 x 2 mm; provenance: "
        "ITKElastix repository, InsightSoftwareConsortium/ITKElastix, Apache-2.0, commit 787db6d, `examples/data/00`, one phase "
        "of a public 4D lung CT set); its reference lungs and *pre-existing findings* (the real right-lung mass and whatever else "
        "the analyzer labels on the clean scan) come from the analysis of the clean scan; lesion centres are drawn at least 20 mm "
        "from those findings, at least 8 mm (in-plane) inside the lungs, uniformly (rejection sampling, one generator per lesion, "
        "so another analyzer version's slightly different reference lungs move only the lesions drawn where they differ); "
        "lesions may reach and are clipped at the pleura. "
        "(b) generated phantoms (`ctfleet.dev.phantom.chest_phantom`, three seeds), whose lung truth is exact.",
        "* **Case mix** (fixed seed): per scan one clean case plus cases with a few small lesions (radius 5-12 mm), moderate "
        "(3-6 lesions of 10-22 mm), borderline (8 GGO of 24-32 mm + one consolidation) and diffuse HIGH-level "
        "(14 lesions of 34-48 mm in both lungs); then the cases a triage must not miss or invent: one large consolidation "
        "(radius 25-60 mm) centred on the mediastinum (the most medial 5 % of placeable centres), on the diaphragm (the lowest "
        "10 %) or anywhere, per side; a consolidated lower lobe per side (the lung below an oblique plane rising from the front "
        "of the base to 60 % of the lung's height at the back, 3 mm edge ramp); diffuse ground glass over both lungs "
        "(-650 to -550 HU, vessels kept); eight solid nodules of 4-8 mm (0-60 HU), which are no opacity and count only as "
        "false positives. Phantom radii are scaled by 0.6 (smaller lungs). A region's size is the diameter of the sphere "
        "of its reference volume.",
        "* **Reader's marks on the real CT**: the clean scan's labels inside a box around the right-lung mass are the "
        "pre-existing finding; the faint density behind it (haze or motion of the 4D acquisition) is indeterminate and "
        "excluded from scoring; every other label on the clean scan is a false positive.",
        f"* **Definitions**: a lesion is *detected* when >= {100 * s['detect_fraction']:.0f} % of its reference voxels carry "
        "a predicted lesion label (either type). A *false-positive lesion* is a 6-connected predicted lesion component touching "
        "no reference lesion voxel (inserted, or pre-existing dilated by 2 voxels); the *false-positive volume* is the "
        "predicted opacity outside every reference lesion dilated by 2 voxels and outside the excluded zone. *Lung volume "
        "under disease* is the predicted lung volume over the reference lungs. Dice per type pools voxels over all cases, "
        "outside the pre-existing findings. Reference zone grades, severity (0-24) and triage use the analyzer's formulas on the "
        "reference map (inserted lesions plus pre-existing findings, over the reference lungs; zones = thirds of each lung's "
        "height); reference HIGH = score `1 - exp(-pct/15)` >= 0.85, i.e. involvement >= 28.5 %.",
        "* Confidence intervals: Wilson score, 95 %.",
    ])


def _md_detection(s: dict[str, Any]) -> list[str]:
    """Scans, per-lesion sensitivity, false positives and Dice."""
    d = s["dice"]
    return [
        *_section("Scans", _table(
            ("scan", "shape", "spacing (mm)", "reference lungs (ml)", "pre-existing findings (ml)"),
            ((b["name"], b["shape"], [round(x, 2) for x in b["spacing_mm"]], f"{b['lung_ml']:.0f}", f"{b['preexisting_ml']:.1f}")
             for b in s.get("bases", [])))),
        *_section("Per-lesion sensitivity", _table(
            ("stratum", "detected / lesions", "sensitivity"),
            ((k, f"{v[3]}/{v[4]}", _ci(v)) for k, v in s["sensitivity"].items()))),
        *_section("False-positive lesions per scan", _table(
            ("scan", "mean FP components per case", "max", "cases"),
            [*((b, f"{m:.2f}", mx, n) for b, (m, mx, n) in s["fp_per_scan"].items()),
             ("all", f"{s['fp_per_scan_all']:.2f}", "", s["cases"])])),
        *_section("False-positive volume", [
            "Predicted opacity outside every reference lesion (dilated by 2 voxels) and outside the excluded zone, in ml.",
            "",
            *_table(("scan", "clean scan", "mean per case", "max"),
                    ((b, f"{c:.1f}", f"{m:.1f}", f"{mx:.1f}") for b, (m, mx, c) in s["fp_ml"].items())),
            "",
            f"Small solid nodules (4-8 mm) counted as opacities: {s['nodules'][0]} of {s['nodules'][1]}.",
        ]),
        *_section("Lung volume under disease", [
            "Predicted lung volume as a share of the reference lungs (disease included), by case family.",
            "",
            *_table(("family", "mean", "min", "max", "cases"),
                    ((f, f"{100 * m:.1f} %", f"{100 * lo:.1f} %", f"{100 * hi:.1f} %", n) for f, (m, lo, hi, n) in s["lung_ratio"].items())),
        ]),
        *_section("Voxel overlap (Dice, pooled)", [
            f"GGO {d['ggo']:.3f}; consolidation {d['consolidation']:.3f}; any lesion (type ignored) {d['any']:.3f}."]),
    ]


def _md_grading(s: dict[str, Any]) -> list[str]:
    """Severity agreement and the HIGH vs not-HIGH table."""
    t = s["triage"]
    return [
        *_section("Severity score agreement", [
            f"* Per zone ({s['cases']} cases x 6 zones): exact {100 * s['zone_exact']:.1f} %, within +-1 grade {100 * s['zone_within1']:.1f} %, "
            f"Cohen's kappa {s['zone_kappa']:.3f} (linear-weighted {s['zone_kappa_linear']:.3f}).",
            f"* Total severity (0-24) per case: exact {100 * s['total_exact']:.1f} %, within +-1 {100 * s['total_within1']:.1f} %, "
            f"mean difference (index - reference) {s['total_mean_diff']:+.2f}.",
            f"* Mean absolute difference in total involvement: {s['involvement_mean_abs_diff_pct']:.2f} percentage points.",
            "",
            "Zone grade confusion (rows reference, columns index test):",
            "",
            *_table(("ref \\ index", "0", "1", "2", "3", "4"), ((g, *row) for g, row in enumerate(s["zone_confusion"]))),
        ]),
        *_section("Triage: HIGH vs not HIGH", [
            *_table(("", "reference HIGH", "reference not HIGH"),
                    [("index HIGH", t["tp"], t["fp"]), ("index not HIGH", t["fn"], t["tn"])]),
            "",
            f"* Sensitivity {_ci(t['sensitivity'])}; specificity {_ci(t['specificity'])}; PPV {_ci(t['ppv'])}; NPV {_ci(t['npv'])}.",
        ]),
    ]


def _md_per_case(s: dict[str, Any]) -> list[str]:
    return _section("Per case", _table(
        ("case", "lesions detected", "ref involvement %", "index %", "ref severity", "index severity", "ref HIGH",
         "index level", "FP", "FP ml", "lung % of ref", "s"),
        ((c["name"], c["detected"], c["ref_pct"], c["pred_pct"], c["ref_severity"], c["pred_severity"],
          "yes" if c["ref_high"] else "no", c["pred_level"], c["fp"], c["fp_ml"], c["lung_pct"], c["seconds"])
         for c in s["per_case"])))


_LIMITATIONS = [
    "* The lesions are synthetic: ellipsoids with smooth texture and a linear edge; real ground glass is patchy, "
    "crazy-paving, subpleural and basal, and consolidation has air bronchograms. The numbers bound how well the pipeline finds "
    "*what it was designed to find*, not its clinical accuracy.",
    "* One real scan only (one patient, one scanner, one phase of a 4D CT): the real-anatomy results rest on its lungs and "
    "noise. The reference lungs of that scan are the analyzer's own clean-scan lungs, so lung-segmentation errors are not "
    "measured there (on phantoms they are, lung truth being exact).",
    "* Lesions are centred at least 8 mm inside the lungs and 20 mm from the real mass; large ones reach the pleura and "
    "are clipped there. The mediastinal and diaphragmatic cases put the centre as near those surfaces as that allows; "
    "the lower lobe is a plane cut, not the real fissure.",
    "* The reader's marks on the real CT are one engineer's reading on a lung window, not a radiologist's.",
    "* Cases are not independent (same anatomy re-used), so the confidence intervals are optimistic; the triage table "
    "is dominated by the designed case mix (prevalence chosen, not observed).",
    "* Pre-existing findings of the clean real scan are part of the reference by construction and excluded from FP, Dice "
    "and sensitivity.",
]


def render_markdown(s: dict[str, Any]) -> str:
    """The validation report (docs/validation.md).

    Parameters
    ----------
    s : dict
        A summary from :func:`run` (or :func:`summarise`, with ``bases``, ``quick`` and ``seconds`` added).

    Returns
    -------
    str
        Markdown; its last line is empty, with no newline after it.
    """
    intro = [
        "# Validation of the default analyzer (synthetic-lesion insertion)",
        "",
        f"Model version `{s['model_version']}`; {s['cases']} cases, {s['lesions']} inserted lesions; "
        f"{'quick mode (tiny phantoms only)' if s.get('quick') else 'full run'}; {s.get('seconds', 0):.0f} s on this machine. "
        "Generated by `python -m ctfleet.dev.validate --out docs/validation.md` (deterministic seed); do not edit by hand.",
        "",
    ]
    lines = [*intro, *_md_method(s), *_md_detection(s), *_md_grading(s), *_md_per_case(s), *_section("Limitations", _LIMITATIONS)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ctfleet.dev.validate", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny phantoms only (about a minute or less)")
    ap.add_argument("--no-real", action="store_true", help="skip the real CT even when its archive is present")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown report here (default: stdout)")
    args = ap.parse_args(argv)
    summary = run(quick=args.quick, real=not args.no_real, log=sys.stderr)
    text = render_markdown(summary)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
