"""Geometry from headers: slice orientation, the plane it names, and the regular-grid check of one stack.

:func:`stack_geometry` orders a stack along its slice normal and checks, from
headers alone (no pixel is decoded), that it is a regular grid: one
orientation, image size and pixel spacing; no repeated position; even gaps;
positions on one line. :mod:`.choice` runs it to pass over a broken stack,
:mod:`.volume` to build the volume's affine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ctfleet.contracts import Reason
from ctfleet.errors import BadInput
from ctfleet.intake.headers import float_or_none, float_values, get_value

SPACING_TOLERANCE = 0.03
"""Largest relative deviation of one slice gap from the median gap (3 %).

DS values are decimal strings rounded by the scanner; 3 % absorbs that rounding
for slices down to ~0.5 mm while still catching a single missing slice (100 %).
"""
ORIENTATION_TOLERANCE = 2e-3
"""Largest per-component difference of direction cosines within one stack (~0.1 degree)."""


def orientation_vectors(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Unit row cosine, column cosine and slice normal (LPS), or None if absent/degenerate.

    Parameters
    ----------
    ds : pydicom.Dataset

    Returns
    -------
    (row, col, normal) or None
        Three float64 ``(3,)`` unit vectors from ImageOrientationPatient.
    """
    iop = float_values(ds, "ImageOrientationPatient", 6)
    if iop is None:
        return None
    row, col = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    # Scanners write cosines to a few decimals; accept small errors, reject garbage.
    if abs(nr - 1) > 1e-2 or abs(nc - 1) > 1e-2 or abs(float(row @ col)) > 1e-2:
        return None
    row, col = row / nr, col / nc
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def plane_name(normal: np.ndarray) -> str:
    """'axial', 'coronal', 'sagittal' if the normal is within ~37 degrees of an axis, else 'oblique'.

    Parameters
    ----------
    normal : numpy.ndarray
        ``(3,)`` slice normal in LPS.

    Returns
    -------
    str
    """
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


@dataclass(frozen=True)
class StackGeometry:
    """One stack checked to be a regular grid: its slices in order, image size, spacing, affine."""

    slices: list[Dataset]  # ordered along the normal
    rows: int
    cols: int
    spacing_mm: tuple[float, float, float]  # dz, dy, dx
    affine: np.ndarray  # RAS+


def stack_geometry(slices: list[Dataset]) -> StackGeometry:
    """Order one stack along its normal and check it is a regular grid (headers only).

    Parameters
    ----------
    slices : list of pydicom.Dataset
        Single-frame slices of one stack, in any order.

    Returns
    -------
    StackGeometry
        ``affine`` in RAS+ mm; its third column is the mean step between slice
        positions (sheared for a gantry-tilted stack).

    Raises
    ------
    BadInput
        ``no_usable_series`` (no slices), ``missing_geometry``,
        ``inconsistent_geometry``, ``duplicate_slices``, ``inconsistent_spacing``.
    """
    if not slices:
        raise BadInput(Reason.NO_USABLE_SERIES, "no slices")
    first = slices[0]
    reference = orientation_vectors(first)
    spacing = float_values(first, "PixelSpacing", 2)
    rows, cols = get_value(first, "Rows"), get_value(first, "Columns")
    if reference is None or spacing is None or not rows or not cols or min(spacing) <= 0:
        raise BadInput(Reason.MISSING_GEOMETRY, "orientation, pixel spacing or image size missing or invalid")
    row_cos, col_cos, normal = reference
    positions = _positions(slices, rows, cols, spacing)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    positions = positions[order]
    slices = [slices[i] for i in order]
    dy, dx = float(spacing[0]), float(spacing[1])
    if len(slices) == 1:
        dz, step = _single_slice_step(first, normal)
    else:
        dz, step = _regular_step(along, positions, dx, dy)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * dx  # i runs along a row: next column
    lps[:3, 1] = col_cos * dy  # j runs down a column: next row
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    # DICOM patient coordinates are LPS; nibabel/RAS+ wants x and y negated.
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return StackGeometry(slices=slices, rows=int(rows), cols=int(cols), spacing_mm=(dz, dy, dx), affine=affine)


