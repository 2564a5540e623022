"""From a label map to the report: volumes, zone involvement, severity, score and triage level.

Shared by every analyzer, so the same labels always give the same report.
Zones are the thirds of each lung's height (lower, middle, upper); a zone's
grade is 0 (none), 1 (< 25 %), 2 (< 50 %), 3 (< 75 %) or 4; the severity
score is the sum over the six zones (0-24).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .labels import Flag, Label, TriageLevel
from .lungs import Side
from .morphology import slice_bincounts
from .volume import Volume

__all__ = [
    "MEDIUM_THRESHOLD",
    "Measurements",
    "SCORE_SCALE_PCT",
    "ZONES",
    "build_report",
    "measure",
    "score_from_involvement",
    "triage_level",
    "zone_grade",
]

ZONES = ("right_upper", "right_middle", "right_lower", "left_upper", "left_middle", "left_lower")

# score = 1 - exp(-involvement_pct / SCORE_SCALE_PCT): 0 at no involvement,
# strictly increasing, 0.865 at 30 % (so >= 30 % always reaches the default
# HIGH threshold of 0.85, which is crossed at 28.5 %).
SCORE_SCALE_PCT = 15.0
# MEDIUM from score 0.30, i.e. about 5.4 % of the lungs involved: beyond
# scattered small opacities, worth a radiologist's look the same day.
MEDIUM_THRESHOLD = 0.30


def score_from_involvement(involvement_pct: float) -> float:
    """Map total lung involvement (percent) to the triage score in ``[0, 1)``.

    ``score = 1 - exp(-involvement_pct / 15)``; monotone, 0.865 at 30 %.
    """
    return float(1.0 - math.exp(-max(0.0, involvement_pct) / SCORE_SCALE_PCT))


def zone_grade(pct: float) -> int:
    """A zone's grade 0-4 from the percent of its lung involved."""
    if pct <= 0.0:
        return 0
    if pct < 25.0:
        return 1
    if pct < 50.0:
        return 2
    if pct < 75.0:
        return 3
    return 4


def triage_level(score: float, high_threshold: float) -> str:
    """The :class:`TriageLevel` of a score: HIGH from ``high_threshold``, MEDIUM from :data:`MEDIUM_THRESHOLD`."""
    if score >= high_threshold:
        return TriageLevel.HIGH
    if score >= MEDIUM_THRESHOLD:
        return TriageLevel.MEDIUM
    return TriageLevel.LOW


@dataclass(frozen=True)
class Measurements:
    """What the label map measures, before rounding.

    Attributes
    ----------
    lung_ml : dict of str to float
        ``left``, ``right``, ``total`` lung volume (lesions included), ml.
    lesion_ml : dict of str to float
        ``ggo``, ``consolidation`` volume inside the lungs, ml.
    zones : dict of str to float
        Percent of each of :data:`ZONES` involved.
    total_pct : float
        Percent of the lungs involved.
    severity : int
        Sum of the zone grades (0-24).
    """

    lung_ml: dict[str, float]
    lesion_ml: dict[str, float]
    zones: dict[str, float]
    total_pct: float
    severity: int

    @classmethod
    def nothing(cls) -> "Measurements":
        """No lungs, no lesions (a volume that is not a chest)."""
        return cls({"left": 0.0, "right": 0.0, "total": 0.0}, {"ggo": 0.0, "consolidation": 0.0},
                   {z: 0.0 for z in ZONES}, 0.0, 0)


def _counts_per_slice(labels: torch.Tensor, sides: torch.Tensor) -> np.ndarray:
    """float64 ``(Z, 3, 4)``: per slice, voxel counts of each (side, label) pair."""
    n_labels = Label.CONSOLIDATION + 1
    counts = slice_bincounts(sides * n_labels + labels, 3 * n_labels)  # uint8 code: side 0..2, label 0..3
    return counts.reshape(labels.shape[0], 3, n_labels).cpu().numpy().astype(np.float64)


def _zone_pcts(name: str, lung_z: np.ndarray, lesion_z: np.ndarray, zs: np.ndarray) -> dict[str, float]:
    """Percent involved of one lung's lower, middle and upper thirds (``zs``: slice positions, mm)."""
    present = np.nonzero(lung_z)[0]
    lo, hi = float(zs[present.min()]), float(zs[present.max()])
    third = (hi - lo) / 3.0
    bounds = {"lower": (lo - 1.0, lo + third), "middle": (lo + third, lo + 2 * third), "upper": (lo + 2 * third, hi + 1.0)}
    out: dict[str, float] = {}
    for zone, (a, b) in bounds.items():
        band = (zs >= a) & (zs < b) if zone != "upper" else (zs >= a) & (zs <= b)
        n = float(lung_z[band].sum())
        out[f"{name}_{zone}"] = 100.0 * float(lesion_z[band].sum()) / n if n else 0.0
    return out


