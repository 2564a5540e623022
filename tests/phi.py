"""A DICOM corpus with PHI planted everywhere PS3.15 Annex E looks, for leak tests.

:func:`phi_corpus` writes one synthetic chest CT series (the phantom, through
:func:`ctfleet.dev.synthetic.series_to_datasets`) whose headers carry a distinct,
long, unmistakable value in:

- at least one attribute of every Table E.1-1 action category (``D``, ``Z``,
  ``X``, ``U``, ``Z/D``, ``X/Z``, ``X/D``, ``X/Z/D``, ``X/Z/U*``) and its masked
  repeating groups (overlay ``60xx``, curve ``50xx``), and all the usual
  suspects: names, IDs, addresses, phone numbers, dates, times, UIDs,
  institution, physicians, operators, device serial, accession number, study
  and series descriptions, comments, other patient IDs, ethnic group,
  occupation ...;
- attributes the table does not list but the safety net must catch (a PN, a
  DA, a DT, a TM, a free text);
- sequences two levels deep, listed and unlisted ones;
- private elements, a private creator and a private sequence;
- the file meta (Source/Sending/Receiving AE titles, private information);
- optionally the file names (a folder named after the patient).

Every planted DA/DT lies in one year (1987) and :mod:`ctfleet.intake.deid` shifts dates
back by at least 365 days, so a shifted date can never equal a planted one:
no planted value may appear verbatim in any de-identified output. Times carry
six-digit fractions so they cannot occur by chance inside a ``2.25.`` UID.
Short values that could occur by chance (PatientAge, PatientSex) are planted
but not listed.

Import it from tests as ``from phi import phi_corpus`` (``tests/unit/conftest.py``
puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from ctfleet.dev.phantom import chest_phantom
from ctfleet.dev.synthetic import series_to_datasets
from ctfleet.intake import dataset_to_bytes

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

# Attributes planted at the top level of every slice, by Table E.1-1 category
# (the category is what the 2026c table says; tests check it stays so).
TOP_LEVEL: dict[str, tuple[str, ...]] = {
    "Z": ("AccessionNumber", "StudyID", "ReferringPhysicianName", "PatientName", "PatientBirthDate", "StudyDate",
          "StudyTime", "ConsultingPhysicianName", "FillerOrderNumberImagingServiceRequest",
          "PlacerOrderNumberImagingServiceRequest"),
    "D": ("AcquisitionFieldOfViewLabel",),
    "X": ("PatientAddress", "PatientTelephoneNumbers", "PatientTelecomInformation", "OtherPatientIDs",
          "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "EthnicGroup", "Occupation",
          "AdditionalPatientHistory", "PatientComments", "MedicalRecordLocator", "MilitaryRank", "BranchOfService",
          "CountryOfResidence", "RegionOfResidence", "PatientReligiousPreference", "PatientBirthTime",
          "PatientSize", "PatientWeight", "IssuerOfPatientID", "ResponsiblePerson", "InstitutionAddress",
          "InstitutionalDepartmentName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
          "PhysiciansOfRecord", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "RequestingPhysician",
          "StudyDescription", "SeriesDescription", "ImageComments", "AdmittingDiagnosesDescription", "AdmissionID",
          "PerformedProcedureStepID", "PerformedProcedureStepDescription", "PerformedProcedureStepStartDate",
          "PerformedProcedureStepStartTime", "RequestedProcedureID", "StudyComments", "DerivationDescription",
          "GantryID", "DateOfLastCalibration", "TimeOfLastCalibration", "RequestingService",
          "AcquisitionComments", "PatientState", "MedicalAlerts", "Allergies"),
    "U": ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "InstanceCreatorUID", "IrradiationEventUID",
          "SynchronizationFrameOfReferenceUID"),
    "Z/D": ("PatientID", "ContentDate", "ContentTime", "ContrastBolusAgent", "ContentCreatorName"),
    "X/Z": ("AcquisitionDate", "AcquisitionTime", "RequestedProcedureDescription", "PatientSexNeutered",
            "ReviewerName"),
    "X/D": ("ProtocolName", "SeriesDate", "SeriesTime", "InstanceCreationDate", "DetectorID",
            "DateOfLastDetectorCalibration", "AcquisitionDeviceProcessingDescription"),
    "X/Z/D": ("AcquisitionDateTime", "DeviceSerialNumber", "InstanceCreationTime", "InstitutionName",
              "OperatorsName", "StationName"),
    # Not in the table: the safety net's PN, DA, DT, TM.
    "-": ("EvaluatorName", "ExpiryDate", "StudyUpdateDateTime", "TimeOfGainCalibration"),
}
SEQUENCES: dict[str, str] = {
    "ContentSequence": "D",
    "OtherPatientIDsSequence": "X",
    "RequestAttributesSequence": "X",
    "ReferencedPatientSequence": "X",
    "ReferencedStudySequence": "X/Z",
    "OperatorIdentificationSequence": "X/D",
    "InstitutionCodeSequence": "X/Z/D",
    "ReferencedPerformedProcedureStepSequence": "X/Z/D",
    "ReferencedImageSequence": "X/Z/U*",
    "SourceImageSequence": "X/Z/U*",
    "AnatomicRegionSequence": "-",
}
"""Sequences planted at the top level (category in the table, ``-`` for unlisted)."""


class _Planter:
    """Makes distinct values per VR and remembers the ones tests must search for."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.n = 0
        self.planted: list[bytes] = []
        self._day = 0

    def _next(self) -> int:
        self.n += 1
        return self.n

    def value(self, keyword: str, vr: str | None = None) -> Any:
        vr = vr or dictionary_VR(keyword)
        n = self._next()
        p = self.prefix
        if vr == "PN":
            v = f"{p}{n:03d}^{keyword[:24]}^Given{n:03d}"
        elif vr in ("SH", "AE"):
            v = f"{p}{n:03d}{keyword}"[:16]
        elif vr == "CS":
            v = f"{p.upper()}{n:03d}{keyword.upper()}"[:16]
        elif vr in ("LO", "UC"):
            v = f"{p}{n:03d} {keyword} of Smith John"[:64]
        elif vr in ("LT", "ST", "UT"):
            v = f"{p}{n:03d} {keyword}: John Smith, 1 Elm Street, Springfield, phone 555-0{n:03d}."
        elif vr == "DA":
            v = self._date()
        elif vr == "DT":
            v = self._date() + f"{n % 24:02d}{n % 60:02d}{(7 * n) % 60:02d}.{n % 1000:03d}417"
        elif vr == "TM":
            v = f"{n % 24:02d}{(3 * n) % 60:02d}{(7 * n) % 60:02d}.{n % 1000:03d}529"
        elif vr == "UI":
            v = f"1.2.826.0.1.3680043.10.99{len(p)}.{n}.{97531 * n + 13579}.{24680 + n}"
        elif vr == "DS":
            v = f"7{n:03d}.5{n:03d}19"
        elif vr == "AS":
            return "093Y"  # too short to search for; tests check the attribute is gone
        else:
            raise ValueError(f"no planted value for VR {vr}")
        self.planted.append(v.encode("ascii"))
        return v

    def _date(self) -> str:
        # All planted dates inside 1987, each day used once: a shift of >= 365 days
        # can never land on another planted date.
        day = _dt.date(1987, 1, 1) + _dt.timedelta(days=self._day % 365)
        self._day += 1
        return day.strftime("%Y%m%d")

    def uid(self) -> str:
        return str(self.value("SOPInstanceUID", "UI"))

    def set(self, ds: Dataset, keyword: str) -> None:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise KeyError(keyword)
        vr = dictionary_VR(tag)
        if vr in ("US or SS", "OB or OW"):
            raise ValueError(keyword)
        ds[tag] = DataElement(tag, vr, self.value(keyword, vr))


