"""The built-in analyzer (:func:`analyze`), and the shared tail that turns any analyzer's labels into an :class:`Analysis`.

A classical (threshold + morphology) pipeline written as torch tensor ops so
the same code runs on CPU and CUDA. It works on two reduced grids
(:mod:`model.grid`):

* the *work* grid (about 2 mm in-plane) for lesions, where vessels and small
  opacities are still resolved (:mod:`model.lesions`);
* the *coarse* grid (about 4 mm) for the body, the air components and the
  lung/airway separation, where connected components are cheap (:mod:`model.lungs`).

Everything happens in canonical orientation (:mod:`model.orientation`). The
work grid's labels go back to the input grid with every boundary re-decided
there from the image's own HU (:mod:`model.refine`); they are measured
(:mod:`model.report`) and drawn as overlays (:mod:`model.overlay`) on the
input grid by :func:`finish`, which external labels go through too
(:func:`analysis_from_labels`, the exported networks of :mod:`model.exported`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .device import resolve_device, use_all_cores
from .grid import reduce_grid
from .labels import Flag, Label
from .lesions import label_lesions
from .lungs import (aerated_lungs, find_body, looks_like_lungs, one_lung_only, partial_coverage, side_regions, split_sides,
                    work_grid_lungs)
from .orientation import CanonicalVolume, canonical_orientation, canonical_volume, from_canonical, to_canonical
from .overlay import render_overlays
from .params import PARAMS, Params
from .refine import refine_labels
from .report import Measurements, build_report, measure
from .timing import Stopwatch
from .volume import Volume

__all__ = [
    "Analysis",
    "MODEL_VERSION",
    "Segmentation",
    "analysis_from_labels",
    "analysis_of_canonical_labels",
    "analyze",
    "finish",
]

# Bump whenever any threshold (model.params), step or formula of the built-in
# analyzer changes: results are stored under the model version, so a stale
# version would mix outputs.
MODEL_VERSION = "lungseg-0.9.3"


@dataclass(frozen=True)
class Analysis:
    """The result of :func:`analyze` (or of any analyzer).

    Attributes
    ----------
    labels : numpy.ndarray
        uint8 ``(Z, Y, X)`` on the input volume's grid: 0 background, 1 lung,
        2 ground-glass opacity, 3 consolidation (:class:`model.labels.Label`).
    report : dict
        JSON-serialisable report (see :func:`analyze`).
    overlays : dict of str to numpy.ndarray
        Name (``"axial_057"``, ``"coronal"``) to RGB uint8 ``(H, W, 3)`` image in
        radiological convention.
    """

    labels: np.ndarray = field(repr=False)
    report: dict[str, Any]
    overlays: dict[str, np.ndarray] = field(repr=False)


@dataclass(frozen=True)
class Segmentation:
    """Labels in canonical orientation, on the input grid, ready for :func:`finish`.

    Attributes
    ----------
    labels : torch.Tensor
        uint8 ``(z, y, x)`` :class:`Label` values.
    sides : torch.Tensor or None
        uint8 side map on the same grid (:class:`model.lungs.Side`); ``None``
        when the volume is not a chest.
    spacing_mm : tuple of float
        ``(z, y, x)`` voxel size of that grid in mm.
    work : (torch.Tensor, tuple of int) or None
        The labels on the coarser grid these were refined from, and its factors (input voxels per
        voxel): the overlays count lung and lesion per slice there to pick what to draw.
    flags : list of str
        :class:`Flag` values for the report.
    """

    labels: torch.Tensor
    sides: torch.Tensor | None
    spacing_mm: tuple[float, float, float]
    flags: list[str] = field(default_factory=list)
    work: tuple[torch.Tensor, tuple[int, int, int]] | None = None


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
        ``score`` (0-1, see :func:`model.report.score_from_involvement`), ``triage_level``,
        ``timings_s``, ``device`` and ``flags``. When no plausible lungs are
        found, ``flags`` holds ``"not_a_chest"``, the score is 0 and the level LOW;
        ``"partial_coverage"`` when the lungs run into the first or last slice
        (lung bases of an abdominal CT, part of a chest: the score covers what was scanned).

    Raises
    ------
    VolumeError
        ``too_few_slices``, ``bad_spacing`` or ``bad_orientation`` for volumes
        that cannot be a chest CT at all.
    """
    t_start = time.perf_counter()
    volume.check_analyzable()
    dev = resolve_device(device)
    use_all_cores(dev)
    watch = Stopwatch(dev, start=t_start)
    orient = canonical_orientation(volume.affine)
    # float16 halves memory traffic on GPU and keeps HU to 0.5 HU; CPU half math is slow.
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    with torch.inference_mode():
        view = canonical_volume(volume, orient, dev, dtype)
        seg = _segment(view, PARAMS, watch)
    return finish(volume, view, seg, watch, high_threshold=high_threshold, model_version=MODEL_VERSION)


