"""DICOM in memory: read, group into series, choose one, build a :class:`~model.volume.Volume`.

Everything here is pure: bytes or :class:`pydicom.Dataset` objects in, objects
out. Only handlers and the worker touch S3 or the file system.

Errors are :class:`~ctfleet.errors.BadInput` with a reason code. Their messages
never carry header values (they are PHI or may be): only reason codes, counts,
tolerances, the file name the caller passed in and, for transfer syntaxes, the
standard name from DICOM's own registry (never a UID taken from the file).

Every reason code raised here is one of :class:`ctfleet.contracts.Reason`.

Transfer syntaxes
-----------------
:data:`TRANSFER_SYNTAXES` lists every syntax read: the three uncompressed
ones, deflated explicit VR little endian, RLE lossless, JPEG baseline (8-bit),
JPEG extended (12-bit), JPEG lossless (process 14 and its selection value 1),
JPEG-LS lossless and near-lossless, JPEG 2000 lossless and lossy, and
HTJ2K (all three). A compressed syntax is only accepted when pydicom has a
working decoder for it in this environment (pylibjpeg-libjpeg,
pylibjpeg-openjpeg, pyjpegls, Pillow); anything else -- MPEG/HEVC video,
JPEG 2000 Part 2, JPIP, private syntaxes -- is ``unsupported_transfer_syntax``.
Uncompressed pixel data is viewed in place (``np.frombuffer``); compressed
frames go through pydicom's decoders, frame by frame, never cached on the
data set.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragments, generate_frames
from pydicom.multival import MultiValue
from pydicom.uid import (
    HTJ2K,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    UID_dictionary,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from model.volume import Volume

from ctfleet.contracts import Reason
from ctfleet.errors import BadInput

# Reason codes of geometry and pixel checks (defined with the others in contracts.Reason).
INCONSISTENT_SPACING = Reason.INCONSISTENT_SPACING
DUPLICATE_SLICES = Reason.DUPLICATE_SLICES
INCONSISTENT_GEOMETRY = Reason.INCONSISTENT_GEOMETRY
MISSING_GEOMETRY = Reason.MISSING_GEOMETRY
UNSUPPORTED_PIXEL_DATA = Reason.UNSUPPORTED_PIXEL_DATA
UNSUPPORTED_TRANSFER_SYNTAX = Reason.UNSUPPORTED_TRANSFER_SYNTAX
"""A transfer syntax ctfleet does not read, or one whose decoder is not installed."""

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
FULL_COVERAGE_MM = 200.0
"""Extent along the slice normal (first to last slice centre) that counts as full lung coverage.