def _code(p: _Planter, meaning_keyword: str = "CodeMeaning") -> Dataset:
    item = Dataset()
    item.CodeValue = "T-D3000"
    item.CodingSchemeDesignator = "SRT"
    item.CodeMeaning = p.value(meaning_keyword, "LO")
    return item


def _sequences(p: _Planter, ds: Dataset) -> None:
    # In this order: every planted value is numbered as it is drawn.
    _patient_sequences(p, ds)
    _reference_sequences(p, ds)
    _unlisted_sequences(p, ds)


def _patient_sequences(p: _Planter, ds: Dataset) -> None:
    # D: an SR-like content tree (emptied), with names, text and a date-time inside.
    content = Dataset()
    p.set(content, "PersonName")
    p.set(content, "TextValue")
    p.set(content, "DateTime")
    ds.ContentSequence = Sequence([content])
    # X, two levels: other patient ids with an issuer sequence.
    other = Dataset()
    p.set(other, "PatientID")
    p.set(other, "IssuerOfPatientID")
    issuer = Dataset()
    p.set(issuer, "LocalNamespaceEntityID")
    other.IssuerOfPatientIDQualifiersSequence = Sequence([issuer])
    ds.OtherPatientIDsSequence = Sequence([other])
    # X, two levels: a request with its own accession number, physician, a nested procedure code.
    request = Dataset()
    p.set(request, "RequestedProcedureID")
    p.set(request, "ScheduledProcedureStepID")
    p.set(request, "AccessionNumber")
    p.set(request, "RequestingPhysician")
    request.RequestedProcedureCodeSequence = Sequence([_code(p)])
    ds.RequestAttributesSequence = Sequence([request])
    ref_patient = Dataset()
    ref_patient.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.1.1"
    ref_patient.ReferencedSOPInstanceUID = p.uid()
    ds.ReferencedPatientSequence = Sequence([ref_patient])


