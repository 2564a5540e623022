"""Series: group data sets into stacks of slices (:class:`Series`), each ordered along its normal.

A stack is one study, one SeriesInstanceUID, one orientation and one image
size; a series that mixes them (a scout stored with the axial slices) becomes
several stacks. The repr of a :class:`Series` carries no UID.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ctfleet.intake.geometry import ORIENTATION_TOLERANCE, orientation_vectors, plane_name
from ctfleet.intake.headers import float_or_none, float_values, get_value, image_type_values, text_value
from ctfleet.intake.syntaxes import LOSSY_TRANSFER_SYNTAXES, transfer_syntax_of

MIN_SLICES = 3
"""A stack with fewer slices is treated as a localizer / scout, never analyzed."""


@dataclass(frozen=True, eq=False)
class Series:
    """One stack of slices: same study, series, orientation and image size.

    ``datasets`` are ordered by position along the slice normal, ascending
    (foot to head for an axial stack); slices without geometry come last, in
    the order given.

    The repr shows only counts and geometry, never UIDs, so a logged Series
    leaks nothing.
    """

    study_instance_uid: str = field(repr=False)
    series_instance_uid: str = field(repr=False)
    modality: str
    datasets: tuple[Dataset, ...] = field(repr=False)
    orientation: str  # "axial" | "coronal" | "sagittal" | "oblique" | "unknown"
    slice_thickness_mm: float | None
    kernel: str = field(repr=False)
    image_type: tuple[str, ...]
    is_localizer: bool
    is_multiframe: bool
    series_number: int | None = field(repr=False)

    @property
    def n_slices(self) -> int:
        """Number of instances in the stack."""
        return len(self.datasets)

    @cached_property
    def _along(self) -> np.ndarray:
        """Positions of the slices along the first slice's normal (slices with geometry only), sorted."""
        reference = next((o for o in (orientation_vectors(ds) for ds in self.datasets) if o is not None), None)
        if reference is None:
            return np.empty(0)
        points = [p for p in (float_values(ds, "ImagePositionPatient", 3) for ds in self.datasets) if p is not None]
        return np.sort(np.asarray([float(p @ reference[2]) for p in points]))

    @property
    def coverage_mm(self) -> float | None:
        """Extent along the slice normal, first to last slice centre (None without positions)."""
        along = self._along
        return float(along[-1] - along[0]) if along.size else None

    @property
    def slice_gap_mm(self) -> float | None:
        """Median distance between neighbouring slice centres (None for fewer than two)."""
        along = self._along
        return float(np.median(np.diff(along))) if along.size > 1 else None

    @property
    def is_lossy(self) -> bool:
        """Pixel data is, or once was, lossy compressed (transfer syntax or LossyImageCompression "01")."""
        if not self.datasets:
            return False
        first = self.datasets[0]
        lossy_syntax = transfer_syntax_of(first) in LOSSY_TRANSFER_SYNTAXES
        return lossy_syntax or text_value(first, "LossyImageCompression") == "01"

    @property
    def has_geometry(self) -> bool:
        """Every slice has orientation, position and pixel spacing."""
        return all(
            orientation_vectors(ds) is not None
            and float_values(ds, "ImagePositionPatient", 3) is not None
            and float_values(ds, "PixelSpacing", 2) is not None
            for ds in self.datasets
        )


def _stack_signature(ds: Dataset) -> tuple[np.ndarray | None, Any, Any]:
    iop = float_values(ds, "ImageOrientationPatient", 6)
    return iop, get_value(ds, "Rows"), get_value(ds, "Columns")


def _same_stack(a: tuple[np.ndarray | None, Any, Any], b: tuple[np.ndarray | None, Any, Any]) -> bool:
    if a[1:] != b[1:]:
        return False
    if a[0] is None or b[0] is None:
        return a[0] is None and b[0] is None
    return bool(np.max(np.abs(a[0] - b[0])) <= ORIENTATION_TOLERANCE)


def _sorted_by_position(datasets: Sequence[Dataset]) -> tuple[Dataset, ...]:
    """Ascending along the first slice's normal; slices without geometry last, in input order."""
    reference = next((o for o in (orientation_vectors(ds) for ds in datasets) if o is not None), None)
    if reference is None:
        return tuple(datasets)
    normal = reference[2]
    keyed: list[tuple[int, float, int, Dataset]] = []
    for index, ds in enumerate(datasets):
        ipp = float_values(ds, "ImagePositionPatient", 3)
        if ipp is None:
            keyed.append((1, 0.0, index, ds))
        else:
            keyed.append((0, float(ipp @ normal), index, ds))
    keyed.sort(key=lambda t: t[:3])
    return tuple(t[3] for t in keyed)


def _make_series(datasets: list[Dataset]) -> Series:
    first = datasets[0]
    image_type = image_type_values(first)
    orientation = orientation_vectors(first)
    number = get_value(first, "SeriesNumber")
    try:
        series_number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        series_number = None
    frames = get_value(first, "NumberOfFrames")
    try:
        multiframe = frames not in (None, "") and int(frames) > 1
    except (TypeError, ValueError):
        multiframe = True
    return Series(
        study_instance_uid=text_value(first, "StudyInstanceUID"),
        series_instance_uid=text_value(first, "SeriesInstanceUID"),
        modality=text_value(first, "Modality").upper(),
        datasets=_sorted_by_position(datasets),
        orientation="unknown" if orientation is None else plane_name(orientation[2]),
        slice_thickness_mm=float_or_none(first, "SliceThickness"),
        kernel=text_value(first, "ConvolutionKernel"),
        image_type=image_type,
        # Single-frame scouts are often one or two images; a 3-D stack has more.
        is_localizer="LOCALIZER" in image_type or (not multiframe and len(datasets) < MIN_SLICES),
        is_multiframe=multiframe,
        series_number=series_number,
    )


def group_series(datasets: Iterable[Dataset]) -> list[Series]:
    """Group data sets into stacks by study, series, orientation and image size.

    A SeriesInstanceUID that mixes orientations or image sizes (a scout stored
    with the axial slices, a reformat appended to the series) is split into one
    :class:`Series` per stack, so each stack can be judged on its own. An
    instance sent twice (same SOPInstanceUID) is kept once.

    Parameters
    ----------
    datasets : iterable of pydicom.Dataset
        Data sets as returned by :func:`~ctfleet.intake.reading.read_dataset`, in any order.

    Returns
    -------
    list of Series
        Ordered by study UID, series number, series UID (deterministic for a
        given upload, whatever the file order).
    """
    groups: dict[tuple[str, str], list[tuple[tuple[np.ndarray | None, Any, Any], list[Dataset]]]] = {}
    seen: set[str] = set()
    for ds in datasets:
        sop = text_value(ds, "SOPInstanceUID")
        if sop:
            if sop in seen:
                continue  # the same instance uploaded twice is not a duplicate slice
            seen.add(sop)
        stacks = groups.setdefault((text_value(ds, "StudyInstanceUID"), text_value(ds, "SeriesInstanceUID")), [])
        signature = _stack_signature(ds)
        for existing, members in stacks:
            if _same_stack(existing, signature):
                members.append(ds)
                break
        else:
            stacks.append((signature, [ds]))
    result = [_make_series(members) for stacks in groups.values() for _, members in stacks]
    result.sort(
        key=lambda s: (
            s.study_instance_uid,
            s.series_number if s.series_number is not None else -1,
            s.series_instance_uid,
            -s.n_slices,
        )
    )
    return result

