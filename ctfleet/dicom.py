"""DICOM in memory: read, group into series, choose one, build a :class:`~model.volume.Volume`.

Everything here is pure: bytes or :class:`pydicom.Dataset` objects in, objects
out. Only handlers and the worker touch S3 or the file system.

Errors are :class:`~ctfleet.errors.BadInput` with a reason code. Their messages
never carry header values (they are PHI or may be): only reason codes, counts,
tolerances and the file name the caller passed in.

Every reason code raised here is one of :class:`ctfleet.contracts.Reason`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragments
from pydicom.multival import MultiValue
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from model.volume import Volume

from .contracts import Reason
from .errors import BadInput

# Reason codes of geometry and pixel checks (defined with the others in contracts.Reason).
INCONSISTENT_SPACING = Reason.INCONSISTENT_SPACING
DUPLICATE_SLICES = Reason.DUPLICATE_SLICES
INCONSISTENT_GEOMETRY = Reason.INCONSISTENT_GEOMETRY
MISSING_GEOMETRY = Reason.MISSING_GEOMETRY
UNSUPPORTED_PIXEL_DATA = Reason.UNSUPPORTED_PIXEL_DATA

# -- tolerances ------------------------------------------------------------------------

SPACING_TOLERANCE = 0.03
"""Largest relative deviation of one slice gap from the median gap (3 %).