def _reference_sequences(p: _Planter, ds: Dataset) -> None:
    # X/Z, X/Z/D: references to study and procedure step.
    for keyword in ("ReferencedStudySequence", "ReferencedPerformedProcedureStepSequence"):
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        ref.ReferencedSOPInstanceUID = p.uid()
        setattr(ds, keyword, Sequence([ref]))
    # X/D: the operator's identification, two levels.
    operator = Dataset()
    p.set(operator, "InstitutionName")
    person_code = _code(p)
    operator.PersonIdentificationCodeSequence = Sequence([person_code])
    ds.OperatorIdentificationSequence = Sequence([operator])
    ds.InstitutionCodeSequence = Sequence([_code(p)])
    # X/Z/U*: references kept, their UIDs replaced; two levels, names inside.
    ref_image = Dataset()
    ref_image.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    ref_image.ReferencedSOPInstanceUID = p.uid()
    ds.ReferencedImageSequence = Sequence([ref_image])
    source = Dataset()
    source.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    source.ReferencedSOPInstanceUID = p.uid()
    p.set(source, "PatientName")
    nested_other = Dataset()
    p.set(nested_other, "PatientID")
    p.set(nested_other, "OtherPatientNames")
    source.OtherPatientIDsSequence = Sequence([nested_other])
    deeper = Dataset()
    deeper.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    deeper.ReferencedSOPInstanceUID = p.uid()
    p.set(deeper, "OperatorsName")
    p.set(deeper, "AcquisitionDate")
    source.ReferencedImageSequence = Sequence([deeper])
    ds.SourceImageSequence = Sequence([source])


def _unlisted_sequences(p: _Planter, ds: Dataset) -> None:
    # Unlisted sequence: walked; the safety net catches PN/DA/UI/TM inside, two levels.
    region = Dataset()
    region.CodeValue = "T-D3000"
    region.CodingSchemeDesignator = "SRT"
    region.CodeMeaning = "Chest"  # benign, kept
    p.set(region, "EvaluatorName")
    p.set(region, "ExpiryDate")
    modifier = Dataset()
    modifier.CodeValue = "G-A100"
    modifier.CodingSchemeDesignator = "SRT"
    modifier.CodeMeaning = "Right"
    p.set(modifier, "TimeOfGainCalibration")
    p.set(modifier, "StationName")
    region.AnatomicRegionModifierSequence = Sequence([modifier])
    ds.AnatomicRegionSequence = Sequence([region])


def _private_and_repeating(p: _Planter, ds: Dataset) -> None:
    creator = f"{p.prefix.upper()}VENDOR PRIVATE"
    p.planted.append(creator.encode())
    block = ds.private_block(0x0029, creator, create=True)
    block.add_new(0x10, "LO", p.value("PrivateLO", "LO"))
    block.add_new(0x12, "PN", p.value("PrivatePN", "PN"))
    private_item = Dataset()
    p.set(private_item, "PatientName")
    p.set(private_item, "PatientID")
    block.add_new(0x11, "SQ", Sequence([private_item]))
    # The real scanner's quirk: a private value that does not fit its dictionary VR.
    ds.add_new(0x01F10010, "LO", "ELSCINT1")
    ds.add_new(0x01F11026, "UN", b"0.15")
    # Overlay group 6000 (masked X entries and the rest of the group) and a curve (5000).
    ds.add_new(0x60000010, "US", 16)
    ds.add_new(0x60000011, "US", 16)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60000022, "LO", p.value("OverlayDescription", "LO"))
    ds.add_new(0x60001500, "LO", p.value("OverlayLabel", "LO"))
    overlay_bits = f"{p.prefix}OVERLAYBITS{p.n:03d}".encode().ljust(32, b"#")[:32]
    p.planted.append(overlay_bits)
    ds.add_new(0x60003000, "OW", overlay_bits)
    ds.add_new(0x60004000, "LT", p.value("OverlayComments", "LT"))
    ds.add_new(0x50000022, "LO", p.value("CurveDescription", "LO"))
    curve = f"{p.prefix}CURVEDATA{p.n:03d}".encode().ljust(24, b"#")
    p.planted.append(curve)
    ds.add_new(0x50003000, "OB", curve)


