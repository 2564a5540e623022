"""De-identification: a first, basic subset of the DICOM PS3.15 Annex E profile.

Shape of the design, so the full Basic Application Level Confidentiality
Profile (Table E.1-1) can replace the table without touching the walk:

- :data:`ACTIONS` maps a tag to one PS3.15 action code: ``X`` remove,
  ``Z`` replace with an empty value, ``D`` replace with a dummy (here: the
  facility pseudonym), ``U`` replace a UID consistently, ``K`` keep.
- :func:`_action_for` resolves an element in order: private tags (X), the
  repeating overlay/curve groups 50xx/60xx (X), the table, whole groups that
  only hold identity or workflow data (X), then a rule by VR: every UID that
  is not a registered DICOM UID (SOP classes, transfer syntaxes) is replaced,
  every person name, date, time and free text is removed or emptied.
- The walk recurses into every sequence item and rebuilds the file meta from
  an allow-list.

Everything geometry, pixels and analysis need is kept: Modality, ImageType,
SOP class, Rows/Columns, pixel module, rescale, orientation, position,
spacing, thickness, kernel, KVP, manufacturer and model.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from collections.abc import Callable

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, UID_dictionary

METHOD = "ctfleet basic de-identification v1 (PS3.15 E.1 subset)"
"""Written to DeidentificationMethod; bump the version when the rules change."""

PSEUDONYM_HEX = 16
"""Length of the patient pseudonym (64 bits): unique enough per facility, short enough for PN/LO."""

_TYPE2_DATES = frozenset({"StudyDate", "StudyTime", "ContentDate", "ContentTime"})
"""Type 2 in the CT Image IOD: must be present, so they are emptied instead of removed."""


def _tags(*keywords: str) -> frozenset[int]:
    tags = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:  # a typo here would silently keep PHI: fail at import
            raise KeyError(f"unknown DICOM keyword {keyword!r}")
        tags.add(int(tag))
    return frozenset(tags)


# The subset of PS3.15 Table E.1-1 this version implements, by action.
_REMOVE = _tags(
    # patient
    "PatientAge", "PatientAddress", "PatientTelephoneNumbers", "OtherPatientIDs", "OtherPatientNames",
    "OtherPatientIDsSequence", "PatientBirthName", "PatientMotherBirthName", "MedicalRecordLocator",
    "EthnicGroup", "Occupation", "AdditionalPatientHistory", "PatientComments", "PatientBirthTime",
    "PatientSize", "PatientWeight", "MilitaryRank", "BranchOfService", "PatientReligiousPreference",
    "CountryOfResidence", "RegionOfResidence", "IssuerOfPatientID", "ReferencedPatientSequence",
    "PregnancyStatus", "SmokingStatus", "PatientInsurancePlanCodeSequence",
    # institution, people, equipment
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionCodeSequence",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "ReferringPhysicianIdentificationSequence",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence", "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "OperatorsName", "OperatorIdentificationSequence",
    "RequestingPhysician", "StationName", "DeviceSerialNumber", "DetectorID", "GantryID", "PlateID",
    "CassetteID", "SoftwareVersions", "InstitutionalDepartmentTypeCodeSequence",
    # descriptions and workflow
    "StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments", "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence", "DerivationDescription", "RequestAttributesSequence",
    "ReferencedPerformedProcedureStepSequence", "ReferencedStudySequence", "ProcedureCodeSequence",
    "PerformedProcedureStepID", "PerformedProcedureStepDescription", "RequestedProcedureID",
    "RequestedProcedureDescription", "ScheduledProcedureStepID", "AdmissionID", "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest", "TextComments", "TextString", "IconImageSequence",
    "AcquisitionComments", "FrameComments", "ContentCreatorName", "VerifyingObserverName",
    "PersonName", "ReviewerName",
)
_EMPTY = _tags(
    "AccessionNumber", "StudyID", "ReferringPhysicianName", "PatientBirthDate", "PatientSex",
)
_DUMMY = _tags("PatientName", "PatientID")

ACTIONS: dict[int, str] = {
    **{t: "X" for t in _REMOVE},
    **{t: "Z" for t in _EMPTY},
    **{t: "D" for t in _DUMMY},
    # Written by deidentify() itself; kept when a data set is processed twice.
    **{t: "K" for t in _tags("PatientIdentityRemoved", "DeidentificationMethod",
                             "DeidentificationMethodCodeSequence", "LongitudinalTemporalInformationModified")},
}
"""Tag -> PS3.15 action code for the attributes named explicitly."""

_REMOVE_GROUPS = frozenset({0x0010, 0x0032, 0x0038, 0x0040, 0x4008})
"""Groups that hold only patient, visit, study-workflow or result identity in CT images:
anything in them not named in :data:`ACTIONS` is removed rather than judged one by one."""
_KEEP_IN_REMOVED_GROUPS = _tags("RealWorldValueMappingSequence")

_FREE_TEXT_VRS = frozenset({"LT", "ST", "UT"})
_DATE_TIME_VRS = frozenset({"DA", "DT", "TM"})

_FILE_META_KEEP = _tags(
    "FileMetaInformationVersion", "MediaStorageSOPClassUID", "TransferSyntaxUID",
    "ImplementationClassUID", "ImplementationVersionName",
)
"""File meta elements copied as they are; MediaStorageSOPInstanceUID is replaced;
everything else (SourceApplicationEntityTitle, private information) is dropped."""


def uid_for(secret: bytes, uid: str) -> str:
    """Replacement UID: ``2.25.`` + the first 16 bytes of HMAC-SHA256(secret, uid) as a decimal integer.

    Deterministic per facility secret (the same original always maps to the
    same replacement, so series and references stay consistent across uploads)
    and at most 44 characters (within the 64 a UID may have).

    Parameters
    ----------
    secret : bytes
        The facility's secret.
    uid : str
        The original UID; trailing padding (space, NUL) is ignored.

    Returns
    -------
    str
    """
    original = str(uid).strip().rstrip("\x00").strip()
    digest = hmac.new(secret, original.encode("ascii", "replace"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def patient_pseudonym(secret: bytes, facility: str, patient_id: str) -> str:
    """Facility-scoped patient pseudonym: short hex of HMAC-SHA256(secret, facility, patient id).

    Stable for one patient within one facility (longitudinal studies link up),
    unlinkable across facilities. The ``patient\\0`` prefix separates this use
    of the secret from :func:`uid_for` and the study key.

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


