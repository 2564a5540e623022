"""Choosing: which stack of an upload to analyze, why, and what else the upload held.

:func:`choose` excludes stacks that cannot be analyzed and ranks the rest; its
:class:`Choice` records every candidate without PHI, fit to store with the
study record. :func:`volume_for_upload` builds the chosen stack's volume and
falls back to the next stack when one fails while its pixels are read.

Exclusions: not CT; a localizer/scout (ImageType LOCALIZER, or fewer than
:data:`~ctfleet.intake.series.MIN_SLICES` single-frame slices); multi-frame
(not supported yet); missing geometry; and, with ``check_geometry``, a stack
that fails :func:`~ctfleet.intake.geometry.stack_geometry`'s checks (a
missing slice, duplicate or uneven positions, mixed orientation) -- the next
best stack is taken instead, and the failure recorded against the candidate.

Ranking of the rest, most important first:

1. axial before coronal/sagittal/oblique (reformats);
2. full lung coverage: extent along the normal of at least
   :data:`FULL_COVERAGE_MM`, or -- when no stack reaches it -- within 90 %
   of the longest stack;
3. thin (<= :data:`THIN_SLICE_MM`) before thick slices: thick slices
   average small opacities into the surrounding lung;
4. kernel: soft/standard (B30f, Br40, STANDARD, SOFT, FC13, B) before
   medium/unknown before sharp lung/bone kernels (B70f, LUNG, BONE, FC51,
   L). The analysis thresholds HU (ground glass -750..-300, consolidation
   -300..100): sharp kernels add noise of 100-300 HU SD in lung and
   edge-enhancement overshoot around vessels and ribs, pushing normal lung
   (~-850 HU) into the ground-glass window; soft kernels keep mean HU
   faithful with far less noise, which is why quantitative lung density
   work (e.g. the QIBA lung density profile) asks for them;
5. thinner slices; 6. lossless before lossy pixel data; 7. more slices;
8. lower series number; 9. input order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from model.volume import Volume

from ctfleet.contracts import Reason
from ctfleet.errors import BadInput
from ctfleet.intake.geometry import stack_geometry
from ctfleet.intake.series import MIN_SLICES, Series
from ctfleet.intake.syntaxes import TRANSFER_SYNTAXES, transfer_syntax_of
from ctfleet.intake.volume import volume_from_series

FULL_COVERAGE_MM = 200.0
"""Extent along the slice normal (first to last slice centre) that counts as full lung coverage.

