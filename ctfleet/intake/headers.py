"""Header values read tolerantly: a value that does not convert counts as absent.

Real files carry elements whose value does not fit their VR (a wrong length,
bad bytes); pydicom raises on first access. Every getter here returns the
default instead, so one odd element never fails a whole study.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue


def get_value(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """``ds.get`` that treats a value which does not convert (wrong length, bad bytes) as absent.

    Parameters
    ----------
    ds : pydicom.Dataset
    keyword : str
        A DICOM keyword, e.g. ``"Rows"``.
    default : object, optional
        Returned when the element is absent or does not convert.

    Returns
    -------
    object
    """
    try:
        return ds.get(keyword, default)
    except Exception:
        return default


def float_values(ds: Dataset, keyword: str, n: int) -> np.ndarray | None:
    """``n`` finite floats from a multi-valued DS/FD attribute, or None.

    Parameters
    ----------
    ds : pydicom.Dataset
    keyword : str
    n : int
        How many values the attribute must hold.

    Returns
    -------
    numpy.ndarray or None
        float64 ``(n,)``; None when absent, unparsable, not finite or of another length.
    """
    value = get_value(ds, keyword)
    if value is None:
        return None
    try:
        values = [float(v) for v in (value if isinstance(value, (list, tuple, MultiValue)) else [value])]
    except (TypeError, ValueError):
        return None
    if len(values) != n or not all(np.isfinite(values)):
        return None
    return np.asarray(values, dtype=np.float64)


def image_type_values(ds: Dataset) -> tuple[str, ...]:
    """ImageType as upper-case, stripped values (empty when absent).

    Parameters
    ----------
    ds : pydicom.Dataset

    Returns
    -------
    tuple of str
    """
    value = get_value(ds, "ImageType")
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split("\\")
    return tuple(str(v).strip().upper() for v in value)


def text_value(ds: Dataset, keyword: str) -> str:
    """An attribute as stripped text.

    Parameters
    ----------
    ds : pydicom.Dataset
    keyword : str
        Any attribute; the values of a multi-valued one are joined by ``\\``.

    Returns
    -------
    str
        "" when the attribute is absent or does not convert.
    """
    value = get_value(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def float_or_none(ds: Dataset, keyword: str) -> float | None:
    """A single-valued numeric attribute as a finite float, or None.

    Parameters
    ----------
    ds : pydicom.Dataset
    keyword : str
        A single-valued DS, IS, FL or FD attribute, e.g. ``"SliceThickness"``.

    Returns
    -------
    float or None
        None when absent, empty, unparsable or not finite.
    """
    try:
        value = get_value(ds, keyword)
        result = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return result if result is not None and np.isfinite(result) else None