def _segment(view: CanonicalVolume, p: Params, watch: Stopwatch) -> Segmentation:
    """Body, lungs, their sides and the lesions: the built-in analyzer's labels, found on the work grid, refined on the input grid."""
    work = reduce_grid(view, p.work_mm)
    coarse = reduce_grid(work, p.coarse_mm)
    watch.lap("prepare")
    chest = find_body(coarse, p)
    watch.lap("body")
    lung_c, hilar_c = aerated_lungs(chest, p)
    plausible = looks_like_lungs(chest, lung_c, p)
    watch.lap("lungs")
    if not plausible:
        labels = torch.zeros(view.shape, dtype=torch.uint8, device=view.hu.device)
        return Segmentation(labels, None, view.spacing_mm, flags=[Flag.NOT_A_CHEST])
    # Left/right: per slice, cut at the emptiest column near the body's midline.
    side_c = split_sides(lung_c, chest.body)
    flags = [Flag.ONE_LUNG_ONLY] if one_lung_only(side_c, coarse.voxel_ml) else []
    if partial_coverage(lung_c):
        flags.append(Flag.PARTIAL_COVERAGE)
    region_c = side_regions(chest, side_c, hilar_c, p)
    watch.lap("split")
    region_w, lung_w = work_grid_lungs(chest, side_c, region_c, work, p)
    labels_w = label_lesions(work, lung_w, p)
    watch.lap("lesions")
    labels, sides = refine_labels(view.hu, work.hu, labels_w, region_w, work.factors, p)
    watch.lap("refine")
    exact = all(n * f <= s for n, f, s in zip(labels_w.shape, work.factors, view.shape))  # padded, never cropped
    return Segmentation(labels, sides, view.spacing_mm, flags, (labels_w, work.factors) if exact else None)


def finish(
    volume: Volume, view: CanonicalVolume, seg: Segmentation, watch: Stopwatch, *, high_threshold: float, model_version: str
) -> Analysis:
    """Measure the labels, render overlays, return them in the input orientation, build the report.

    Parameters
    ----------
    volume : Volume
        The analyzed CT.
    view : CanonicalVolume
        Its canonical view (the overlays' HU).
    seg : Segmentation
        The labels to report.
    watch : Stopwatch
        Timings so far (the device it names is reported).
    high_threshold : float
        Score at or above which the triage level is ``HIGH``.
    model_version : str
        The analyzer's version for the report.

    Returns
    -------
    Analysis
    """
    if Flag.NOT_A_CHEST in seg.flags or seg.sides is None:
        m = Measurements.nothing()
    else:
        m = measure(seg.labels, seg.sides, seg.spacing_mm)
    watch.lap("measure")
    with torch.inference_mode():
        overlays = render_overlays(view.hu, seg.labels, view.spacing_mm, view.orientation, seg.work)
        watch.lap("overlays")
        labels_np = from_canonical(seg.labels, view.orientation).contiguous().cpu().numpy()
        watch.lap("orient")
    watch.record_total()
    report = build_report(volume, m, seg.flags, high_threshold=high_threshold, model_version=model_version,
                          timings=watch.timings, device=watch.device)
    return Analysis(labels=labels_np, report=report, overlays=overlays)


