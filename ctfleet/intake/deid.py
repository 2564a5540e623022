"""De-identification: the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

What is applied
---------------
- **The whole attribute table** (PS3.15 Table E.1-1), taken as data from the
  installed ``dicom-anonymizer`` package
  (``dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c``, about
  650 entries in nine action categories). Only the table is used; its
  anonymizer functions are not. :data:`ACTIONS` holds the exact tags,
  :data:`MASKED_ACTIONS` the repeating groups (curves ``50xx``, overlays
  ``60xx``) encoded by the package as ``(group, element, group_mask,
  element_mask)``: an element matches when ``tag.group & gm == group & gm`` and
  ``tag.element & em == element & em``.
- **Options** (written to DeidentificationMethodCodeSequence): the Basic
  profile (DCM 113100) and *Retain Longitudinal Temporal Information with
  Modified Dates* (DCM 113107). No other option: device identity, patient
  characteristics, UIDs, safe private attributes and descriptors are not
  retained; pixel data is not cleaned (``ctfleet.intake.pixels`` rejects series that
  may carry burned-in text instead, so Clean Pixel Data 113101 is not claimed).
- **Every sequence item**, at any depth, goes through the same rules.
- **Whole overlay and curve groups** (``60xx``, ``50xx``) are removed, not only
  the elements the table lists (Overlay Data, Overlay Comments, Curve Data).
- **All private elements** are removed, creators included: analysis needs none,
  so there is no safe-private list. Group length elements ``(gggg,0000)`` are
  removed too (they would be wrong after editing).
- **The file meta is rebuilt** from scratch: version, MediaStorageSOPClassUID,
  TransferSyntaxUID, the *replaced* MediaStorageSOPInstanceUID and ctfleet's
  implementation UID/name; SourceApplicationEntityTitle, Sending/Receiving AE
  titles and private information are dropped.

How the choices of the table are resolved
-----------------------------------------
The table offers alternatives (``X/Z``, ``Z/D`` ...) whose right pick depends
on the attribute's type in the IOD. For CT images the listed attributes are
type 2 or 3, so:

=============  ===========================================================
code           what ctfleet does
=============  ===========================================================
``X``          remove
``Z``, ``Z/D`` empty value (zero-length string, empty sequence)
``D``          a VR-consistent dummy (``ANONYMIZED``, ``0``, ``000000``,
               empty sequence for SQ); UIDs are replaced as for ``U``
``X/Z``,       remove
``X/D``,
``X/Z/D``
``U``          ``uid_for(secret, uid)``; registered DICOM UIDs kept
``X/Z/U*``     sequences kept and walked (their UIDs are replaced by the
               ``U`` rule inside), anything else removed
=============  ===========================================================

Exceptions on top of the table: top-level PatientName and PatientID (``Z``,
``Z/D``) get the facility-scoped :func:`patient_pseudonym` (a dummy consistent
per patient, so longitudinal studies link up inside the facility only), the name
as ``<pseudonym>^ANON`` (family and given name: validators read a PN without a
component delimiter as the retired free-text form);
nested PatientName/PatientID (someone else's, e.g. a referenced patient) are
removed.

Dates, times (the Modified Dates option)
----------------------------------------
Every DA and DT value that the table does not remove outright (``X``), i.e. the
``Z``, ``D``, ``X/Z``, ``X/D``, ``X/Z/D`` ones and dates the table does not
list, is moved back by a whole number of days, the same for every date of one
patient at one facility: :func:`date_offset_days`, 365..3650 days from
HMAC-SHA256(secret, facility, PatientID). Intervals between studies of a
patient survive, the calendar date does not. The shift is at least a year so a
date cannot stay within its year or season, and so a planted date in any
one-year window can never be shifted onto another planted date (the leak tests
rely on it). PatientBirthDate is emptied, not shifted (shifting it would keep
the exact age; Retain Patient Characteristics is not an option we use). DT
values keep only their (shifted) date part. **Times are dropped**: TM values are
emptied where the table allows ``Z``, set to ``000000`` where it only allows
``D``, removed otherwise; nothing downstream needs the time of day, and the
time of day is a quasi-identifier. A date that cannot be parsed is emptied.
LongitudinalTemporalInformationModified is set to ``MODIFIED``.

Safety net for attributes the table does not list
-------------------------------------------------
Public elements absent from pydicom's dictionary are removed (they cannot be
judged). Elements of the patient, visit, study-workflow, procedure-step and
results groups (0010, 0032, 0038, 0040, 4008) not named in the table are
removed (RealWorldValueMappingSequence excepted). Any other UI is replaced as
``U``, any PN and free text (LT, ST, UT) removed, any TM removed, any DA/DT
shifted. Everything else is kept: geometry, pixel module, rescale, kernel,
modality, ImageType, slice thickness, KVP, manufacturer and model.

Why not pydicom/deid
--------------------
The ``deid`` package (pydicom/deid) was evaluated and not adopted. Its default
recipe is a hand-kept list, not Table E.1-1, and keeps attributes the profile
removes (InstitutionName among them), so we would have to write and maintain a
full recipe anyway; its recipe lookup resolves the relative name ``dicom``, so
it misbehaves when the working directory holds a folder called ``dicom`` (a
common name in exactly the folders a hospital runs the tool from); and it pulls
matplotlib (and its fonts and image stack) into a Lambda that only edits
headers. ``dicom-anonymizer`` is used for its table alone, which is data, is
versioned with the standard (2026c) and is applied by ~150 lines we test.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as _annex_e  # type: ignore[import-untyped]
from ctfleet.contracts import pseudonym
from pydicom.datadict import dictionary_has_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, UID_dictionary

METHOD = "ctfleet PS3.15 E.1-1 basic profile (2026c), modified dates, v2"
"""Written to DeidentificationMethod (LO, at most 64 characters); bump the version when the rules change."""

IMPLEMENTATION_VERSION_NAME = "CTFLEET_DEID_2"
"""File meta ImplementationVersionName of every de-identified file (SH, at most 16 characters)."""

PSEUDONYM_HEX = 16
"""Length of the patient pseudonym (64 bits): unique enough per facility, short enough for PN/LO."""

MIN_SHIFT_DAYS = 365
"""Smallest date shift (days back)."""
MAX_SHIFT_DAYS = 3650
"""Largest date shift (days back), about ten years."""

DUMMY_TEXT = "ANONYMIZED"
"""The ``D`` dummy for text VRs (valid as AE, CS, SH, LO, PN, ...)."""

METHOD_CODES: tuple[tuple[str, str], ...] = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)
"""DeidentificationMethodCodeSequence items (CID 7050, scheme DCM)."""


def _tags(*keywords: str) -> frozenset[int]:
    tags = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:  # a typo here would silently change what is kept: fail at import
            raise KeyError(f"unknown DICOM keyword {keyword!r}")
        tags.add(int(tag))
    return frozenset(tags)


_CATEGORIES: dict[str, str] = {
    "D": "D_TAGS",
    "Z": "Z_TAGS",
    "X": "X_TAGS",
    "U": "U_TAGS",
    "Z/D": "Z_D_TAGS",
    "X/Z": "X_Z_TAGS",
    "X/D": "X_D_TAGS",
    "X/Z/D": "X_Z_D_TAGS",
    "X/Z/U*": "X_Z_U_STAR_TAGS",
}


def _load_table() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for code, name in _CATEGORIES.items():
        for entry in getattr(_annex_e, name):
            if len(entry) == 2:
                tag = (entry[0] << 16) | entry[1]
                if exact.get(tag, code) != code:  # the package lists each tag once; say so if that changes
                    raise ValueError(f"tag {tag:08X} listed under two actions")
                exact[tag] = code
            elif len(entry) == 4:
                masked.append((entry[0], entry[1], entry[2], entry[3], code))
            else:
                raise ValueError(f"unexpected Annex E table entry {entry!r}")
    if len(exact) < 500 or not masked:
        raise ValueError("the Annex E table looks incomplete")
    return exact, tuple(masked)


ACTIONS, MASKED_ACTIONS = _load_table()
"""PS3.15 Table E.1-1: tag -> action code, and the masked (repeating group) entries."""

_WRITTEN = _tags(
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
)
"""Written by :func:`deidentify` itself; kept when a data set is processed twice."""
_PATIENT_IDENTITY = _tags("PatientName", "PatientID")
_BIRTH_DATE = int(Tag("PatientBirthDate"))

_REMOVE_GROUPS = frozenset({0x0010, 0x0032, 0x0038, 0x0040, 0x4008})
"""Patient, visit, study-workflow, procedure-step and results groups: unlisted elements are removed."""
_KEEP_IN_REMOVED_GROUPS = _tags("RealWorldValueMappingSequence")

_FREE_TEXT_VRS = frozenset({"LT", "ST", "UT"})
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMBER_STRING_VRS = frozenset({"DS", "IS"})
_BINARY_NUMBER_VRS = frozenset({"FL", "FD", "SL", "SS", "SV", "UL", "US", "UV"})

# Internal operations an action resolves to.
_REMOVE, _EMPTY, _DUMMY, _UID, _SHIFT, _KEEP, _WALK, _PSEUDONYM, _TIME_DUMMY = range(9)


def uid_for(secret: bytes, facility: str, uid: str) -> str:
    """Replacement UID: ``2.25.`` + the first 16 bytes of the UID's ``uid`` pseudonym
    (:func:`ctfleet.contracts.pseudonym`) as a decimal integer.

    Deterministic per facility and secret (the same original always maps to the
    same replacement, so series and references stay consistent across uploads),
    different for every other facility even under the same secret, and at most 44
    characters (within the 64 a UID may have).

    Parameters
    ----------
    secret : bytes
        The facility's secret.
    facility : str
    uid : str
        The original UID; trailing padding (space, NUL) is ignored.

    Returns
    -------
    str
    """
    return "2.25." + str(int.from_bytes(pseudonym(secret, "uid", facility, uid)[:16], "big"))


def patient_pseudonym(secret: bytes, facility: str, patient_id: str) -> str:
    """Facility-scoped patient pseudonym: short hex of HMAC-SHA256(secret, facility, patient id).

    Stable for one patient within one facility (longitudinal studies link up),
    unlinkable across facilities. The ``patient\\0`` prefix separates this use
    of the secret from :func:`uid_for`, :func:`date_offset_days` and the study key.

    Parameters
    ----------
    secret : bytes
    facility : str
    patient_id : str
        The original PatientID (or, when empty, any stable study identifier).

    Returns
    -------
    str
        :data:`PSEUDONYM_HEX` lowercase hex characters.
    """
    message = b"patient\x00" + facility.encode() + b"\x00" + patient_id.strip().encode("utf-8", "replace")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def date_offset_days(secret: bytes, facility: str, patient_id: str) -> int:
    """Days every date of one patient is moved back: :data:`MIN_SHIFT_DAYS` .. :data:`MAX_SHIFT_DAYS`.

    Parameters
    ----------
    secret : bytes
        The facility's secret.
    facility : str
    patient_id : str
        The original PatientID (or the same fallback :func:`deidentify` uses).

    Returns
    -------
    int
        The same for every study of the patient at the facility; unrelated
        under another secret or facility.
    """
    message = b"dateshift\x00" + facility.encode() + b"\x00" + patient_id.strip().encode("utf-8", "replace")
    value = int.from_bytes(hmac.new(secret, message, hashlib.sha256).digest()[:8], "big")
    return MIN_SHIFT_DAYS + value % (MAX_SHIFT_DAYS - MIN_SHIFT_DAYS + 1)


def _is_registered_uid(value: str) -> bool:
    """A DICOM-defined UID (SOP class, transfer syntax, coding scheme...) identifies no one."""
    return value in UID_dictionary


def table_action(tag: int) -> str | None:
    """The Table E.1-1 action code of a tag (``"X"``, ``"Z/D"`` ...), or None when the table does not list it.

    Parameters
    ----------
    tag : int
        ``(group << 16) | element``.

    Returns
    -------
    str or None
    """
    code = ACTIONS.get(tag)
    if code is not None:
        return code
    group, element = tag >> 16, tag & 0xFFFF
    for g, e, gm, em, masked_code in MASKED_ACTIONS:
        if group & gm == g & gm and element & em == e & em:
            return masked_code
    return None


def _operation(tag: BaseTag, vr: str, depth: int) -> int:
    """Resolve the table (or the safety net) to one operation for this element."""
    t = int(tag)
    if t in _WRITTEN:
        return _KEEP
    code = table_action(t)
    is_date = vr in ("DA", "DT")
    if t in _PATIENT_IDENTITY and code is not None:
        return _PSEUDONYM if depth == 0 else _REMOVE
    if code is None:
        if not dictionary_has_tag(tag):
            return _REMOVE
        if tag.group in _REMOVE_GROUPS and t not in _KEEP_IN_REMOVED_GROUPS:
            return _REMOVE
        if vr == "UI":
            return _UID
        if vr == "PN" or vr in _FREE_TEXT_VRS or vr == "TM":
            return _REMOVE
        if is_date:
            return _SHIFT
        return _WALK if vr == "SQ" else _KEEP
    if code == "X":
        return _REMOVE
    if code == "U" or (vr == "UI" and code in ("D", "Z/D", "X/Z/U*")):
        return _UID
    if code == "X/Z/U*":
        return _WALK if vr == "SQ" else _REMOVE
    if is_date:
        return _EMPTY if t == _BIRTH_DATE else _SHIFT
    if code in ("Z", "Z/D"):
        return _EMPTY
    if code == "D":
        return _TIME_DUMMY if vr == "TM" else _DUMMY
    return _REMOVE  # X/Z, X/D, X/Z/D: every such attribute is type 3 in the CT image IOD


def _dummy(vr: str) -> Any:
    if vr in _TEXT_VRS or vr == "UR":
        return DUMMY_TEXT if vr != "UR" else ""
    if vr in _NUMBER_STRING_VRS:
        return "0"
    if vr in _BINARY_NUMBER_VRS:
        return 0
    if vr == "AS":
        return "000D"
    if vr == "SQ":
        return DicomSequence()
    return b"" if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN") else ""


def _empty(vr: str) -> Any:
    if vr == "SQ":
        return DicomSequence()
    if vr in _BINARY_NUMBER_VRS or vr == "AT":
        return None
    return b"" if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN") else ""


def shift_date(value: str, days: int) -> str:
    """Move a DA (``YYYYMMDD``) or DT value ``days`` back; return its date part, or ``""``.

    Parameters
    ----------
    value : str
        A DA or DT value. DT keeps only its shifted date (times are dropped);
        anything shorter than a full date, malformed, or out of range gives ``""``.
    days : int

    Returns
    -------
    str
    """
    text = str(value).strip()
    if len(text) < 8 or not text[:8].isdigit():
        return ""
    try:
        day = _dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])) - _dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def _map_values(value: Any, fn: Callable[[str], str]) -> Any:
    if value is None or value == "":
        return value
    if isinstance(value, (list, tuple, MultiValue)):
        return [fn(str(v)) for v in value]
    return fn(str(value))


class _Context:
    def __init__(self, secret: bytes, facility: str, patient: str, shift_days: int) -> None:
        self.secret = secret
        self.facility = facility
        self.pseudonym = patient
        self.shift_days = shift_days
        self._uids: dict[str, str] = {}

    def uid(self, value: str) -> str:
        text = value.strip().rstrip("\x00").strip()
        if not text or _is_registered_uid(text):
            return text
        if text not in self._uids:
            self._uids[text] = uid_for(self.secret, self.facility, text)
        return self._uids[text]

    def date(self, value: str) -> str:
        return shift_date(value, self.shift_days)


def _is_overlay_or_curve(tag: BaseTag) -> bool:
    """Whole repeating groups 50xx (curves) and 60xx (overlays): the table lists only some of
    their elements, but the rest (rows, origin, labels) describe graphics that may hold text."""
    return 0x5000 <= tag.group <= 0x50FF or 0x6000 <= tag.group <= 0x60FF


def _walk(ds: Dataset, ctx: _Context, depth: int = 0) -> None:
    for raw_tag in list(ds.keys()):
        tag = Tag(raw_tag)
        # Decide on the tag first: private elements are dropped without
        # converting their value (some do not convert at all).
        if tag.is_private or tag.element == 0 or _is_overlay_or_curve(tag):
            del ds[tag]
            continue
        try:
            elem = ds[tag]
        except Exception:  # a value that does not convert cannot be judged: remove it
            del ds[tag]
            continue
        vr = elem.VR
        op = _operation(tag, vr, depth)
        if op == _REMOVE:
            del ds[tag]
        elif op == _KEEP:
            continue
        elif op == _EMPTY:
            _set(ds, tag, vr, _empty(vr))
        elif op == _DUMMY:
            _set(ds, tag, vr, _dummy(vr))
        elif op == _TIME_DUMMY:
            _set(ds, tag, vr, "000000")
        elif op == _PSEUDONYM:
            _set(ds, tag, vr, ctx.pseudonym)
        elif op == _UID:
            if vr != "UI":
                del ds[tag]  # a UID rule on a non-UI element (a VR quirk): nothing to map, remove
            else:
                elem.value = _map_values(elem.value, ctx.uid)
        elif op == _SHIFT:
            shifted = _map_values(elem.value, ctx.date)
            if isinstance(shifted, list):
                shifted = [v for v in shifted if v] or ""
            _set(ds, tag, vr, shifted)
        elif op == _WALK:
            if elem.value is not None:
                for item in elem.value:
                    _walk(item, ctx, depth + 1)


def _set(ds: Dataset, tag: BaseTag, vr: str, value: Any) -> None:
    # A fresh element: the old one may have been read as UN or with a raw value.
    ds[tag] = DataElement(tag, vr, value)


def _patient_key(ds: Dataset) -> str:
    """The original PatientID; without one, the study is the finest identity we can keep stable."""
    try:
        pid = str(ds.get("PatientID", "") or "").strip()
        study = str(ds.get("StudyInstanceUID", "") or "").strip()
    except Exception:
        pid, study = "", ""
    return pid or "study:" + study


PSEUDONYM_GIVEN_NAME = "ANON"


def deidentify(ds: Dataset, secret: bytes, *, facility: str) -> Dataset:
    """Return a de-identified copy of one data set (the input is not modified).

    Applies PS3.15 Table E.1-1 with the Modified Dates option as described in
    the module docstring, at every sequence depth; removes every private
    element; replaces UIDs with :func:`uid_for`; writes PatientIdentityRemoved
    ``YES``, DeidentificationMethod, DeidentificationMethodCodeSequence and
    LongitudinalTemporalInformationModified ``MODIFIED``; rebuilds the file
    meta. Pixel data, geometry, rescale, kernel, modality and ImageType are
    untouched. Pure and deterministic: the same input and secret give a
    byte-identical output.

    Parameters
    ----------
    ds : pydicom.Dataset
        One instance, e.g. from :func:`ctfleet.intake.reading.read_dataset`.
    secret : bytes
        The facility's secret; the same secret gives the same UIDs, pseudonyms
        and date shift, a different one gives unrelated ones.
    facility : str
        The facility id, part of the pseudonym and of the date shift.

    Returns
    -------
    pydicom.Dataset
        A new data set with a rebuilt file meta.

    Raises
    ------
    ValueError
        When ``secret`` is empty.

    Notes
    -----
    Burned-in text in the pixels is not removed here: callers reject such
    series first with :func:`ctfleet.intake.pixels.check_series`.
    """
    if not secret:
        raise ValueError("secret must not be empty")
    out = copy.deepcopy(ds)
    key = _patient_key(ds)
    ctx = _Context(secret, facility, patient_pseudonym(secret, facility, key), date_offset_days(secret, facility, key))

    _walk(out, ctx)
    if "FrameOfReferenceUID" in out and not str(out.FrameOfReferenceUID or "").strip():
        # Type 1, empty at the source: one UID per series, as a frame of reference would be.
        out.FrameOfReferenceUID = ctx.uid(f"frame-of-reference-of:{ds.get('SeriesInstanceUID', '')}")

    out.PatientName = f"{ctx.pseudonym}^{PSEUDONYM_GIVEN_NAME}"
    out.PatientID = ctx.pseudonym
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = METHOD
    out.DeidentificationMethodCodeSequence = _method_code_sequence()
    out.LongitudinalTemporalInformationModified = "MODIFIED"

    out.file_meta = _file_meta(ds, out, ctx)
    return out


def _method_code_sequence() -> DicomSequence:
    """DeidentificationMethodCodeSequence: one DCM code item per entry of :data:`METHOD_CODES`."""
    items = []
    for value, meaning in METHOD_CODES:
        code = Dataset()
        code.CodeValue = value
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = meaning
        items.append(code)
    return DicomSequence(items)


def _file_meta(original: Dataset, out: Dataset, ctx: _Context) -> FileMetaDataset:
    """A new file meta: nothing of the original's but its SOP class and transfer syntax."""
    meta = FileMetaDataset()
    old = getattr(original, "file_meta", None)
    meta.FileMetaInformationVersion = b"\x00\x01"
    sop_class = out.get("SOPClassUID") or (old.get("MediaStorageSOPClassUID") if old is not None else None)
    if sop_class:
        meta.MediaStorageSOPClassUID = UID(str(sop_class))
    sop_instance = out.get("SOPInstanceUID")  # already replaced by the walk
    if sop_instance:
        meta.MediaStorageSOPInstanceUID = UID(str(sop_instance))
    elif old is not None and old.get("MediaStorageSOPInstanceUID"):
        meta.MediaStorageSOPInstanceUID = UID(ctx.uid(str(old.MediaStorageSOPInstanceUID)))
    if old is not None and old.get("TransferSyntaxUID"):
        meta.TransferSyntaxUID = UID(str(old.TransferSyntaxUID))
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


__all__ = [
    "ACTIONS",
    "MASKED_ACTIONS",
    "MAX_SHIFT_DAYS",
    "METHOD",
    "METHOD_CODES",
    "MIN_SHIFT_DAYS",
    "PSEUDONYM_HEX",
    "date_offset_days",
    "deidentify",
    "patient_pseudonym",
    "shift_date",
    "table_action",
    "uid_for",
]