def _file_meta(p: _Planter, ds: Dataset) -> None:
    meta = ds.file_meta
    for keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                    "ReceivingApplicationEntityTitle"):
        meta[keyword] = DataElement(tag_for_keyword(keyword), "AE", p.value(keyword, "AE"))
    meta.PrivateInformationCreatorUID = p.value("PrivateInformationCreatorUID", "UI")
    private = f"{p.prefix}PRIVATEINFO{p.n:03d} Smith John".encode().ljust(40, b"#")
    p.planted.append(private)
    meta.PrivateInformation = private


def _iter_slices(p: _Planter, hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> Iterator[Dataset]:
    study_uid, series_uid = p.uid(), p.uid()
    datasets = series_to_datasets(
        hu, spacing_mm, study_instance_uid=study_uid, series_instance_uid=series_uid,
        transfer_syntax=ExplicitVRLittleEndian,
    )
    # Values shared by every slice (one patient, one study) are drawn once.
    shared: dict[str, Any] = {}
    for category, keywords in TOP_LEVEL.items():
        for keyword in keywords:
            if keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
                continue
            shared[keyword] = p.value(keyword)
    for k, ds in enumerate(datasets):
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        for keyword, value in shared.items():
            tag = tag_for_keyword(keyword)
            ds[tag] = DataElement(tag, dictionary_VR(tag), value)
        ds.PatientAge = p.value("PatientAge", "AS")
        ds.PatientSex = "F"
        ds.SOPInstanceUID = p.uid()  # per slice
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        _sequences(p, ds)
        _private_and_repeating(p, ds)
        _file_meta(p, ds)
        yield ds


def phi_corpus(
    shape: tuple[int, int, int] = (12, 64, 64),
    spacing_mm: tuple[float, float, float] = (2.5, 5.0, 5.0),
    *,
    prefix: str = "Zqphi",
    names_with_phi: bool = True,
    seed: int = 0,
) -> tuple[list[tuple[str, bytes]], list[bytes]]:
    """One CT series (phantom pixels) with PHI planted in every place Annex E covers.

    Parameters
    ----------
    shape : tuple of int
        ``(Z, Y, X)`` of the phantom.
    spacing_mm : tuple of float
        ``(z, y, x)`` voxel size in mm.
    prefix : str
        Start of every planted text value (letters only); use different
        prefixes for corpora that must not share values.
    names_with_phi : bool
        Put the files in a folder named after the patient (a planted value),
        as hospital exports often do.
    seed : int
        Phantom seed.

    Returns
    -------
    files : list of (str, bytes)
        Relative file name and Part 10 bytes, one per slice; a valid CT series
        that :func:`ctfleet.intake.choice.choose_series` accepts and whose pixels pass
        :func:`ctfleet.intake.pixels.check_series`.
    planted : list of bytes
        Every planted value that must not appear in any de-identified output,
        distinct, each at least 8 bytes long.
    """
    if not prefix.isalpha():
        raise ValueError("prefix must be letters only")
    p = _Planter(prefix)
    hu = chest_phantom(shape, spacing_mm, seed=seed).hu
    folder = f"{prefix}000 Smith_John MRN{len(prefix)}4711" if names_with_phi else "series"
    if names_with_phi:
        p.planted.append(folder.encode())
    files = [(f"{folder}/IM{k:04d}.dcm", dataset_to_bytes(ds)) for k, ds in enumerate(_iter_slices(p, hu, spacing_mm))]
    planted = sorted(set(p.planted))
    assert all(len(v) >= 8 for v in planted)
    return files, planted


__all__ = ["SEQUENCES", "TOP_LEVEL", "phi_corpus"]
