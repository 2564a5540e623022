"""Synthetic DICOM: a HU volume written as a standard single-frame CT Image Storage series.

For the demo, ``make bench`` and the tests (STYLE.md: test DICOM is generated,
never patient data). The kernel never imports this module; it writes with
:mod:`ctfleet.intake`'s own helpers so what it makes is what intake reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from ctfleet.intake.geometry import plane_name
from ctfleet.intake.syntaxes import NATIVE_PIXEL_SYNTAXES

_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
_SOP_CLASS_FOR_MODALITY = {
    "CT": _CT_IMAGE_STORAGE,
    "MR": UID("1.2.840.10008.5.1.4.1.1.4"),
    "PT": UID("1.2.840.10008.5.1.4.1.1.128"),
}
_SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
_INTERCEPT = -1024  # RescaleIntercept of every slice: stored 0 is the lowest value a CT reconstructs


def series_to_datasets(
    hu: np.ndarray, spacing_mm: Sequence[float], *, study_instance_uid: str | None = None,
    series_instance_uid: str | None = None, patient_name: str = "", patient_id: str = "", study_date: str = "",
    modality: str = "CT", origin_mm: Sequence[float] | None = None,
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), extra: Mapping[str, Any] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian, compress_kwargs: Mapping[str, Any] | None = None,
) -> list[Dataset]:
    """Write a HU volume as a standard single-frame CT Image Storage series.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(Z, Y, X)`` Hounsfield units; rounded to integers and stored as int16
        with RescaleIntercept -1024, RescaleSlope 1.
    spacing_mm : sequence of float
        ``(dz, dy, dx)`` in mm: slice gap, row spacing (PixelSpacing[0]),
        column spacing (PixelSpacing[1]).
    study_instance_uid, series_instance_uid : str, optional
        New UIDs (pydicom's root) when not given.
    patient_name, patient_id, study_date : str
        Type-2 attributes; empty by default.
    modality : str
        ``"CT"`` (CT Image Storage); ``"MR"``/``"PT"`` give the matching SOP
        class, anything else Secondary Capture -- for tests of rejection.
    origin_mm : sequence of float, optional
        LPS position of voxel ``(0, 0, 0)``; default centres the first slice's
        in-plane extent on the z axis at z = 0.
    orientation : sequence of float
        ImageOrientationPatient (row cosine, column cosine); slice ``k`` lies
        at ``origin + k * dz * (row x col)``. Default: axial, head first supine.
    extra : mapping of str to object, optional
        Keyword -> value set on every slice last (e.g. ``ImageType``,
        ``ConvolutionKernel``), overriding the defaults.
    transfer_syntax : str
        Implicit VR LE, explicit VR LE or BE, deflated, or a compressed syntax pydicom encodes here
        (RLE; JPEG-LS, JPEG 2000 with pyjpegls / pylibjpeg-openjpeg): each slice is ``ds.compress``-ed.
    compress_kwargs : mapping, optional
        Passed to ``ds.compress`` (``{"jls_error": 2}``: JPEG-LS near-lossless; ``{"j2k_cr": [20]}``: lossy J2K).

    Returns
    -------
    list of pydicom.Dataset
        One data set per slice, ``k = 0 .. Z-1``, with file meta; ready for
        :func:`ctfleet.intake.dataset_to_bytes`.

    Raises
    ------
    ValueError
        Bad shape or spacing, HU not finite or beyond int16, a transfer syntax with no encoder here.
    """
    hu = np.asarray(hu)
    spacing = _checked_spacing(hu, spacing_mm)
    syntax = UID(str(transfer_syntax))
    stored = _stored_int16(hu, syntax)
    layout = _Layout.of(hu.shape, spacing, orientation, origin_mm, modality, syntax)
    study = {"PatientName": patient_name, "PatientID": patient_id, "StudyDate": study_date, "Modality": modality,
             "StudyInstanceUID": study_instance_uid or generate_uid(),
             "SeriesInstanceUID": series_instance_uid or generate_uid()}
    return [_finish(_slice(layout, k, stored[k], study), syntax, extra, compress_kwargs) for k in range(hu.shape[0])]


def decimal_string(value: float) -> str:
    """A DS string of at most 16 characters that round-trips to ~1e-6 mm.

    Parameters
    ----------
    value : float

    Returns
    -------
    str
    """
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if len(text) > 16:
        text = f"{value:.10g}"[:16]
    return text


def _checked_spacing(hu: np.ndarray, spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise ValueError(f"hu must be a non-empty (Z, Y, X) array, got shape {hu.shape}")
    dz, dy, dx = (float(s) for s in spacing_mm)
    if min(dz, dy, dx) <= 0:
        raise ValueError("spacing must be positive")
    return dz, dy, dx


def _stored_int16(hu: np.ndarray, syntax: UID) -> np.ndarray:
    """Stored values for RescaleIntercept -1024, int16 in the byte order of ``syntax``."""
    if syntax not in NATIVE_PIXEL_SYNTAXES:
        from pydicom.pixels import get_encoder

        try:
            encodable = get_encoder(syntax).is_available
        except Exception:
            encodable = False
        if not encodable:
            raise ValueError("transfer_syntax must be uncompressed, deflated, or have a pydicom encoder installed")
    if not np.all(np.isfinite(hu)):
        raise ValueError("hu must be finite")
    stored = np.rint(hu).astype(np.int64) - _INTERCEPT
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("hu outside the range int16 with intercept -1024 can store")
    return stored.astype("<i2" if syntax != ExplicitVRBigEndian else ">i2")


@dataclass(frozen=True)
class _Layout:
    """What every slice of the series shares: grid, orientation, frame of reference, SOP class."""

    rows: int
    cols: int
    spacing: tuple[float, float, float]  # dz, dy, dx
    row: np.ndarray
    col: np.ndarray
    normal: np.ndarray
    origin: np.ndarray
    frame_uid: str
    sop_class: UID
    image_plane: str
    meta_syntax: UID  # a compressed series is built uncompressed, then compressed in place

    @classmethod
    def of(cls, shape: tuple[int, ...], spacing: tuple[float, float, float], orientation: Sequence[float],
           origin_mm: Sequence[float] | None, modality: str, syntax: UID) -> _Layout:
        _, y, x = shape
        _, dy, dx = spacing
        row = np.asarray(orientation[:3], dtype=np.float64)
        col = np.asarray(orientation[3:6], dtype=np.float64)
        normal = np.cross(row, col)
        if origin_mm is None:
            origin = -(row * dx * (x - 1) + col * dy * (y - 1)) / 2.0
        else:
            origin = np.asarray(origin_mm, dtype=np.float64)
        return cls(rows=y, cols=x, spacing=spacing, row=row, col=col, normal=normal, origin=origin,
                   frame_uid=generate_uid(),
                   sop_class=_SOP_CLASS_FOR_MODALITY.get(modality.upper(), _SECONDARY_CAPTURE),
                   image_plane="AXIAL" if plane_name(normal) == "axial" else "OTHER",
                   meta_syntax=syntax if syntax in NATIVE_PIXEL_SYNTAXES else ExplicitVRLittleEndian)


def _slice(layout: _Layout, k: int, stored: np.ndarray, study: Mapping[str, str]) -> Dataset:
    """Slice ``k``: file meta, the attributes of CT Image Storage, the pixels.

    ``study`` holds the values every slice shares: patient, study date, modality, study and series UIDs.
    """
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = layout.sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = layout.meta_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    dz, dy, dx = layout.spacing
    position = layout.origin + k * dz * layout.normal
    header: dict[str, Any] = {
        "SpecificCharacterSet": "ISO_IR 192",  # UTF-8: any patient name a test plants
        "ImageType": ["ORIGINAL", "PRIMARY", layout.image_plane],
        "SOPClassUID": layout.sop_class, "SOPInstanceUID": sop_uid,
        "StudyDate": study["StudyDate"], "StudyTime": "", "ContentDate": study["StudyDate"], "ContentTime": "",
        "AccessionNumber": "", "Modality": study["Modality"], "Manufacturer": "ctfleet", "ReferringPhysicianName": "",
        "PatientName": study["PatientName"], "PatientID": study["PatientID"], "PatientBirthDate": "",
        "PatientSex": "", "SliceThickness": decimal_string(dz), "KVP": "120", "ConvolutionKernel": "STANDARD",
        "PatientPosition": "HFS", "StudyInstanceUID": study["StudyInstanceUID"],
        "SeriesInstanceUID": study["SeriesInstanceUID"], "StudyID": "", "SeriesNumber": 1,
        "AcquisitionNumber": 1, "InstanceNumber": k + 1,
        "ImagePositionPatient": [decimal_string(v) for v in position],
        "ImageOrientationPatient": [decimal_string(v) for v in (*layout.row, *layout.col)],
        "FrameOfReferenceUID": layout.frame_uid, "PositionReferenceIndicator": "",
        "SliceLocation": decimal_string(float(position @ layout.normal)),
        "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2", "Rows": layout.rows,
        "Columns": layout.cols, "PixelSpacing": [decimal_string(dy), decimal_string(dx)],
        "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15, "PixelRepresentation": 1,
        "BurnedInAnnotation": "NO", "WindowCenter": "-600", "WindowWidth": "1500",
        "RescaleIntercept": str(_INTERCEPT), "RescaleSlope": "1", "RescaleType": "HU",
    }
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _finish(ds: Dataset, syntax: UID, extra: Mapping[str, Any] | None,
            compress_kwargs: Mapping[str, Any] | None) -> Dataset:
    """``ds`` with ``extra`` applied, set to the encoding of ``syntax``, compressed when ``syntax`` is."""
    for keyword, value in (extra or {}).items():
        if tag_for_keyword(keyword) is None:  # setattr would silently make a Python attribute
            raise ValueError(f"extra: {keyword!r} is not a DICOM keyword")
        setattr(ds, keyword, value)
    implicit = syntax == ImplicitVRLittleEndian
    little = syntax != ExplicitVRBigEndian
    ds.set_original_encoding(implicit, little, ds.get("SpecificCharacterSet"))
    if syntax not in NATIVE_PIXEL_SYNTAXES:
        ds.compress(syntax, **dict(compress_kwargs or {}))
    return ds