def _positions(slices: list[Dataset], rows: Any, cols: Any, spacing: np.ndarray) -> np.ndarray:
    """ImagePositionPatient of every slice, ``(n, 3)``, in input order; orientation, size and spacing checked."""
    n = len(slices)
    iop0 = float_values(slices[0], "ImageOrientationPatient", 6)
    assert iop0 is not None
    positions = np.empty((n, 3), dtype=np.float64)
    for k, ds in enumerate(slices):
        ipp = float_values(ds, "ImagePositionPatient", 3)
        if ipp is None:
            missing = sum(float_values(d, "ImagePositionPatient", 3) is None for d in slices)
            raise BadInput(Reason.MISSING_GEOMETRY, f"{missing} of {n} slices have no valid position")
        positions[k] = ipp
        if k == 0:
            continue
        iop = float_values(ds, "ImageOrientationPatient", 6)
        if iop is None or np.max(np.abs(iop - iop0)) > ORIENTATION_TOLERANCE:
            raise BadInput(Reason.INCONSISTENT_GEOMETRY, f"slice orientation differs within the stack ({n} slices)")
        if get_value(ds, "Rows") != rows or get_value(ds, "Columns") != cols:
            raise BadInput(Reason.INCONSISTENT_GEOMETRY, f"image size differs within the stack ({n} slices)")
        ps = float_values(ds, "PixelSpacing", 2)
        if ps is None or np.max(np.abs(ps - spacing)) > 1e-3 * float(np.max(spacing)):
            raise BadInput(Reason.INCONSISTENT_GEOMETRY, f"pixel spacing differs within the stack ({n} slices)")
    return positions


def _single_slice_step(ds: Dataset, normal: np.ndarray) -> tuple[float, np.ndarray]:
    """(dz, step) of a one-slice stack: it has no gap to measure, so the header's word is taken."""
    dz = abs(float_or_none(ds, "SpacingBetweenSlices") or 0.0) or (float_or_none(ds, "SliceThickness") or 0.0)
    if dz <= 0:
        raise BadInput(Reason.MISSING_GEOMETRY, "single slice without SliceThickness")
    return dz, normal * dz


def _regular_step(along: np.ndarray, positions: np.ndarray, dx: float, dy: float) -> tuple[float, np.ndarray]:
    """(dz, step) of sorted slice positions, after checking the gaps are even and the positions on a line."""
    n = len(along)
    gaps = np.diff(along)
    median = float(np.median(gaps))
    duplicates = int(np.count_nonzero(gaps <= max(1e-3, 0.01 * median)))
    if duplicates:
        raise BadInput(Reason.DUPLICATE_SLICES, f"{duplicates} of {n} slices repeat a position along the normal")
    off = int(np.count_nonzero(np.abs(gaps - median) > max(SPACING_TOLERANCE * median, 1e-3)))
    if off:
        raise BadInput(
            Reason.INCONSISTENT_SPACING,
            f"{off} of {n - 1} slice gaps differ from the median by more than {SPACING_TOLERANCE:.0%}",
        )
    dz = float((along[-1] - along[0]) / (n - 1))
    step = (positions[-1] - positions[0]) / (n - 1)
    # Positions must lie on one line (constant in-plane offset, or a constant
    # gantry-tilt shear); half a voxel of drift is harmless, more is not.
    predicted = positions[0] + np.arange(n)[:, None] * step
    drift = float(np.max(np.linalg.norm(positions - predicted, axis=1)))
    if drift > 0.5 * min(dx, dy, dz):
        raise BadInput(Reason.INCONSISTENT_GEOMETRY, f"slice positions of {n} slices do not lie on a line")
    return dz, step