def _sides_of_labels(view: CanonicalVolume, labels: torch.Tensor, p: Params) -> Segmentation:
    """Labels made by another analyzer, with the built-in analyzer's side split and flags."""
    lung = labels > 0
    if float(lung.sum()) * view.voxel_ml < p.min_lung_ml:
        # As the built-in analyzer: no plausible lungs, no labels, score 0.
        return Segmentation(torch.zeros_like(labels), None, view.spacing_mm, flags=[Flag.NOT_A_CHEST])
    side = split_sides(lung, view.hu > p.body_hu)
    flags = [Flag.ONE_LUNG_ONLY] if one_lung_only(side, view.voxel_ml) else []
    return Segmentation(labels, side, view.spacing_mm, flags=flags)


def analysis_of_canonical_labels(
    volume: Volume,
    view: CanonicalVolume,
    labels: torch.Tensor,
    watch: Stopwatch,
    *,
    high_threshold: float,
    model_version: str,
    analyzer: str,
) -> Analysis:
    """Measure canonical labels exactly as :func:`analyze` does and build the Analysis.

    The arguments are those of :func:`finish`, but for ``labels`` in place of
    ``seg``: uint8 ``(Z, Y, X)`` :class:`Label` values on ``view``'s grid (``view``
    contiguous, on their device), whose sides and flags are found as the
    built-in analyzer finds them; ``analyzer`` is written to ``report["analyzer"]``.

    Returns
    -------
    Analysis
    """
    with torch.inference_mode():
        seg = _sides_of_labels(view, labels, PARAMS)
        watch.lap("split")
    result = finish(volume, view, seg, watch, high_threshold=high_threshold, model_version=model_version)
    return Analysis(labels=result.labels, report={**result.report, "analyzer": analyzer}, overlays=result.overlays)


def analysis_from_labels(
    volume: Volume,
    labels: np.ndarray | torch.Tensor,
    device: str | torch.device = "auto",
    *,
    model_version: str,
    analyzer: str = "external",
    high_threshold: float = 0.85,
) -> Analysis:
    """The standard report, overlays and label map for labels made by any analyzer.

    Lung volumes per side, lesion volumes, zone involvement, severity (0-24),
    score, triage level and overlays are computed by the same code as
    :func:`analyze` (left/right split at the emptiest column near the
    body's midline, zones = thirds of each lung's height).

    Parameters
    ----------
    volume : Volume
        The analyzed CT, HU ``(Z, Y, X)``.
    labels : numpy.ndarray or torch.Tensor
        uint8 ``(Z, Y, X)`` on ``volume``'s grid and orientation, values 0..3.
    device : str or torch.device
        Where to measure.
    model_version : str
        Written to ``report["model_version"]``.
    analyzer : str
        Written to ``report["analyzer"]``.
    high_threshold : float
        Score at or above which the triage level is ``HIGH``.

    Returns
    -------
    Analysis
        Its ``timings_s`` count from the call, cumulatively.

    Raises
    ------
    ValueError
        Labels not on the volume's grid or outside 0..3.
    """
    t_start = time.perf_counter()
    dev = resolve_device(device)
    lab = torch.as_tensor(labels)
    if tuple(lab.shape) != volume.shape:
        raise ValueError(f"labels {tuple(lab.shape)} are not on the volume's grid {volume.shape}")
    if lab.numel() and int(lab.max()) > Label.CONSOLIDATION:
        raise ValueError("labels must be 0 background, 1 lung, 2 GGO, 3 consolidation")
    watch = Stopwatch(dev, start=t_start, cumulative=True)
    orient = canonical_orientation(volume.affine)
    with torch.inference_mode():
        view = canonical_volume(volume, orient, dev, contiguous=True)
        labels_c = to_canonical(lab.to(dev, dtype=torch.uint8), orient).contiguous()
    return analysis_of_canonical_labels(volume, view, labels_c, watch, high_threshold=high_threshold,
                                        model_version=model_version, analyzer=analyzer)