def _is_registered_uid(value: str) -> bool:
    """A DICOM-defined UID (SOP class, transfer syntax, coding scheme...) identifies no one."""
    return value in UID_dictionary


def _action_for(tag: BaseTag, vr: str, keyword: str) -> str:
    if tag.is_private:
        return "X"
    group = tag.group
    if 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
        return "X"  # curves and overlays: may hold burned-in text and annotations
    action = ACTIONS.get(int(tag))
    if action is not None:
        return action
    if group in _REMOVE_GROUPS and int(tag) not in _KEEP_IN_REMOVED_GROUPS:
        return "X"
    if vr == "UI":
        return "U"
    if vr == "PN":
        return "X"
    if vr in _DATE_TIME_VRS:
        return "Z" if keyword in _TYPE2_DATES else "X"
    if vr in _FREE_TEXT_VRS:
        return "X"
    return "K"


def _walk(ds: Dataset, replace_uid: Callable[[str], str], dummy: str, depth: int = 0) -> None:
    # Decide on tags first: private elements are dropped without converting
    # their value (some do not convert at all, e.g. wrong-length private FD).
    for tag in list(ds.keys()):
        tag = Tag(tag)
        if tag.is_private or (0x5000 <= tag.group <= 0x50FF) or (0x6000 <= tag.group <= 0x60FF):
            del ds[tag]
            continue
        try:
            elem = ds[tag]
        except Exception:
            # Cannot be interpreted, so cannot be judged: remove.
            del ds[tag]
            continue
        action = _action_for(tag, elem.VR, elem.keyword)
        if action == "D" and depth > 0:
            # A name or id inside an item may be someone else's (a referenced
            # patient); the pseudonym belongs to this data set's patient only.
            action = "X"
        if action == "X":
            del ds[tag]
        elif action == "Z":
            elem.value = "" if elem.VR != "SQ" else DicomSequence()
        elif action == "D":
            elem.value = dummy
        elif action == "U":
            elem.value = _replace_uids(elem.value, replace_uid)
        elif elem.VR == "SQ" and elem.value is not None:
            for item in elem.value:
                _walk(item, replace_uid, dummy, depth + 1)


