"""Reading: one DICOM Part 10 file in memory to a :class:`pydicom.Dataset`, checked.

A file is parsed, its private elements converted (those that do not convert
kept as ``UN``), and its pixel data checked for completeness without decoding:
a truncated file, a cut codestream or a malformed RLE header is ``not_dicom``
here rather than a reshape error deep in the pipeline. Error messages never
carry header values: reason codes, counts and the name the caller passed in.
"""

from __future__ import annotations

import io
import re
import struct

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, generate_frames
from pydicom.uid import UID, RLELossless

from ctfleet.contracts import Reason
from ctfleet.errors import BadInput
from ctfleet.intake.headers import get_value, text_value
from ctfleet.intake.syntaxes import (
    J2K_FAMILY,
    JPEG_FAMILY,
    TRANSFER_SYNTAXES,
    check_syntax_supported,
    decode_frame,
    decoder_available,
    transfer_syntax_of,
)

_FIXED_WIDTH_VRS = frozenset({"AT", "FD", "FL", "SL", "SS", "SV", "UL", "US", "UV", "SQ"})

_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
# An encapsulated (undefined length) Pixel Data element header, explicit VR LE: OB or OW.
_ENCAPSULATED_PIXEL_DATA_HEADERS = (b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff",
                                    b"\xe0\x7f\x10\x00OW\x00\x00\xff\xff\xff\xff")


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
        :data:`~ctfleet.intake.syntaxes.TRANSFER_SYNTAXES` or whose decoder is not installed;
        ``unsupported_pixel_data`` when ``verify_pixels`` and the frame does
        not decode.
    """
    where = f" ({name})" if name else ""
    if not data:
        raise BadInput(Reason.NOT_DICOM, f"empty file{where}")
    ds = _parse(data, where)
    if (len(ds) == 0 or "PixelData" not in ds) and any(h in data for h in _ENCAPSULATED_PIXEL_DATA_HEADERS):
        # pydicom drops an encapsulated element whose sequence delimiter is missing
        # (and, when the cut is inside the delimiter, the whole data set).
        raise BadInput(Reason.NOT_DICOM, f"truncated: encapsulated pixel data ends before its delimiter{where}")
    if len(ds) == 0:
        # A file cut inside or right after its file meta parses to an empty data set.
        raise BadInput(Reason.NOT_DICOM, f"no data set after the file meta{where}")
    if "PixelData" not in ds:
        raise BadInput(Reason.NO_PIXEL_DATA, f"no pixel data{where}")
    check_syntax_supported(transfer_syntax_of(ds), where)
    _check_pixel_data_complete(ds, where)
    if verify_pixels and transfer_syntax_of(ds).is_encapsulated:
        decode_frame(ds, where)
    return ds


UID_FROM_META = (("SOPInstanceUID", "MediaStorageSOPInstanceUID"), ("SOPClassUID", "MediaStorageSOPClassUID"))


def repair_from_meta(ds: Dataset) -> tuple[str, ...]:
    """Fill SOPInstanceUID and SOPClassUID from the file meta when the data set has them empty or
    missing (some scanners and PACS exports write them only in the meta); the keywords repaired.

    The data set and its file meta then agree, as de-identification and DICOM validators need.

    Raises
    ------
    BadInput
        ``no_sop_uid`` when the instance has no SOPInstanceUID or SOPClassUID in either place:
        nothing can name it, in a de-identified copy or in a SEG's references.
    """
    meta = getattr(ds, "file_meta", None)
    repaired = []
    for keyword, meta_keyword in UID_FROM_META:
        if text_value(ds, keyword):
            continue
        value = text_value(meta, meta_keyword) if meta is not None else ""
        if not (value and re.fullmatch(r"[0-9]+(\.[0-9]+)*", value) and len(value) <= 64):
            raise BadInput(Reason.NO_SOP_UID, f"the instance has no {keyword}, in the data set or the file meta")
        setattr(ds, keyword, UID(value))
        repaired.append(keyword)
    return tuple(repaired)


def _parse(data: bytes, where: str) -> Dataset:
    """pydicom's parse of the whole file, private elements converted; any failure is a reason code."""
    try:
        # force=False: a file without the DICM prefix is rejected rather than
        # guessed at; uploads are Part 10 files by contract.
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
        _convert_all(ds)
    except MemoryError:
        raise
    except Exception as exc:  # a parser on untrusted bytes fails in many ways; all are permanent
        syntax = _meta_transfer_syntax(data)
        if syntax is not None and (syntax not in TRANSFER_SYNTAXES or not decoder_available(syntax)):
            # pydicom refuses a data set in a syntax it does not know (a private one).
            check_syntax_supported(syntax, where)
        # `from None`: pydicom's own messages may quote header bytes (PHI).
        raise BadInput(Reason.NOT_DICOM, f"unreadable DICOM ({type(exc).__name__}){where}") from None
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
    items. The getters of :mod:`.headers` tolerate a public element that
    fails to convert. De-identified files carry no private elements, so on the worker's
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
    syntax = transfer_syntax_of(ds)
    try:
        frames = int(get_value(ds, "NumberOfFrames", 1) or 1)
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
            samples = int(get_value(ds, "SamplesPerPixel", 1) or 1)
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
        samples = int(get_value(ds, "SamplesPerPixel", 1) or 1)
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
    if syntax in JPEG_FAMILY:
        if frame[:2] != b"\xff\xd8":
            return "does not start with a JPEG SOI marker"
        if not ends:
            return "does not end with a JPEG EOI marker"
    elif syntax in J2K_FAMILY:
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