DS values are decimal strings rounded by the scanner; 3 % absorbs that rounding
for slices down to ~0.5 mm while still catching a single missing slice (100 %).
"""
ORIENTATION_TOLERANCE = 2e-3
"""Largest per-component difference of direction cosines within one stack (~0.1 degree)."""
MIN_SLICES = 3
"""A stack with fewer slices is treated as a localizer / scout, never analysed."""

_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
_SOP_CLASS_FOR_MODALITY = {
    "CT": _CT_IMAGE_STORAGE,
    "MR": UID("1.2.840.10008.5.1.4.1.1.4"),
    "PT": UID("1.2.840.10008.5.1.4.1.1.128"),
}
_FIXED_WIDTH_VRS = frozenset({"AT", "FD", "FL", "SL", "SS", "SV", "UL", "US", "UV", "SQ"})
_SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
_NATIVE_SYNTAXES = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian})


# -- reading ---------------------------------------------------------------------------


def read_dataset(data: bytes, name: str = "") -> Dataset:
    """Parse one DICOM Part 10 file held in memory.

    Parameters
    ----------
    data : bytes
        The whole file (128-byte preamble, ``DICM``, file meta, data set).
    name : str, optional
        A name the caller knows the file by (object key, path). Only used in
        error messages; never read from the file.

    Returns
    -------
    pydicom.Dataset
        Every element already converted; elements whose value does not fit
        their VR (a real-world quirk of some private tags) are kept as ``UN``
        with their raw bytes instead of failing later on first access.

    Raises
    ------
    BadInput
        ``not_dicom`` for anything that is not a complete DICOM file (no
        ``DICM`` prefix, unparsable header, pixel data shorter than the header
        promises); ``no_pixel_data`` when there is no (7FE0,0010) Pixel Data.
    """
    where = f" ({name})" if name else ""
    if not data:
        raise BadInput(Reason.NOT_DICOM, f"empty file{where}")
    try:
        # force=False: a file without the DICM prefix is rejected rather than
        # guessed at; uploads are Part 10 files by contract.
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
        _convert_all(ds)
    except MemoryError:
        raise
    except Exception as exc:  # a parser on untrusted bytes fails in many ways; all are permanent
        # `from None`: pydicom's own messages may quote header bytes (PHI).
        raise BadInput(Reason.NOT_DICOM, f"unreadable DICOM ({type(exc).__name__}){where}") from None
    if len(ds) == 0:
        # A file cut inside or right after its file meta parses to an empty data set.
        raise BadInput(Reason.NOT_DICOM, f"no data set after the file meta{where}")
    if "PixelData" not in ds:
        raise BadInput(Reason.NO_PIXEL_DATA, f"no pixel data{where}")
    _check_pixel_data_complete(ds, where)
    return ds


def _convert_all(ds: Dataset) -> None:
    """Convert private elements now, keeping the ones that do not convert as ``UN``.

    pydicom converts lazily, so a bad value (e.g. the ELSCINT1 private tag
    (01F1,1026), whose dictionary VR is FD but which holds the 4-byte string
    ``0.15``) would raise at some later, unrelated access -- in a walk, in
    de-identification, in ``dcmwrite``. Doing it here, per data set, keeps the
    failure local and avoids flipping the process-wide
    ``pydicom.config.convert_wrong_length_to_UN``.

    Public elements stay lazy (converting all ~150 of them costs ~4x the parse
    itself); only sequences are opened, to reach private elements nested in
    items. Getters in this module tolerate a public element that fails to
    convert. De-identified files carry no private elements, so on the worker's
    hot path this costs next to nothing.
    """
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement) and tag.is_private and raw.VR is not None and raw.VR not in _FIXED_WIDTH_VRS:
            continue  # explicit VR and not binary: its length cannot be wrong, leave it lazy
        if isinstance(raw, RawDataElement) and not tag.is_private:
            vr = raw.VR
            if vr is None:  # implicit VR: ask the dictionary, without converting
                try:
                    vr = dictionary_VR(tag)
                except KeyError:
                    continue
            if vr != "SQ":
                continue
        try:
            elem = ds[tag]
        except Exception:
            value = raw.value if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes) else b""
            ds[tag] = DataElement(tag, "UN", value)
            continue
        if elem.VR == "SQ" and elem.value is not None:
            for item in elem.value:
                _convert_all(item)


def _check_pixel_data_complete(ds: Dataset, where: str) -> None:
    """Raise ``not_dicom`` when the pixel data is shorter than the header promises.

    pydicom reads a file cut inside its (defined-length) pixel data without
    complaint and returns the short value; the missing bytes would otherwise
    surface as a reshape error deep in the pipeline.
    """
    value = ds.PixelData
    if not isinstance(value, (bytes, bytearray)):
        raise BadInput(Reason.NOT_DICOM, f"pixel data unreadable{where}")
    syntax = _transfer_syntax(ds)
    if syntax.is_encapsulated:
        try:
            fragments = sum(1 for _ in generate_fragments(value))
        except Exception:
            raise BadInput(Reason.NOT_DICOM, f"encapsulated pixel data is malformed{where}") from None
        if fragments == 0:
            raise BadInput(Reason.NOT_DICOM, f"encapsulated pixel data has no fragments{where}")
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(_get(ds, "SamplesPerPixel", 1) or 1)
        frames = int(_get(ds, "NumberOfFrames", 1) or 1)
    except Exception:
        raise BadInput(Reason.NOT_DICOM, f"image pixel module incomplete{where}") from None
    pixels = rows * cols * samples * frames
    expected = (pixels + 7) // 8 if bits == 1 else pixels * (bits // 8)
    if len(value) < expected:
        raise BadInput(Reason.NOT_DICOM, f"truncated: pixel data has {len(value)} of {expected} bytes{where}")


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax:
        return UID(str(syntax))
    # A data set built in memory: say what the writer would use.
    implicit, little = ds.original_encoding
    if little is False:
        return ExplicitVRBigEndian
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


# -- geometry helpers ------------------------------------------------------------------


def _get(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """``ds.get`` that treats a value which does not convert (wrong length, bad bytes) as absent."""
    try:
        return ds.get(keyword, default)
    except Exception:
        return default


def _floats(ds: Dataset, keyword: str, n: int) -> np.ndarray | None:
    """``n`` finite floats from a multi-valued DS/FD attribute, or None."""
    value = _get(ds, keyword)
    if value is None:
        return None
    try:
        values = [float(v) for v in (value if isinstance(value, (list, tuple, MultiValue)) else [value])]
    except (TypeError, ValueError):
        return None
    if len(values) != n or not all(np.isfinite(values)):
        return None
    return np.asarray(values, dtype=np.float64)


def _orientation(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Unit row cosine, column cosine and slice normal (LPS), or None if absent/degenerate."""
    iop = _floats(ds, "ImageOrientationPatient", 6)
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


def _plane_name(normal: np.ndarray) -> str:
    """'axial', 'coronal', 'sagittal' if the normal is within ~37 degrees of an axis, else 'oblique'."""
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _image_type(ds: Dataset) -> tuple[str, ...]:
    value = _get(ds, "ImageType")
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split("\\")
    return tuple(str(v).strip().upper() for v in value)


