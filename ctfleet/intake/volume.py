"""The volume: the slices of one stack as a HU :class:`~model.volume.Volume`.

Stored values become float32 HU (RescaleSlope, RescaleIntercept) one slice at
a time; native pixel data is viewed in place, compressed frames decoded by
:func:`~ctfleet.intake.syntaxes.decode_frame`; padding becomes air. The grid
and its affine come from :func:`~ctfleet.intake.geometry.stack_geometry`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRBigEndian

from model.volume import Volume, VolumeError

from ctfleet.contracts import Reason
from ctfleet.errors import BadInput
from ctfleet.intake.geometry import stack_geometry
from ctfleet.intake.headers import float_or_none, get_value
from ctfleet.intake.series import Series
from ctfleet.intake.syntaxes import NATIVE_PIXEL_SYNTAXES, decode_frame, transfer_syntax_of

PADDING_HU = -1000.0
"""HU written where PixelPaddingValue (and PixelPaddingRangeLimit) mark padding: air."""
_AIR_FLOOR_HU = -1024.0  # the lowest value a CT reconstructs (12-bit stored 0, intercept -1024)


def volume_from_series(datasets: Series | Iterable[Dataset]) -> Volume:
    """Build a HU volume from the slices of one stack, ordered by geometry.

    Slices are ordered by ImagePositionPatient projected on the slice normal
    (cross product of the row and column cosines), never by InstanceNumber.
    Any transfer syntax of :data:`~ctfleet.intake.syntaxes.TRANSFER_SYNTAXES`
    is read; uncompressed slices are viewed in place, compressed ones decoded
    one frame at a time.
    Pixels marked as padding by PixelPaddingValue (and PixelPaddingRangeLimit)
    become :data:`PADDING_HU` (air), so the area outside the scan circle never
    looks like bone or metal -- unless the padding range maps into the HU
    range of real tissue (-1000..3000), in which case padding is left alone
    rather than erase anatomy.

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
        ``inconsistent_spacing``, ``unsupported_pixel_data`` (multi-frame,
        colour, a frame that does not decode), ``unsupported_transfer_syntax``,
        ``not_dicom`` (pixel data shorter than promised).
    """
    slices = list(datasets.datasets if isinstance(datasets, Series) else datasets)
    geometry = stack_geometry(slices)
    hu = _hounsfield(geometry.slices, geometry.rows, geometry.cols)
    return checked_volume(hu, geometry.spacing_mm, geometry.affine)


def checked_volume(hu: np.ndarray, spacing_mm: tuple[float, float, float], affine: np.ndarray) -> Volume:
    """The model's :class:`~model.volume.Volume`, its own checks' failures as :class:`BadInput`.

    ``model`` knows nothing of ctfleet's error tree; this is where its
    ``VolumeError`` (a reason code and a message) enters it.
    """
    try:
        return Volume(hu=hu, spacing_mm=spacing_mm, affine=affine)
    except VolumeError as exc:
        raise BadInput(exc.reason, str(exc)) from exc


def _hounsfield(slices: Sequence[Dataset], rows: int, cols: int) -> np.ndarray:
    """Stack stored values into float32 HU, one vectorised multiply-add per slice.

    Native (uncompressed) pixel data is viewed with ``np.frombuffer`` -- no
    copy, no pydicom pixel handler -- which is what makes this faster than
    ``ds.pixel_array``; compressed syntaxes go through pydicom's decoders.
    """
    out = np.empty((len(slices), rows, cols), dtype=np.float32)
    for k, ds in enumerate(slices):
        stored = _stored_values(ds, rows, cols)
        slope = float_or_none(ds, "RescaleSlope")
        intercept = float_or_none(ds, "RescaleIntercept")
        slope = 1.0 if slope is None or slope == 0 else slope  # 0 is a known encoder bug, never meant
        intercept = 0.0 if intercept is None else intercept
        plane = out[k]
        if slope == 1.0:
            np.copyto(plane, stored, casting="unsafe")
        else:
            np.multiply(stored, np.float32(slope), out=plane, casting="unsafe")
        if intercept != 0.0:
            plane += np.float32(intercept)
        padding = _padding_range(ds)
        if padding is not None:
            _apply_padding(plane, stored, padding, slope, intercept)
    return out


def _apply_padding(plane: np.ndarray, stored: np.ndarray, padding: tuple[int, int], slope: float,
                   intercept: float) -> None:
    """Set padded pixels of one slice to :data:`PADDING_HU`, in place.

    Padding below air (the usual -2000 stored / -3024 HU, or 0 stored / -1024
    HU): the padding range and every pixel below -1024 HU count, because
    lossy codecs (JPEG 2000, JPEG) smear the padding value across the edge of
    the scan circle (a 1:340 JPEG 2000 CT has 19,000 such pixels between
    -3024 and -1024 HU), and nothing below -1024 HU is anything but air or
    padding -- so air noise below it becomes -1000 as well. Padding above
    3000 HU: the exact range only (saturated metal sits there too). Padding
    that maps into -1000..3000 HU is ignored rather than erase real tissue.
    """
    lo, hi = padding
    lo_hu, hi_hu = sorted((lo * slope + intercept, hi * slope + intercept))
    if hi_hu <= PADDING_HU:
        mask = (stored >= lo) & (stored <= hi)
        mask |= plane < np.float32(_AIR_FLOOR_HU)
    elif lo_hu >= 3000.0:
        mask = (stored >= lo) & (stored <= hi)
    else:
        return
    plane[mask] = np.float32(PADDING_HU)


def _padding_range(ds: Dataset) -> tuple[int, int] | None:
    """Inclusive range of stored values that are padding, or None.

    PixelPaddingValue alone marks one value; with PixelPaddingRangeLimit the
    range between the two (PS3.3 C.7.5.1.1.2). Both are US or SS following
    PixelRepresentation; a value read with the other VR is reinterpreted.
    """
    value = get_value(ds, "PixelPaddingValue")
    if value is None or value == "" or isinstance(value, (list, tuple, MultiValue)):
        return None
    limit = get_value(ds, "PixelPaddingRangeLimit")
    if isinstance(limit, (list, tuple, MultiValue)) or limit == "":
        limit = None
    try:
        signed = int(get_value(ds, "PixelRepresentation", 0) or 0) == 1
        bits = int(ds.BitsAllocated)
        values = [int(value)] + ([] if limit is None else [int(limit)])
    except Exception:
        return None
    if bits not in (8, 16, 32):
        return None
    span = 1 << bits
    fixed = []
    for v in values:
        if signed and v >= span // 2:
            v -= span
        elif not signed and v < 0:
            v += span
        fixed.append(v)
    return min(fixed), max(fixed)


def _pixel_format(ds: Dataset) -> tuple[int, int, bool]:
    """(BitsAllocated, BitsStored, signed) of a single-frame greyscale slice, else ``unsupported_pixel_data``."""
    try:
        frames = int(get_value(ds, "NumberOfFrames", 1) or 1)
        samples = int(get_value(ds, "SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        stored_bits = int(get_value(ds, "BitsStored", bits) or bits)
        signed = int(get_value(ds, "PixelRepresentation", 0) or 0) == 1
    except Exception:
        raise BadInput(Reason.UNSUPPORTED_PIXEL_DATA, "image pixel module incomplete") from None
    if frames != 1 or samples != 1 or bits not in (8, 16, 32) or not 1 <= stored_bits <= bits:
        raise BadInput(Reason.UNSUPPORTED_PIXEL_DATA, "only single-frame greyscale 8/16/32-bit slices are supported")
    return bits, stored_bits, signed


def _stored_values(ds: Dataset, rows: int, cols: int) -> np.ndarray:
    """The stored integer values of one single-frame greyscale slice, shape ``(rows, cols)``."""
    bits, stored_bits, signed = _pixel_format(ds)
    syntax = transfer_syntax_of(ds)
    if syntax in NATIVE_PIXEL_SYNTAXES:
        # Deflate compresses the whole data set; once read, its pixel data is native little endian.
        little = syntax != ExplicitVRBigEndian
        dtype = np.dtype(f"{'<' if little else '>'}{'i' if signed else 'u'}{bits // 8}")
        count = rows * cols
        buffer = ds.PixelData
        if len(buffer) < count * dtype.itemsize:
            raise BadInput(Reason.NOT_DICOM, "truncated: pixel data shorter than rows x columns")
        values = np.frombuffer(buffer, dtype=dtype, count=count).reshape(rows, cols)
    else:
        values = decode_frame(ds)
        if values.shape != (rows, cols):
            raise BadInput(Reason.UNSUPPORTED_PIXEL_DATA, "decoded pixel data has an unexpected shape")
        # pydicom's decoders already honour BitsStored and PixelRepresentation
        # (including the JPEG 2000 sign correction); masking again could only
        # damage values of a header that understates its precision.
        return values
    if stored_bits < bits:
        # Bits above BitsStored are not pixel data (old scanners put overlays there).
        if signed:
            shift = bits - stored_bits
            values = (values << shift) >> shift  # sign-extend from BitsStored
        else:
            values = values & np.asarray((1 << stored_bits) - 1, dtype=values.dtype)
    return values

