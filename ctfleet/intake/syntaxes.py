"""Transfer syntaxes: which ones ctfleet reads, which decoders are installed, decoding one frame.

:data:`TRANSFER_SYNTAXES` lists every syntax read: the three uncompressed
ones, deflated explicit VR little endian, RLE lossless, JPEG baseline (8-bit),
JPEG extended (12-bit), JPEG lossless (process 14 and its selection value 1),
JPEG-LS lossless and near-lossless, JPEG 2000 lossless and lossy, and
HTJ2K (all three). A compressed syntax is only accepted when pydicom has a
working decoder for it in this environment (pylibjpeg-libjpeg,
pylibjpeg-openjpeg, pyjpegls, Pillow); anything else -- MPEG/HEVC video,
JPEG 2000 Part 2, JPIP, private syntaxes -- is ``unsupported_transfer_syntax``.
Uncompressed pixel data is viewed in place (``np.frombuffer``, in
:mod:`.volume`); compressed frames go through pydicom's decoders
(:func:`decode_frame`), frame by frame, never cached on the data set.

Messages name a syntax by the standard name from DICOM's own registry, never
by a UID taken from the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
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
)

from ctfleet.contracts import Reason
from ctfleet.errors import BadInput


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
NATIVE_PIXEL_SYNTAXES = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                                   DeflatedExplicitVRLittleEndian})
"""Syntaxes whose pixel data is native (not encapsulated) once read: the three uncompressed ones and
deflated explicit VR little endian (deflate compresses the whole data set, not the pixels)."""
JPEG_FAMILY = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
                         JPEGLSNearLossless})
"""Syntaxes whose frames are JPEG or JPEG-LS codestreams (SOI ... EOI)."""
J2K_FAMILY = frozenset({JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K})
"""Syntaxes whose frames are JPEG 2000 or HTJ2K codestreams (SOC ... EOC, or a JP2 file)."""

# pydicom tries plugins in a fixed order; for JPEG-LS its first (pylibjpeg) is ~5x
# slower than CharLS (pyjpegls): 60 vs 13 ms for a 512 x 512 CT slice.
_PREFERRED_PLUGIN = {JPEGLSLossless: "pyjpegls", JPEGLSNearLossless: "pyjpegls"}


@lru_cache(maxsize=None)
def decoder_available(syntax: UID) -> bool:
    """Whether pydicom can decode pixel data of ``syntax`` here (native ones always).

    Parameters
    ----------
    syntax : pydicom.uid.UID

    Returns
    -------
    bool
    """
    if syntax in NATIVE_PIXEL_SYNTAXES:
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
    return frozenset(uid for uid in TRANSFER_SYNTAXES if decoder_available(uid))


def _syntax_label(syntax: UID | None) -> str:
    """A name for messages: DICOM's registered name, never a UID read from the file."""
    if syntax is not None and syntax in TRANSFER_SYNTAXES:
        return TRANSFER_SYNTAXES[syntax]
    if syntax is not None and syntax in UID_dictionary and UID_dictionary[syntax][1] == "Transfer Syntax":
        return str(UID_dictionary[syntax][0])
    return "a private or unknown transfer syntax"


def check_syntax_supported(syntax: UID | None, where: str) -> None:
    """Raise unless ``syntax`` is one of :data:`TRANSFER_SYNTAXES` and its decoder is installed.

    Parameters
    ----------
    syntax : pydicom.uid.UID or None
        None when the file does not say.
    where : str
        Appended to the message (e.g. ``" (file 3)"``); never read from the file.

    Raises
    ------
    BadInput
        ``unsupported_transfer_syntax``.
    """
    if syntax is not None and syntax in TRANSFER_SYNTAXES and decoder_available(syntax):
        return
    if syntax is not None and syntax in TRANSFER_SYNTAXES:
        raise BadInput(
            Reason.UNSUPPORTED_TRANSFER_SYNTAX,
            f"no decoder installed for {_syntax_label(syntax)} (pylibjpeg-libjpeg, pylibjpeg-openjpeg "
            f"and pyjpegls provide them){where}",
        )
    raise BadInput(
        Reason.UNSUPPORTED_TRANSFER_SYNTAX,
        f"{_syntax_label(syntax)} is not read; send uncompressed, RLE, JPEG, JPEG-LS or JPEG 2000{where}",
    )


def transfer_syntax_of(ds: Dataset) -> UID:
    """The transfer syntax of a data set: its file meta's, else what the writer would use.

    Parameters
    ----------
    ds : pydicom.Dataset

    Returns
    -------
    pydicom.uid.UID
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax:
        return UID(str(syntax))
    # A data set built in memory: say what the writer would use.
    implicit, little = ds.original_encoding
    if little is False:
        return ExplicitVRBigEndian
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def decode_frame(ds: Dataset, where: str = "") -> np.ndarray:
    """Decode the first frame of encapsulated pixel data with pydicom's decoders (not cached on ``ds``).

    Parameters
    ----------
    ds : pydicom.Dataset
    where : str, optional
        Appended to error messages.

    Returns
    -------
    numpy.ndarray
        The stored values of the frame, as pydicom's decoder returns them.

    Raises
    ------
    BadInput
        ``unsupported_transfer_syntax``; ``unsupported_pixel_data`` when the frame does not decode.
    """
    syntax = transfer_syntax_of(ds)
    check_syntax_supported(syntax, where)
    from pydicom.pixels import get_decoder

    decoder = get_decoder(syntax)
    preferred = _PREFERRED_PLUGIN.get(syntax, "")
    plugin = preferred if preferred in decoder.available_plugins else ""
    try:
        values, _ = decoder.as_array(ds, index=0, decoding_plugin=plugin)
    except Exception:  # decoder messages may quote header values
        raise BadInput(Reason.UNSUPPORTED_PIXEL_DATA,
                       f"the {_syntax_label(syntax)} pixel data does not decode (corrupt codestream){where}") from None
    return values