def _replace_uids(value: object, replace_uid: Callable[[str], str]) -> object:
    if value is None or value == "":
        return value
    if isinstance(value, (list, tuple, MultiValue)):
        return [_replace_uids(v, replace_uid) for v in value]
    text = str(value)
    if _is_registered_uid(text):
        return value
    return replace_uid(text)


def deidentify(ds: Dataset, secret: bytes, *, facility: str) -> Dataset:
    """Return a de-identified copy of one data set (the input is not modified).

    Removes private tags, overlays and curves, identity, institution, people,
    workflow and free-text attributes, at every sequence depth; empties the
    type-2 ones; removes dates and times (StudyDate/Time and ContentDate/Time
    are emptied); replaces every non-registered UID with :func:`uid_for`,
    including references and the file meta's MediaStorageSOPInstanceUID;
    sets PatientName and PatientID to :func:`patient_pseudonym`,
    PatientIdentityRemoved ``YES`` and DeidentificationMethod. Pixel data,
    geometry, rescale, kernel, modality and ImageType are untouched.

    Parameters
    ----------
    ds : pydicom.Dataset
        One instance, e.g. from :func:`ctfleet.dicom.read_dataset`.
    secret : bytes
        The facility's secret; the same secret gives the same UIDs and
        pseudonyms, a different one gives unrelated ones.
    facility : str
        The facility id, part of the pseudonym.

    Returns
    -------
    pydicom.Dataset
        A new data set with a rebuilt file meta.

    Notes
    -----
    A subset of PS3.15 Annex E Table E.1-1. Not yet handled: burned-in
    annotation in pixels (BurnedInAnnotation is not checked), date shifting
    (dates are removed instead: the Retain Longitudinal option), the Retain
    Patient Characteristics option (sex, age, size and weight are removed or
    emptied), a safe-private allow-list.
    """
    if not secret:
        raise ValueError("secret must not be empty")
    out = copy.deepcopy(ds)
    cache: dict[str, str] = {}

    def replace_uid(uid: str) -> str:
        if uid not in cache:
            cache[uid] = uid_for(secret, uid)
        return cache[uid]

    original_pid = str(ds.get("PatientID", "") or "").strip()
    # Without a PatientID, the study is the finest identity we can keep stable.
    key = original_pid or "study:" + str(ds.get("StudyInstanceUID", "") or "").strip()
    dummy = patient_pseudonym(secret, facility, key)

    _walk(out, replace_uid, dummy)

    out.PatientName = dummy
    out.PatientID = dummy
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    out.DeidentificationMethodCodeSequence = DicomSequence([code])
    # Dates removed rather than shifted: say so, as PS3.15 asks.
    out.LongitudinalTemporalInformationModified = "REMOVED"

    meta = FileMetaDataset()
    old_meta = getattr(ds, "file_meta", None)
    if old_meta is not None:
        for tag in _FILE_META_KEEP:
            if tag in old_meta:
                meta[tag] = copy.deepcopy(old_meta[tag])
    sop_instance = out.get("SOPInstanceUID")  # already replaced by the walk
    if sop_instance:
        meta.MediaStorageSOPInstanceUID = UID(str(sop_instance))
    elif old_meta is not None and old_meta.get("MediaStorageSOPInstanceUID"):
        meta.MediaStorageSOPInstanceUID = UID(replace_uid(str(old_meta.MediaStorageSOPInstanceUID)))
    if "SOPClassUID" in out and "MediaStorageSOPClassUID" not in meta:
        meta.MediaStorageSOPClassUID = out.SOPClassUID
    out.file_meta = meta
    return out


__all__ = ["ACTIONS", "METHOD", "PSEUDONYM_HEX", "deidentify", "patient_pseudonym", "uid_for"]