Adult lungs span ~220-300 mm apex to base; 200 mm separates a whole-chest
stack from a limited one (a high-resolution subset, a targeted
reconstruction). When no stack reaches it (a child, a short scan), stacks
within 90 % of the longest one count as full instead.
"""
THIN_SLICE_MM = 3.0
"""Slices at most this thick are 'thin'; any thin stack is preferred over a thick one."""
PADDING_HU = -1000.0
"""HU written where PixelPaddingValue (and PixelPaddingRangeLimit) mark padding: air."""
_AIR_FLOOR_HU = -1024.0  # the lowest value a CT reconstructs (12-bit stored 0, intercept -1024)

_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
_SOP_CLASS_FOR_MODALITY = {
    "CT": _CT_IMAGE_STORAGE,
    "MR": UID("1.2.840.10008.5.1.4.1.1.4"),
    "PT": UID("1.2.840.10008.5.1.4.1.1.128"),
}
_FIXED_WIDTH_VRS = frozenset({"AT", "FD", "FL", "SL", "SS", "SV", "UL", "US", "UV", "SQ"})
_SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
_NATIVE_SYNTAXES = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian})

TRANSFER_SYNTAXES: Mapping[UID, str] = {
    ImplicitVRLittleEndian: "implicit VR little endian",
    ExplicitVRLittleEndian: "explicit VR little endian",
    ExplicitVRBigEndian: "explicit VR big endian",
    DeflatedExplicitVRLittleEndian: "deflated explicit VR little endian",
    RLELossless: "RLE lossless",
    JPEGBaseline8Bit: "JPEG baseline (8-bit)",
    JPEGExtended12Bit: "JPEG extended (12-bit)",
    JPEGLossless: "JPEG lossless (process 14)",
    JPEGLosslessSV1: "JPEG lossless (process 14, SV1)",
    JPEGLSLossless: "JPEG-LS lossless",
    JPEGLSNearLossless: "JPEG-LS near-lossless",
    JPEG2000Lossless: "JPEG 2000 lossless",
    JPEG2000: "JPEG 2000",
    HTJ2KLossless: "HTJ2K lossless",
    HTJ2KLosslessRPCL: "HTJ2K lossless RPCL",
    HTJ2K: "HTJ2K",
}
"""Every transfer syntax ctfleet reads (when its decoder is installed), with a short name."""
LOSSY_TRANSFER_SYNTAXES = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000, HTJ2K})
"""Syntaxes whose pixel values may differ from what the scanner reconstructed."""

_JPEG_FAMILY = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
                          JPEGLSNearLossless})
_J2K_FAMILY = frozenset({JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K})
# pydicom tries plugins in a fixed order; for JPEG-LS its first (pylibjpeg) is ~5x
# slower than CharLS (pyjpegls): 60 vs 13 ms for a 512 x 512 CT slice.
_PREFERRED_PLUGIN = {JPEGLSLossless: "pyjpegls", JPEGLSNearLossless: "pyjpegls"}
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
# An encapsulated (undefined length) Pixel Data element header, explicit VR LE: OB or OW.
_ENCAPSULATED_PIXEL_DATA_HEADERS = (b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff",
                                    b"\xe0\x7f\x10\x00OW\x00\x00\xff\xff\xff\xff")


@lru_cache(maxsize=None)
def _decoder_available(syntax: UID) -> bool:
    if syntax in _NATIVE_SYNTAXES or syntax == DeflatedExplicitVRLittleEndian:
        return True
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(syntax).is_available)
    except Exception:  # no decoder registered for it at all
        return False


def supported_transfer_syntaxes() -> frozenset[UID]:
    """The transfer syntaxes this environment decodes.

    Returns
    -------
    frozenset of pydicom.uid.UID
        The members of :data:`TRANSFER_SYNTAXES` whose pydicom decoder has a
        usable plugin installed (uncompressed and deflated ones always).
    """
    return frozenset(uid for uid in TRANSFER_SYNTAXES if _decoder_available(uid))


def _syntax_label(syntax: UID | None) -> str:
    """A name for messages: DICOM's registered name, never a UID read from the file."""
    if syntax is not None and syntax in TRANSFER_SYNTAXES:
        return TRANSFER_SYNTAXES[syntax]
    if syntax is not None and syntax in UID_dictionary and UID_dictionary[syntax][1] == "Transfer Syntax":
        return str(UID_dictionary[syntax][0])
    return "a private or unknown transfer syntax"


def _check_syntax_supported(syntax: UID | None, where: str) -> None:
    if syntax is not None and syntax in TRANSFER_SYNTAXES and _decoder_available(syntax):
        return
    if syntax is not None and syntax in TRANSFER_SYNTAXES:
        raise BadInput(
            UNSUPPORTED_TRANSFER_SYNTAX,
            f"no decoder installed for {_syntax_label(syntax)} (pylibjpeg-libjpeg, pylibjpeg-openjpeg "
            f"and pyjpegls provide them){where}",
        )
    raise BadInput(
        UNSUPPORTED_TRANSFER_SYNTAX,
        f"{_syntax_label(syntax)} is not read; send uncompressed, RLE, JPEG, JPEG-LS or JPEG 2000{where}",
    )


# -- reading ---------------------------------------------------------------------------