def _text(ds: Dataset, keyword: str) -> str:
    value = _get(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _float_or_none(ds: Dataset, keyword: str) -> float | None:
    try:
        value = _get(ds, keyword)
        result = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return result if result is not None and np.isfinite(result) else None


# -- series ----------------------------------------------------------------------------


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

    @property
    def has_geometry(self) -> bool:
        """Every slice has orientation, position and pixel spacing."""
        return all(
            _orientation(ds) is not None
            and _floats(ds, "ImagePositionPatient", 3) is not None
            and _floats(ds, "PixelSpacing", 2) is not None
            for ds in self.datasets
        )


def _stack_signature(ds: Dataset) -> tuple[np.ndarray | None, Any, Any]:
    iop = _floats(ds, "ImageOrientationPatient", 6)
    return iop, _get(ds, "Rows"), _get(ds, "Columns")


def _same_stack(a: tuple[np.ndarray | None, Any, Any], b: tuple[np.ndarray | None, Any, Any]) -> bool:
    if a[1:] != b[1:]:
        return False
    if a[0] is None or b[0] is None:
        return a[0] is None and b[0] is None
    return bool(np.max(np.abs(a[0] - b[0])) <= ORIENTATION_TOLERANCE)


def _sorted_by_position(datasets: Sequence[Dataset]) -> tuple[Dataset, ...]:
    """Ascending along the first slice's normal; slices without geometry last, in input order."""
    reference = next((o for o in (_orientation(ds) for ds in datasets) if o is not None), None)
    if reference is None:
        return tuple(datasets)
    normal = reference[2]
    keyed: list[tuple[int, float, int, Dataset]] = []
    for index, ds in enumerate(datasets):
        ipp = _floats(ds, "ImagePositionPatient", 3)
        if ipp is None:
            keyed.append((1, 0.0, index, ds))
        else:
            keyed.append((0, float(ipp @ normal), index, ds))
    keyed.sort(key=lambda t: t[:3])
    return tuple(t[3] for t in keyed)


def _make_series(datasets: list[Dataset]) -> Series:
    first = datasets[0]
    image_type = _image_type(first)
    orientation = _orientation(first)
    number = _get(first, "SeriesNumber")
    try:
        series_number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        series_number = None
    frames = _get(first, "NumberOfFrames")
    try:
        multiframe = frames not in (None, "") and int(frames) > 1
    except (TypeError, ValueError):
        multiframe = True
    return Series(
        study_instance_uid=_text(first, "StudyInstanceUID"),
        series_instance_uid=_text(first, "SeriesInstanceUID"),
        modality=_text(first, "Modality").upper(),
        datasets=_sorted_by_position(datasets),
        orientation="unknown" if orientation is None else _plane_name(orientation[2]),
        slice_thickness_mm=_float_or_none(first, "SliceThickness"),
        kernel=_text(first, "ConvolutionKernel"),
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
        Data sets as returned by :func:`read_dataset`, in any order.

    Returns
    -------
    list of Series
        Ordered by study UID, series number, series UID (deterministic for a
        given upload, whatever the file order).
    """
    groups: dict[tuple[str, str], list[tuple[tuple[np.ndarray | None, Any, Any], list[Dataset]]]] = {}
    seen: set[str] = set()
    for ds in datasets:
        sop = _text(ds, "SOPInstanceUID")
        if sop:
            if sop in seen:
                continue  # the same instance uploaded twice is not a duplicate slice
            seen.add(sop)
        stacks = groups.setdefault((_text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID")), [])
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


def choose_series(series: Sequence[Series]) -> Series:
    """Pick the one stack to analyse.

    Rules, in order: one study only; CT only; no localizers/scouts (ImageType
    LOCALIZER, or fewer than :data:`MIN_SLICES` slices), no multi-frame (not
    supported yet), no stack without geometry. Among the rest: axial first,
    then most slices, then thinnest, then lowest series number (for a
    deterministic choice between, e.g., a lung and a soft-tissue kernel of the
    same acquisition).

    Parameters
    ----------
    series : sequence of Series
        Usually the output of :func:`group_series` for one upload.

    Returns
    -------
    Series

    Raises
    ------
    BadInput
        ``empty_upload`` when ``series`` is empty; ``multiple_studies`` when
        they span more than one StudyInstanceUID; ``not_ct`` when none is CT;
        ``no_usable_series`` when every CT stack was excluded.
    """
    if not series:
        raise BadInput(Reason.EMPTY_UPLOAD, "no DICOM instances")
    studies = {s.study_instance_uid for s in series}
    if len(studies) > 1:
        raise BadInput(Reason.MULTIPLE_STUDIES, f"{len(studies)} studies in one upload; send one study at a time")
    ct = [s for s in series if s.modality == "CT"]
    if not ct:
        raise BadInput(Reason.NOT_CT, f"none of {len(series)} series is CT")
    usable = [s for s in ct if not s.is_localizer and not s.is_multiframe and s.has_geometry]
    if not usable:
        raise BadInput(
            Reason.NO_USABLE_SERIES,
            f"{len(ct)} CT series, none usable (localizer, fewer than {MIN_SLICES} slices, multi-frame or no geometry)",
        )

    def rank(s: Series) -> tuple[int, int, float, int]:
        thickness = s.slice_thickness_mm if s.slice_thickness_mm and s.slice_thickness_mm > 0 else float("inf")
        number = s.series_number if s.series_number is not None else 1 << 31
        return (0 if s.orientation == "axial" else 1, -s.n_slices, thickness, number)

    return min(usable, key=rank)


# -- the volume ------------------------------------------------------------------------


def volume_from_series(datasets: Series | Iterable[Dataset]) -> Volume:
    """Build a HU volume from the slices of one stack, ordered by geometry.

    Slices are ordered by ImagePositionPatient projected on the slice normal
    (cross product of the row and column cosines), never by InstanceNumber.

    Parameters
    ----------
    datasets : Series or iterable of pydicom.Dataset
        Single-frame slices of one stack, in any order.

    Returns
    -------
    Volume
        ``hu`` float32 ``(Z, Y, X)`` = stored value * RescaleSlope +
        RescaleIntercept, ``Z`` ascending along the normal; ``spacing_mm``
        ``(dz, dy, dx)`` with ``dz`` the mean gap along the normal, ``dy`` =
        PixelSpacing[0] (between rows), ``dx`` = PixelSpacing[1] (between
        columns); ``affine`` in RAS+ mm. Its third column is the mean step
        between slice positions, so a gantry-tilted stack gets a sheared
        affine whose column norm exceeds ``dz``.

    Raises
    ------
    BadInput
        ``no_usable_series`` (no slices), ``missing_geometry``,
        ``inconsistent_geometry`` (orientation, size or pixel spacing differ,
        or positions not on a line), ``duplicate_slices``,
        ``inconsistent_spacing``, ``unsupported_pixel_data``, ``not_dicom``
        (pixel data shorter than promised).
    """
    slices = list(datasets.datasets if isinstance(datasets, Series) else datasets)
    n = len(slices)
    if n == 0:
        raise BadInput(Reason.NO_USABLE_SERIES, "no slices")

    first = slices[0]
    reference = _orientation(first)
    spacing = _floats(first, "PixelSpacing", 2)
    rows, cols = _get(first, "Rows"), _get(first, "Columns")
    if reference is None or spacing is None or not rows or not cols or min(spacing) <= 0:
        raise BadInput(MISSING_GEOMETRY, "orientation, pixel spacing or image size missing or invalid")
    row_cos, col_cos, normal = reference
    iop0 = _floats(first, "ImageOrientationPatient", 6)
    assert iop0 is not None
    positions = np.empty((n, 3), dtype=np.float64)
    for k, ds in enumerate(slices):
        ipp = _floats(ds, "ImagePositionPatient", 3)
        if ipp is None:
            raise BadInput(MISSING_GEOMETRY, f"{sum(_floats(d, 'ImagePositionPatient', 3) is None for d in slices)} of {n} slices have no valid position")
        positions[k] = ipp
        if k == 0:
            continue
        iop = _floats(ds, "ImageOrientationPatient", 6)
        if iop is None or np.max(np.abs(iop - iop0)) > ORIENTATION_TOLERANCE:
            raise BadInput(INCONSISTENT_GEOMETRY, f"slice orientation differs within the stack ({n} slices)")
        if _get(ds, "Rows") != rows or _get(ds, "Columns") != cols:
            raise BadInput(INCONSISTENT_GEOMETRY, f"image size differs within the stack ({n} slices)")
        ps = _floats(ds, "PixelSpacing", 2)
        if ps is None or np.max(np.abs(ps - spacing)) > 1e-3 * float(np.max(spacing)):
            raise BadInput(INCONSISTENT_GEOMETRY, f"pixel spacing differs within the stack ({n} slices)")

    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    positions = positions[order]
    slices = [slices[i] for i in order]
    dy, dx = float(spacing[0]), float(spacing[1])

    if n == 1:
        # One slice has no gap to measure; fall back to what the header states.
        dz = abs(_float_or_none(first, "SpacingBetweenSlices") or 0.0) or (_float_or_none(first, "SliceThickness") or 0.0)
        if dz <= 0:
            raise BadInput(MISSING_GEOMETRY, "single slice without SliceThickness")
        step = normal * dz
    else:
        gaps = np.diff(along)
        median = float(np.median(gaps))
        duplicates = int(np.count_nonzero(gaps <= max(1e-3, 0.01 * median)))
        if duplicates:
            raise BadInput(DUPLICATE_SLICES, f"{duplicates} of {n} slices repeat a position along the normal")
        off = int(np.count_nonzero(np.abs(gaps - median) > max(SPACING_TOLERANCE * median, 1e-3)))
        if off:
            raise BadInput(
                INCONSISTENT_SPACING,
                f"{off} of {n - 1} slice gaps differ from the median by more than {SPACING_TOLERANCE:.0%}",
            )
        dz = float((along[-1] - along[0]) / (n - 1))
        step = (positions[-1] - positions[0]) / (n - 1)
        # Positions must lie on one line (constant in-plane offset, or a constant
        # gantry-tilt shear); half a voxel of drift is harmless, more is not.
        predicted = positions[0] + np.arange(n)[:, None] * step
        drift = float(np.max(np.linalg.norm(positions - predicted, axis=1)))
        if drift > 0.5 * min(dx, dy, dz):
            raise BadInput(INCONSISTENT_GEOMETRY, f"slice positions of {n} slices do not lie on a line")

    hu = _hounsfield(slices, int(rows), int(cols))

    lps = np.eye(4)
    lps[:3, 0] = row_cos * dx  # i runs along a row: next column
    lps[:3, 1] = col_cos * dy  # j runs down a column: next row
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    # DICOM patient coordinates are LPS; nibabel/RAS+ wants x and y negated.
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return Volume(hu=hu, spacing_mm=(dz, dy, dx), affine=affine)


def _hounsfield(slices: Sequence[Dataset], rows: int, cols: int) -> np.ndarray:
    """Stack stored values into float32 HU, one vectorised multiply-add per slice.

    Native (uncompressed) pixel data is viewed with ``np.frombuffer`` -- no
    copy, no pydicom pixel handler -- which is what makes this faster than
    ``ds.pixel_array``; compressed syntaxes go through pydicom's decoders.
    """
    out = np.empty((len(slices), rows, cols), dtype=np.float32)
    for k, ds in enumerate(slices):
        stored = _stored_values(ds, rows, cols)
        slope = _float_or_none(ds, "RescaleSlope")
        intercept = _float_or_none(ds, "RescaleIntercept")
        slope = 1.0 if slope is None or slope == 0 else slope  # 0 is a known encoder bug, never meant
        intercept = 0.0 if intercept is None else intercept
        plane = out[k]
        if slope == 1.0:
            np.copyto(plane, stored, casting="unsafe")
        else:
            np.multiply(stored, np.float32(slope), out=plane, casting="unsafe")
        if intercept != 0.0:
            plane += np.float32(intercept)
    return out


def _stored_values(ds: Dataset, rows: int, cols: int) -> np.ndarray:
    """The stored integer values of one single-frame greyscale slice, shape ``(rows, cols)``."""
    try:
        frames = int(_get(ds, "NumberOfFrames", 1) or 1)
        samples = int(_get(ds, "SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        stored_bits = int(_get(ds, "BitsStored", bits) or bits)
        signed = int(_get(ds, "PixelRepresentation", 0) or 0) == 1
    except Exception:
        raise BadInput(UNSUPPORTED_PIXEL_DATA, "image pixel module incomplete") from None
    if frames != 1 or samples != 1 or bits not in (8, 16, 32) or not 1 <= stored_bits <= bits:
        raise BadInput(UNSUPPORTED_PIXEL_DATA, "only single-frame greyscale 8/16/32-bit slices are supported")
    syntax = _transfer_syntax(ds)
    if syntax in _NATIVE_SYNTAXES or not syntax.is_encapsulated:
        little = syntax != ExplicitVRBigEndian
        dtype = np.dtype(f"{'<' if little else '>'}{'i' if signed else 'u'}{bits // 8}")
        count = rows * cols
        buffer = ds.PixelData
        if len(buffer) < count * dtype.itemsize:
            raise BadInput(Reason.NOT_DICOM, "truncated: pixel data shorter than rows x columns")
        values = np.frombuffer(buffer, dtype=dtype, count=count).reshape(rows, cols)
    else:
        try:
            values = ds.pixel_array
        except Exception:
            raise BadInput(UNSUPPORTED_PIXEL_DATA, "cannot decode the compressed pixel data") from None
        if values.shape != (rows, cols):
            raise BadInput(UNSUPPORTED_PIXEL_DATA, "decoded pixel data has an unexpected shape")
        return values
    if stored_bits < bits:
        # Bits above BitsStored are not pixel data (old scanners put overlays there).
        if signed:
            shift = bits - stored_bits
            values = (values << shift) >> shift  # sign-extend from BitsStored
        else:
            values = values & np.asarray((1 << stored_bits) - 1, dtype=values.dtype)
    return values


# -- writing (synthetic studies for the demo and tests) --------------------------------


def series_to_datasets(
    hu: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    patient_name: str = "",
    patient_id: str = "",
    study_date: str = "",
    modality: str = "CT",
    origin_mm: Sequence[float] | None = None,
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    extra: Mapping[str, Any] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
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
        An uncompressed syntax: Implicit VR LE, Explicit VR LE or Explicit VR BE.

    Returns
    -------
    list of pydicom.Dataset
        One data set per slice, ``k = 0 .. Z-1``, with file meta; ready for
        :func:`dataset_to_bytes`.

    Raises
    ------
    ValueError
        Bad shape or spacing, non-finite HU or HU outside what int16 can hold,
        a compressed transfer syntax.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise ValueError(f"hu must be a non-empty (Z, Y, X) array, got shape {hu.shape}")
    dz, dy, dx = (float(s) for s in spacing_mm)
    if min(dz, dy, dx) <= 0:
        raise ValueError("spacing must be positive")
    syntax = UID(str(transfer_syntax))
    if syntax not in _NATIVE_SYNTAXES:
        raise ValueError("transfer_syntax must be an uncompressed syntax")
    if not np.all(np.isfinite(hu)):
        raise ValueError("hu must be finite")
    intercept = -1024
    stored = np.rint(hu).astype(np.int64) - intercept
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("hu outside the range int16 with intercept -1024 can store")
    stored16 = stored.astype("<i2" if syntax != ExplicitVRBigEndian else ">i2")

    z, y, x = hu.shape
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:6], dtype=np.float64)
    normal = np.cross(row, col)
    if origin_mm is None:
        origin = -(row * dx * (x - 1) + col * dy * (y - 1)) / 2.0
    else:
        origin = np.asarray(origin_mm, dtype=np.float64)
    study_uid = study_instance_uid or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    frame_uid = generate_uid()
    sop_class = _SOP_CLASS_FOR_MODALITY.get(modality.upper(), _SECONDARY_CAPTURE)
    image_plane = "AXIAL" if _plane_name(normal) == "axial" else "OTHER"

    out: list[Dataset] = []
    for k in range(z):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = syntax
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: any patient name a test plants
        ds.ImageType = ["ORIGINAL", "PRIMARY", image_plane]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = study_date
        ds.StudyTime = ""
        ds.ContentDate = study_date
        ds.ContentTime = ""
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.Manufacturer = "ctfleet"
        ds.ReferringPhysicianName = ""
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.SliceThickness = _ds(dz)
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = ""
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        position = origin + k * dz * normal
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(float(position @ normal))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = y
        ds.Columns = x
        ds.PixelSpacing = [_ds(dy), _ds(dx)]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.BurnedInAnnotation = "NO"
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        ds.RescaleIntercept = str(intercept)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = stored16[k].tobytes()
        ds["PixelData"].VR = "OW"
        for keyword, value in (extra or {}).items():
            if tag_for_keyword(keyword) is None:  # setattr would silently make a Python attribute
                raise ValueError(f"extra: {keyword!r} is not a DICOM keyword")
            setattr(ds, keyword, value)
        implicit = syntax == ImplicitVRLittleEndian
        little = syntax != ExplicitVRBigEndian
        ds.set_original_encoding(implicit, little, ds.get("SpecificCharacterSet"))
        out.append(ds)
    return out


def _ds(value: float) -> str:
    """A DS string of at most 16 characters that round-trips to ~1e-6 mm."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if len(text) > 16:
        text = f"{value:.10g}"[:16]
    return text


def dataset_to_bytes(ds: Dataset) -> bytes:
    """Encode a data set as a DICOM Part 10 file in memory.

    Parameters
    ----------
    ds : pydicom.Dataset
        Must carry ``file_meta`` with a TransferSyntaxUID (as data sets from
        :func:`read_dataset` and :func:`series_to_datasets` do).

    Returns
    -------
    bytes
        Preamble, ``DICM``, file meta and data set, encoded in the file meta's
        transfer syntax (``enforce_file_format=True``).
    """
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