Adult lungs span ~220-300 mm apex to base; 200 mm separates a whole-chest
stack from a limited one (a high-resolution subset, a targeted
reconstruction). When no stack reaches it (a child, a short scan), stacks
within 90 % of the longest one count as full instead.
"""
THIN_SLICE_MM = 3.0
"""Slices at most this thick are 'thin'; any thin stack is preferred over a thick one."""

_SIEMENS_KERNEL = re.compile(r"^(?:B|BR|BL|BV|BF|I|IR|Q|QR|H|HR|D|T|U|UL)(\d{2})")
_TOSHIBA_KERNEL = re.compile(r"^F[CL](\d{2})")
_SOFT_WORDS = ("STANDARD", "STND", "STD", "SOFT", "SMOOTH", "BODY", "MEDIASTIN", "ABDOMEN", "BRAIN")
_SHARP_WORDS = ("LUNG", "BONE", "SHARP", "EDGE", "HIGH RES", "HIGHRES", "HRCT", "ULTRA", "PULMO")


def kernel_class(kernel: str) -> str:
    """Classify a ConvolutionKernel as ``"soft"``, ``"medium"``, ``"sharp"`` or ``"unknown"``.

    Covers the common vendor conventions: Siemens ``B30f``/``Br40``/``I44f``
    (number < 50 soft, 50-59 medium, >= 60 sharp), Canon/Toshiba ``FC13``
    (< 30 soft, 30-49 medium, >= 50 sharp; ``FL..`` lung kernels sharp), GE
    ``STANDARD``/``SOFT`` (soft), ``DETAIL``/``CHEST`` (medium),
    ``LUNG``/``BONE``/``BONEPLUS``/``EDGE`` (sharp), Philips ``A``/``B``/``C``/
    ``YA``/``YB`` (soft), ``D``/``YC`` (medium), ``E``/``L``/``YD``/``YE``
    (sharp).

    Parameters
    ----------
    kernel : str
        The ConvolutionKernel value (several values joined by ``\\``).

    Returns
    -------
    str
    """
    text = kernel.strip().upper().split("\\")[0].strip()
    if not text:
        return "unknown"
    match = _SIEMENS_KERNEL.match(text)
    if match:
        n = int(match.group(1))
        return "soft" if n < 50 else "medium" if n < 60 else "sharp"
    match = _TOSHIBA_KERNEL.match(text)
    if match:
        n = int(match.group(1))
        if text.startswith("FL"):
            return "sharp"
        return "soft" if n < 30 else "medium" if n < 50 else "sharp"
    if any(word in text for word in _SHARP_WORDS):
        return "sharp"
    if any(word in text for word in _SOFT_WORDS):
        return "soft"
    if text in ("DETAIL", "CHEST"):
        return "medium"
    if text in ("A", "B", "C", "YA", "YB", "UB"):
        return "soft"
    if text in ("D", "YC"):
        return "medium"
    if text in ("E", "L", "YD", "YE"):
        return "sharp"
    return "unknown"


_KERNEL_RANK = {"soft": 0, "medium": 1, "unknown": 1, "sharp": 2}


@dataclass(frozen=True, eq=False)
class Choice:
    """The stack chosen for analysis, why, and what else the upload held.

    ``candidates`` describe every stack given, one dict each, in input order,
    with no UID, description, date or other PHI -- fit to store with the
    study record (see :meth:`as_dict`):

    ``index`` (position in the list given), ``modality``, ``orientation``,
    ``slices``, ``slice_thickness_mm``, ``slice_gap_mm``, ``coverage_mm``,
    ``kernel`` (the vendor's kernel name, at most 16 characters),
    ``kernel_class`` (see :func:`kernel_class`), ``transfer_syntax`` (short
    name), ``lossy``, ``rank`` (1 = best among the usable ones, None when
    excluded), ``chosen`` and ``excluded_because`` (None, or a code:
    ``not_ct``, ``localizer``, ``too_few_slices``, ``multi_frame``,
    ``no_geometry``, or the reason code of a stack that failed its geometry
    checks or, in :func:`volume_for_upload`, its decoding).
    """

    series: Series
    index: int
    reason: str
    candidates: tuple[dict[str, Any], ...]
    ranked: tuple[int, ...] = field(default=(), repr=False)  # indices of usable stacks, best first

    def as_dict(self) -> dict[str, Any]:
        """A plain, PHI-free dict: ``{"chosen", "reason", "candidates"}``."""
        return {"chosen": self.index, "reason": self.reason, "candidates": [dict(c) for c in self.candidates]}


def _describe(index: int, s: Series) -> dict[str, Any]:
    gap = s.slice_gap_mm
    syntax = transfer_syntax_of(s.datasets[0]) if s.datasets else None
    return {
        "index": index,
        "modality": s.modality or "",
        "orientation": s.orientation,
        "slices": s.n_slices,
        "slice_thickness_mm": None if s.slice_thickness_mm is None else round(s.slice_thickness_mm, 3),
        "slice_gap_mm": None if gap is None else round(gap, 3),
        "coverage_mm": None if s.coverage_mm is None else round(s.coverage_mm, 1),
        "kernel": s.kernel.split("\\")[0][:16],
        "kernel_class": kernel_class(s.kernel),
        "transfer_syntax": TRANSFER_SYNTAXES.get(syntax, "other") if syntax is not None else "other",
        "lossy": s.is_lossy,
        "full_coverage": False,
        "rank": None,
        "chosen": False,
        "excluded_because": None,
    }


def _exclusion(s: Series) -> str | None:
    if s.modality != "CT":
        return Reason.NOT_CT
    if "LOCALIZER" in s.image_type:
        return Reason.LOCALIZER
    if s.is_multiframe:
        return Reason.MULTI_FRAME
    if s.is_localizer:
        return Reason.TOO_FEW_SLICES
    if not s.has_geometry:
        return Reason.NO_GEOMETRY
    return None


def _thickness(s: Series) -> float:
    t = s.slice_thickness_mm if s.slice_thickness_mm and s.slice_thickness_mm > 0 else s.slice_gap_mm
    return t if t and t > 0 else float("inf")


def _reason_text(c: dict[str, Any], usable: int, excluded: int) -> str:
    """One line from a candidate record: why it was taken."""
    thickness = c["slice_thickness_mm"] or c["slice_gap_mm"]
    parts = [
        c["orientation"],
        f"{'full' if c['full_coverage'] else 'partial'} coverage {c['coverage_mm'] or 0.0:.0f} mm",
        f"{thickness:g} mm slices" if thickness else "slice thickness unknown",
        f"{c['kernel_class']} kernel",
    ]
    text = ", ".join(parts) + f"; best of {usable} usable stack{'s' if usable != 1 else ''}"
    return text + (f" ({excluded} excluded)" if excluded else "")


def choose(series: Sequence[Series], *, check_geometry: bool = True) -> Choice:
    """Choose the stack to analyze and record why, and what else was there.

    Exclusions and ranking are those of the module docstring.

    Parameters
    ----------
    series : sequence of Series
        Usually the output of :func:`~ctfleet.intake.series.group_series` for one upload.
    check_geometry : bool, optional
        Validate the geometry of the best stacks (headers only, no decoding)
        and fall back to the next one when it fails. Default True.

    Returns
    -------
    Choice

    Raises
    ------
    BadInput
        ``empty_upload`` when ``series`` is empty; ``multiple_studies`` when
        they span more than one StudyInstanceUID; ``not_ct`` when none is CT;
        ``no_usable_series`` when every CT stack was excluded; the geometry
        reason code of the best stack when every usable stack fails its
        geometry checks.
    """
    if not series:
        raise BadInput(Reason.EMPTY_UPLOAD, "no DICOM instances")
    studies = {s.study_instance_uid for s in series}
    if len(studies) > 1:
        raise BadInput(Reason.MULTIPLE_STUDIES, f"{len(studies)} studies in one upload; send one study at a time")
    candidates = [_describe(i, s) for i, s in enumerate(series)]
    if not any(s.modality == "CT" for s in series):
        raise BadInput(Reason.NOT_CT, f"none of {len(series)} series is CT")
    usable = _usable(series, candidates)
    ordered = sorted(usable, key=_ranking(series, usable, candidates))
    viable = _passing_geometry(series, ordered, candidates) if check_geometry else ordered
    for r, i in enumerate(viable, start=1):
        candidates[i]["rank"] = r
    best = viable[0]
    candidates[best]["chosen"] = True
    excluded = sum(1 for c in candidates if c["excluded_because"] is not None)
    reason = _reason_text(candidates[best], len(viable), excluded)
    if best != ordered[0]:
        reason += f"; preferred stack {ordered[0]} failed ({candidates[ordered[0]]['excluded_because']})"
    return Choice(series=series[best], index=best, reason=reason, candidates=tuple(candidates), ranked=tuple(viable))


def _usable(series: Sequence[Series], candidates: list[dict[str, Any]]) -> list[int]:
    """Indices of the stacks not excluded, each exclusion recorded in its candidate."""
    usable: list[int] = []
    for i, s in enumerate(series):
        candidates[i]["excluded_because"] = _exclusion(s)
        if candidates[i]["excluded_because"] is None:
            usable.append(i)
    if not usable:
        ct = sum(1 for s in series if s.modality == "CT")
        raise BadInput(
            Reason.NO_USABLE_SERIES,
            f"{ct} CT series, none usable (localizer, fewer than {MIN_SLICES} slices, multi-frame or no geometry)",
        )
    return usable


def _ranking(series: Sequence[Series], usable: list[int],
             candidates: list[dict[str, Any]]) -> Callable[[int], tuple[Any, ...]]:
    """The sort key of the module docstring's ranking over the usable stacks (``full_coverage`` recorded)."""
    axial = [i for i in usable if series[i].orientation == "axial"]
    longest = max((series[i].coverage_mm or 0.0) for i in (axial or usable))
    full_mm = min(FULL_COVERAGE_MM, 0.9 * longest)

    def is_full(s: Series) -> bool:
        return (s.coverage_mm or 0.0) >= full_mm - 1e-6

    for i in usable:
        candidates[i]["full_coverage"] = is_full(series[i])

    def rank(i: int) -> tuple[Any, ...]:
        s = series[i]
        thickness = _thickness(s)
        number = s.series_number if s.series_number is not None else 1 << 31
        return (
            0 if s.orientation == "axial" else 1,
            0 if is_full(s) else 1,
            0 if thickness <= THIN_SLICE_MM + 1e-6 else 1,
            _KERNEL_RANK[kernel_class(s.kernel)],
            round(thickness, 2),
            1 if s.is_lossy else 0,
            -s.n_slices,
            number,
            i,
        )

    return rank


def _passing_geometry(series: Sequence[Series], ordered: list[int], candidates: list[dict[str, Any]]) -> list[int]:
    """The ranked stacks whose headers pass :func:`stack_geometry`, each failure recorded in its candidate."""
    viable: list[int] = []
    failure: BadInput | None = None
    for i in ordered:
        try:
            stack_geometry(list(series[i].datasets))
        except BadInput as exc:
            candidates[i]["excluded_because"] = exc.reason
            failure = failure or exc
            continue
        viable.append(i)
    if not viable:
        assert failure is not None
        raise BadInput(failure.reason, f"none of {len(ordered)} usable CT stacks passes the geometry checks; "
                                       f"the best one: {failure.detail}")
    return viable


def choose_series(series: Sequence[Series]) -> Series:
    """Pick the one stack to analyze: :func:`choose` without the record of why.

    Parameters
    ----------
    series : sequence of Series
        Usually the output of :func:`~ctfleet.intake.series.group_series` for one upload.

    Returns
    -------
    Series

    Raises
    ------
    BadInput
        As :func:`choose`.
    """
    return choose(series).series


def explain_choice(series: Sequence[Series], chosen: Series) -> dict[str, Any]:
    """The PHI-free record of a choice already made (for callers of :func:`choose_series`).

    Parameters
    ----------
    series : sequence of Series
        The stacks the choice was made from.
    chosen : Series
        One of them.

    Returns
    -------
    dict
        :meth:`Choice.as_dict` of :func:`choose` on ``series``, with
        ``chosen`` pointing at ``chosen`` (which is normally what
        :func:`choose` picks anyway).
    """
    choice = choose(series)
    record = choice.as_dict()
    index = next((i for i, s in enumerate(series) if s is chosen), None)
    if index is not None and index != choice.index:
        for c in record["candidates"]:
            c["chosen"] = c["index"] == index
        record["chosen"] = index
        record["reason"] = "chosen by the caller; ranking preferred stack " + str(choice.index)
    return record


def volume_for_upload(series: Sequence[Series]) -> tuple[Volume, Choice]:
    """Choose a stack and build its volume, falling back to the next stack when one fails.

    A stack that passes the header checks can still fail while its pixels
    are read (a slice that does not decode, a decoder error). Rather than
    reject the upload, the next stack in :func:`choose`'s ranking is tried;
    the failure is recorded in that candidate's ``excluded_because`` and in
    the reason.

    Parameters
    ----------
    series : sequence of Series
        Every stack of one upload (:func:`~ctfleet.intake.series.group_series`).

    Returns
    -------
    (Volume, Choice)
        The volume of the stack actually used, and the choice describing it.

    Raises
    ------
    BadInput
        As :func:`choose`; or the reason code of the best stack's failure when
        no usable stack yields a volume.
    """
    choice = choose(series)
    candidates = [dict(c) for c in choice.candidates]
    first_error: BadInput | None = None
    for i in choice.ranked:
        try:
            volume = volume_from_series(series[i])
        except BadInput as exc:
            candidates[i]["excluded_because"] = exc.reason
            candidates[i]["rank"] = None
            candidates[i]["chosen"] = False
            first_error = first_error or exc
            continue
        reason = choice.reason
        if i != choice.index:
            for c in candidates:
                c["chosen"] = c["index"] == i
            remaining = [j for j in choice.ranked if candidates[j]["excluded_because"] is None]
            for r, j in enumerate(remaining, start=1):
                candidates[j]["rank"] = r
            excluded = sum(1 for c in candidates if c["excluded_because"] is not None)
            reason = (_reason_text(candidates[i], len(remaining), excluded)
                      + f"; fell back from stack {choice.index} ({candidates[choice.index]['excluded_because']})")
        return volume, replace(choice, series=series[i], index=i, reason=reason, candidates=tuple(candidates))
    assert first_error is not None
    raise BadInput(first_error.reason, f"none of {len(choice.ranked)} usable CT stacks gives a volume; "
                                       f"the best one: {first_error.detail}")