def measure(labels: torch.Tensor, sides: torch.Tensor, spacing_mm: tuple[float, ...]) -> Measurements:
    """Volumes, zone involvement and severity of a label map.

    Parameters
    ----------
    labels : torch.Tensor
        uint8 ``(Z, Y, X)``, :class:`Label` values, canonical orientation (Z superior).
    sides : torch.Tensor
        uint8 ``(Z, Y, X)`` side map on the same grid (:class:`model.lungs.Side`).
    spacing_mm : tuple of float
        ``(z, y, x)`` voxel size of that grid in mm.

    Returns
    -------
    Measurements
    """
    per_z = _counts_per_slice(labels, sides)
    ml = spacing_mm[0] * spacing_mm[1] * spacing_mm[2] / 1000.0
    zs = np.arange(per_z.shape[0], dtype=np.float64) * spacing_mm[0]
    zones: dict[str, float] = {z: 0.0 for z in ZONES}
    lung_ml = {"left": 0.0, "right": 0.0, "total": 0.0}
    for s, name in Side.NAMED:
        lung_z = per_z[:, s, Label.LUNG:].sum(axis=1)
        n_lung = float(lung_z.sum())
        lung_ml[name] = n_lung * ml
        if n_lung:
            zones.update(_zone_pcts(name, lung_z, per_z[:, s, Label.GGO:].sum(axis=1), zs))
    lung_ml["total"] = lung_ml["left"] + lung_ml["right"]
    inside = per_z[:, Side.RIGHT:, :].sum(axis=(0, 1))
    lesion_ml = {"ggo": float(inside[Label.GGO]) * ml, "consolidation": float(inside[Label.CONSOLIDATION]) * ml}
    total_pct = 0.0
    if lung_ml["total"] > 0:
        total_pct = 100.0 * (lesion_ml["ggo"] + lesion_ml["consolidation"]) / lung_ml["total"]
    return Measurements(lung_ml, lesion_ml, zones, total_pct, sum(zone_grade(v) for v in zones.values()))


def build_report(
    volume: Volume,
    m: Measurements,
    flags: list[str],
    *,
    high_threshold: float,
    model_version: str,
    timings: dict[str, float],
    device: torch.device,
) -> dict[str, Any]:
    """The JSON-serialisable report of one analysis (see :func:`model.analysis.analyze` for its fields).

    Parameters
    ----------
    volume : Volume
        The analyzed CT (its shape and spacing are reported as given).
    m : Measurements
        What its label map measures.
    flags : list of str
        :class:`Flag` values; with ``not_a_chest`` the score is 0 and the level LOW.
    high_threshold : float
        Score at or above which the triage level is ``HIGH``.
    model_version : str
        The analyzer's version.
    timings : dict of str to float
        Seconds per step (kept by reference).
    device : torch.device
        Where the analysis ran.

    Returns
    -------
    dict
    """
    chest = Flag.NOT_A_CHEST not in flags
    score = score_from_involvement(m.total_pct) if chest else 0.0
    level = triage_level(score, high_threshold) if chest else TriageLevel.LOW
    return {
        "model_version": model_version,
        "shape": list(volume.shape),
        "spacing_mm": [round(float(s), 4) for s in volume.spacing_mm],
        "lung_volume_ml": {k: round(v, 1) for k, v in m.lung_ml.items()},
        "lesion_volume_ml": {k: round(v, 1) for k, v in m.lesion_ml.items()},
        "involvement_pct": {"total": round(m.total_pct, 2), "zones": {k: round(v, 2) for k, v in m.zones.items()}},
        "severity_score": int(m.severity),
        "score": round(score, 4),
        "score_formula": f"1 - exp(-involvement_pct.total / {SCORE_SCALE_PCT:g})",
        "triage_level": level,
        "thresholds": {"medium": MEDIUM_THRESHOLD, "high": float(high_threshold)},
        "timings_s": timings,
        "device": str(device),
        "flags": flags,
    }