def read_dataset(data: bytes, name: str = "", *, verify_pixels: bool = False) -> Dataset:
    """Parse one DICOM Part 10 file held in memory.

    Parameters
    ----------
    data : bytes
        The whole file (128-byte preamble, ``DICM``, file meta, data set).
    name : str, optional
        A name the caller knows the file by (object key, path). Only used in
        error messages; never read from the file.
    verify_pixels : bool, optional
        Also decode compressed pixel data once, to catch corruption inside a
        codestream that the structural checks cannot see. Costs one decode
        (~5-40 ms for a 512 x 512 slice); off by default.

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
        promises, an encapsulated frame without its end marker, a malformed
        RLE header); ``no_pixel_data`` when there is no (7FE0,0010) Pixel
        Data; ``unsupported_transfer_syntax`` for a transfer syntax outside
        :data:`TRANSFER_SYNTAXES` or whose decoder is not installed;
        ``unsupported_pixel_data`` when ``verify_pixels`` and the frame does
        not decode.
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
        syntax = _meta_transfer_syntax(data)
        if syntax is not None and (syntax not in TRANSFER_SYNTAXES or not _decoder_available(syntax)):
            # pydicom refuses a data set in a syntax it does not know (a private one).
            _check_syntax_supported(syntax, where)
        # `from None`: pydicom's own messages may quote header bytes (PHI).
        raise BadInput(Reason.NOT_DICOM, f"unreadable DICOM ({type(exc).__name__}){where}") from None
    if (len(ds) == 0 or "PixelData" not in ds) and any(h in data for h in _ENCAPSULATED_PIXEL_DATA_HEADERS):
        # pydicom drops an encapsulated element whose sequence delimiter is missing
        # (and, when the cut is inside the delimiter, the whole data set).
        raise BadInput(Reason.NOT_DICOM, f"truncated: encapsulated pixel data ends before its delimiter{where}")
    if len(ds) == 0:
        # A file cut inside or right after its file meta parses to an empty data set.
        raise BadInput(Reason.NOT_DICOM, f"no data set after the file meta{where}")
    if "PixelData" not in ds:
        raise BadInput(Reason.NO_PIXEL_DATA, f"no pixel data{where}")
    _check_syntax_supported(_transfer_syntax(ds), where)
    _check_pixel_data_complete(ds, where)
    if verify_pixels and _transfer_syntax(ds).is_encapsulated:
        _decode_frame(ds, where)
    return ds


def _meta_transfer_syntax(data: bytes) -> UID | None:
    """(0002,0010) from the file meta of a Part 10 file, parsed by hand; None if not found.

    Used only when pydicom refuses the whole file, to tell a private transfer
    syntax (``unsupported_transfer_syntax``) from garbage (``not_dicom``).
    """
    if data[128:132] != b"DICM":
        return None
    offset, end = 132, min(len(data), 132 + 65536)
    while offset + 8 <= end:
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            return None
        vr = data[offset + 4:offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR"):
            if offset + 12 > end:
                return None
            length = struct.unpack_from("<I", data, offset + 8)[0]
            start = offset + 12
        else:
            length = struct.unpack_from("<H", data, offset + 6)[0]
            start = offset + 8
        if (group, element) == (0x0002, 0x0010):
            text = data[start:start + length].rstrip(b"\x00 ").decode("ascii", "replace")
            return UID(text) if re.fullmatch(r"[0-9.]{1,64}", text) else None
        offset = start + length
    return None


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
        if (isinstance(raw, RawDataElement) and tag.is_private and raw.VR is None and tag.element >= 0x1000
                and isinstance(raw.value, bytes)):
            # Implicit VR private data: nothing downstream reads it (de-identification
            # removes every private element), so keep the bytes as UN instead of paying
            # for the private-dictionary look-up and conversion (~3x the parse itself).
            # Private creators (gggg,00xx) are still converted: they name the block.
            ds[tag] = DataElement(tag, "UN", raw.value)
            continue
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
    surface as a reshape error deep in the pipeline. Encapsulated pixel data
    is checked frame by frame without decoding: every JPEG / JPEG-LS frame
    must start with SOI and end with EOI, every JPEG 2000 / HTJ2K frame start
    with SOC (or a JP2 signature) and end with EOC, every RLE frame carry a
    header whose segment offsets lie inside the frame. A decoder fed a cut
    codestream often returns a partial image without complaint, which is the
    failure this guards against.
    """
    value = ds.PixelData
    if not isinstance(value, (bytes, bytearray)):
        raise BadInput(Reason.NOT_DICOM, f"pixel data unreadable{where}")
    syntax = _transfer_syntax(ds)
    try:
        frames = int(_get(ds, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise BadInput(Reason.NOT_DICOM, f"number of frames unreadable{where}") from None
    if syntax.is_encapsulated:
        try:
            fragments = sum(1 for _ in generate_fragments(value))
            pieces = list(generate_frames(bytes(value), number_of_frames=frames)) if fragments > 1 else []
        except Exception:
            raise BadInput(Reason.NOT_DICOM, f"encapsulated pixel data is malformed{where}") from None
        if fragments <= 1 or not pieces:  # the first item is the (possibly empty) offset table
            raise BadInput(Reason.NOT_DICOM, f"encapsulated pixel data has no fragments{where}")
        if len(pieces) != frames:
            raise BadInput(Reason.NOT_DICOM, f"encapsulated pixel data has {len(pieces)} of {frames} frames{where}")
        try:
            bits = int(ds.BitsAllocated)
            samples = int(_get(ds, "SamplesPerPixel", 1) or 1)
        except Exception:
            raise BadInput(Reason.NOT_DICOM, f"image pixel module incomplete{where}") from None
        for k, frame in enumerate(pieces):
            problem = _frame_problem(syntax, frame, bits * samples // 8)
            if problem:
                raise BadInput(Reason.NOT_DICOM, f"truncated or malformed: frame {k + 1} of {frames} {problem}{where}")
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(_get(ds, "SamplesPerPixel", 1) or 1)
    except Exception:
        raise BadInput(Reason.NOT_DICOM, f"image pixel module incomplete{where}") from None
    pixels = rows * cols * samples * frames
    expected = (pixels + 7) // 8 if bits == 1 else pixels * (bits // 8)
    if len(value) < expected:
        raise BadInput(Reason.NOT_DICOM, f"truncated: pixel data has {len(value)} of {expected} bytes{where}")


def _frame_problem(syntax: UID, frame: bytes, segments: int) -> str:
    """What is structurally wrong with one encapsulated frame ('' when nothing)."""
    # The end marker (FFD9: EOI, or EOC for JPEG 2000) cannot occur inside
    # entropy-coded data; encoders pad after it (0x00 to even length, some 0xFF).
    ends = b"\xff\xd9" in frame[-16:]
    if syntax in _JPEG_FAMILY:
        if frame[:2] != b"\xff\xd8":
            return "does not start with a JPEG SOI marker"
        if not ends:
            return "does not end with a JPEG EOI marker"
    elif syntax in _J2K_FAMILY:
        if frame[:4] != b"\xff\x4f\xff\x51" and frame[:12] != _JP2_SIGNATURE:
            return "does not start with a JPEG 2000 SOC/SIZ marker"
        if not ends:
            return "does not end with a JPEG 2000 EOC marker"
    elif syntax == RLELossless:
        if len(frame) < 64:
            return "has no complete RLE header"
        header = struct.unpack_from("<16I", frame)
        count, offsets = header[0], header[1:]
        if count != segments or offsets[0] != 64:
            return "has an RLE header that does not match the image pixel module"
        used = offsets[:count]
        if any(b <= a for a, b in zip(used, used[1:])) or used[-1] >= len(frame):
            return "has RLE segment offsets beyond its end"
    return ""


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

    @cached_property
    def _along(self) -> np.ndarray:
        """Positions of the slices along the first slice's normal (slices with geometry only), sorted."""
        reference = next((o for o in (_orientation(ds) for ds in self.datasets) if o is not None), None)
        if reference is None:
            return np.empty(0)
        points = [p for p in (_floats(ds, "ImagePositionPatient", 3) for ds in self.datasets) if p is not None]
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
        return _transfer_syntax(first) in LOSSY_TRANSFER_SYNTAXES or _text(first, "LossyImageCompression") == "01"

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


# -- choosing --------------------------------------------------------------------------

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
    syntax = _transfer_syntax(s.datasets[0]) if s.datasets else None
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
        return "not_ct"
    if "LOCALIZER" in s.image_type:
        return "localizer"
    if s.is_multiframe:
        return "multi_frame"
    if s.is_localizer:
        return "too_few_slices"
    if not s.has_geometry:
        return "no_geometry"
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
    """Choose the stack to analyse and record why, and what else was there.

    Exclusions: not CT; a localizer/scout (ImageType LOCALIZER, or fewer than
    :data:`MIN_SLICES` single-frame slices); multi-frame (not supported yet);
    missing geometry; and, with ``check_geometry``, a stack that fails
    :func:`volume_from_series`'s geometry checks (a missing slice, duplicate
    or uneven positions, mixed orientation) -- the next best stack is taken
    instead, and the failure recorded against the candidate.

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

    Parameters
    ----------
    series : sequence of Series
        Usually the output of :func:`group_series` for one upload.
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

    ordered = sorted(usable, key=rank)
    viable: list[int] = []
    failure: BadInput | None = None
    for i in ordered:
        if check_geometry:
            try:
                _stack_geometry(list(series[i].datasets))
            except BadInput as exc:
                candidates[i]["excluded_because"] = exc.reason
                failure = failure or exc
                continue
        viable.append(i)
    if not viable:
        assert failure is not None
        raise BadInput(failure.reason, f"none of {len(ordered)} usable CT stacks passes the geometry checks; "
                                       f"the best one: {failure.detail}")
    for r, i in enumerate(viable, start=1):
        candidates[i]["rank"] = r
    best = viable[0]
    candidates[best]["chosen"] = True
    excluded = sum(1 for c in candidates if c["excluded_because"] is not None)
    reason = _reason_text(candidates[best], len(viable), excluded)
    if best != ordered[0]:
        reason += f"; preferred stack {ordered[0]} failed ({candidates[ordered[0]]['excluded_because']})"
    return Choice(series=series[best], index=best, reason=reason, candidates=tuple(candidates), ranked=tuple(viable))


def choose_series(series: Sequence[Series]) -> Series:
    """Pick the one stack to analyse: :func:`choose` without the record of why.

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
        Every stack of one upload (:func:`group_series`).

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


# -- the volume ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    slices: list[Dataset]  # ordered along the normal
    rows: int
    cols: int
    spacing_mm: tuple[float, float, float]  # dz, dy, dx
    affine: np.ndarray  # RAS+


def _stack_geometry(slices: list[Dataset]) -> _Geometry:
    """Order one stack along its normal and check it is a regular grid (headers only)."""
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

    lps = np.eye(4)
    lps[:3, 0] = row_cos * dx  # i runs along a row: next column
    lps[:3, 1] = col_cos * dy  # j runs down a column: next row
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    # DICOM patient coordinates are LPS; nibabel/RAS+ wants x and y negated.
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return _Geometry(slices=slices, rows=int(rows), cols=int(cols), spacing_mm=(dz, dy, dx), affine=affine)


def volume_from_series(datasets: Series | Iterable[Dataset]) -> Volume:
    """Build a HU volume from the slices of one stack, ordered by geometry.

    Slices are ordered by ImagePositionPatient projected on the slice normal
    (cross product of the row and column cosines), never by InstanceNumber.
    Any transfer syntax of :data:`TRANSFER_SYNTAXES` is read; uncompressed
    slices are viewed in place, compressed ones decoded one frame at a time.
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
    geometry = _stack_geometry(slices)
    hu = _hounsfield(geometry.slices, geometry.rows, geometry.cols)
    return Volume(hu=hu, spacing_mm=geometry.spacing_mm, affine=geometry.affine)


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
    value = _get(ds, "PixelPaddingValue")
    if value is None or value == "" or isinstance(value, (list, tuple, MultiValue)):
        return None
    limit = _get(ds, "PixelPaddingRangeLimit")
    if isinstance(limit, (list, tuple, MultiValue)) or limit == "":
        limit = None
    try:
        signed = int(_get(ds, "PixelRepresentation", 0) or 0) == 1
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
        frames = int(_get(ds, "NumberOfFrames", 1) or 1)
        samples = int(_get(ds, "SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        stored_bits = int(_get(ds, "BitsStored", bits) or bits)
        signed = int(_get(ds, "PixelRepresentation", 0) or 0) == 1
    except Exception:
        raise BadInput(UNSUPPORTED_PIXEL_DATA, "image pixel module incomplete") from None
    if frames != 1 or samples != 1 or bits not in (8, 16, 32) or not 1 <= stored_bits <= bits:
        raise BadInput(UNSUPPORTED_PIXEL_DATA, "only single-frame greyscale 8/16/32-bit slices are supported")
    return bits, stored_bits, signed


def _decode_frame(ds: Dataset, where: str = "") -> np.ndarray:
    """Decode the first frame of encapsulated pixel data with pydicom's decoders (not cached on ``ds``)."""
    syntax = _transfer_syntax(ds)
    _check_syntax_supported(syntax, where)
    from pydicom.pixels import get_decoder

    decoder = get_decoder(syntax)
    preferred = _PREFERRED_PLUGIN.get(syntax, "")
    plugin = preferred if preferred in decoder.available_plugins else ""
    try:
        values, _ = decoder.as_array(ds, index=0, decoding_plugin=plugin)
    except Exception:  # decoder messages may quote header values
        raise BadInput(UNSUPPORTED_PIXEL_DATA,
                       f"the {_syntax_label(syntax)} pixel data does not decode (corrupt codestream){where}") from None
    return values


def _stored_values(ds: Dataset, rows: int, cols: int) -> np.ndarray:
    """The stored integer values of one single-frame greyscale slice, shape ``(rows, cols)``."""
    bits, stored_bits, signed = _pixel_format(ds)
    syntax = _transfer_syntax(ds)
    if syntax in _NATIVE_SYNTAXES or syntax == DeflatedExplicitVRLittleEndian:
        # Deflate compresses the whole data set; once read, its pixel data is native little endian.
        little = syntax != ExplicitVRBigEndian
        dtype = np.dtype(f"{'<' if little else '>'}{'i' if signed else 'u'}{bits // 8}")
        count = rows * cols
        buffer = ds.PixelData
        if len(buffer) < count * dtype.itemsize:
            raise BadInput(Reason.NOT_DICOM, "truncated: pixel data shorter than rows x columns")
        values = np.frombuffer(buffer, dtype=dtype, count=count).reshape(rows, cols)
    else:
        values = _decode_frame(ds)
        if values.shape != (rows, cols):
            raise BadInput(UNSUPPORTED_PIXEL_DATA, "decoded pixel data has an unexpected shape")
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
    compress_kwargs: Mapping[str, Any] | None = None,
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
        Implicit VR LE, Explicit VR LE, Explicit VR BE, Deflated Explicit VR
        LE, or a compressed syntax pydicom can encode here (RLE lossless;
        JPEG-LS and JPEG 2000 when pyjpegls / pylibjpeg-openjpeg are
        installed): each slice is then compressed with ``ds.compress``.
    compress_kwargs : mapping, optional
        Passed to ``ds.compress`` (e.g. ``{"jls_error": 2}`` for JPEG-LS
        near-lossless, ``{"j2k_cr": [20]}`` for lossy JPEG 2000).

    Returns
    -------
    list of pydicom.Dataset
        One data set per slice, ``k = 0 .. Z-1``, with file meta; ready for
        :func:`dataset_to_bytes`.

    Raises
    ------
    ValueError
        Bad shape or spacing, non-finite HU or HU outside what int16 can hold,
        a transfer syntax with no encoder here.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise ValueError(f"hu must be a non-empty (Z, Y, X) array, got shape {hu.shape}")
    dz, dy, dx = (float(s) for s in spacing_mm)
    if min(dz, dy, dx) <= 0:
        raise ValueError("spacing must be positive")
    syntax = UID(str(transfer_syntax))
    compressed = syntax not in _NATIVE_SYNTAXES and syntax != DeflatedExplicitVRLittleEndian
    if compressed:
        from pydicom.pixels import get_encoder

        try:
            encodable = get_encoder(syntax).is_available
        except Exception:
            encodable = False
        if not encodable:
            raise ValueError("transfer_syntax must be uncompressed, deflated, or have a pydicom encoder installed")
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
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if compressed else syntax
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
        if compressed:
            ds.compress(syntax, **dict(compress_kwargs or {}))
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
