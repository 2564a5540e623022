"""ctfleet.deid: PHI planted everywhere is gone from the output bytes; UIDs, pixels, geometry behave."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from ctfleet.deid import METHOD, deidentify, patient_pseudonym, uid_for
from ctfleet.dicom import (
    choose_series,
    dataset_to_bytes,
    group_series,
    read_dataset,
    series_to_datasets,
    volume_from_series,
)

SECRET = b"s" * 32
OTHER_SECRET = b"t" * 32
FACILITY = "north-general"
SPACING = (2.0, 0.8, 0.8)

# Each planted value is unique, so finding it in the output names the leak.
PHI = {
    "PatientName": "Doe^Jane^PHINAME",
    "PatientID": "PHI-PID-4711",
    "PatientBirthDate": "19450203",
    "PatientAddress": "PHI 1 Main Street",
    "PatientAge": "079Y",
    "OtherPatientIDs": "PHI-OTHERID",
    "PatientComments": "PHI patient comment",
    "InstitutionName": "PHI St Elsewhere",
    "InstitutionAddress": "PHI 2 Hospital Road",
    "InstitutionalDepartmentName": "PHI Radiology Dept",
    "ReferringPhysicianName": "PHIReferrer^Ann",
    "PerformingPhysicianName": "PHIPerformer^Bob",
    "OperatorsName": "PHIOperator^Cy",
    "AccessionNumber": "PHIACC123",
    "StationName": "PHISTATION",
    "StudyID": "PHISTUDYID",
    "StudyDescription": "PHI chest for Jane",
    "SeriesDescription": "PHI series desc",
    "ProtocolName": "PHI protocol",
    "DeviceSerialNumber": "PHISERIAL99",
    "ImageComments": "PHI image comment",
    "AcquisitionDateTime": "20240102030405",
    "StudyTime": "134501",
    "AcquisitionDate": "20240102",
}
STUDY_UID = "1.2.826.0.1.999.1"
SERIES_UID = "1.2.826.0.1.999.2"


def _hu(shape: tuple[int, int, int] = (4, 6, 5)) -> np.ndarray:
    return np.random.default_rng(0).integers(-1024, 1500, shape).astype(np.float32)


def _planted() -> list[Dataset]:
    datasets = series_to_datasets(
        _hu(),
        SPACING,
        study_instance_uid=STUDY_UID,
        series_instance_uid=SERIES_UID,
        patient_name=PHI["PatientName"],
        patient_id=PHI["PatientID"],
        study_date="20240101",
        transfer_syntax=ImplicitVRLittleEndian,
        extra={k: v for k, v in PHI.items() if k not in ("PatientName", "PatientID")},
    )
    for ds in datasets:
        # nested: a referenced image (UIDs), a request with names and ids, two levels deep
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ref.ReferencedSOPInstanceUID = "1.2.826.0.1.999.77"
        ds.ReferencedImageSequence = Sequence([ref])
        inner = Dataset()
        inner.PersonName = "PHINested^Deep"
        inner.CodeMeaning = "harmless"
        item = Dataset()
        item.RequestingPhysician = "PHIRequester^Dee"
        item.AccessionNumber = "PHIACCNESTED"
        item.ContentSequence = Sequence([inner])
        source = Dataset()
        source.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        source.ReferencedSOPInstanceUID = "1.2.826.0.1.999.78"
        source.PatientName = "PHISourceName^X"
        ds.SourceImageSequence = Sequence([source])
        ds.RequestAttributesSequence = Sequence([item])
        # private block, including a nested private sequence
        block = ds.private_block(0x0029, "PHIVENDOR", create=True)
        block.add_new(0x10, "LO", "PHI-PRIVATE-VALUE")
        private_item = Dataset()
        private_item.PatientName = "PHIPrivateSeq^Z"
        block.add_new(0x11, "SQ", Sequence([private_item]))
        # the real CT's quirk: a private value that does not fit its dictionary VR
        ds.add_new(0x01F10010, "LO", "ELSCINT1")
        ds.add_new(0x01F11026, "UN", b"0.15")
        # an overlay
        ds.add_new(0x60000010, "US", 6)
        ds.add_new(0x60000022, "LO", "PHI overlay description")
        # file meta
        ds.file_meta.SourceApplicationEntityTitle = "PHIAETITLE"
    return datasets


def _plain_strings() -> list[bytes]:
    values = [*PHI.values(), "PHINested", "PHIRequester", "PHIACCNESTED", "PHISourceName", "PHIVENDOR",
              "PHI-PRIVATE-VALUE", "PHIPrivateSeq", "PHI overlay", "PHIAETITLE", "Jane", "19450203",
              STUDY_UID, SERIES_UID, "1.2.826.0.1.999.77", "1.2.826.0.1.999.78", "20240101", "20240102"]
    return [v.encode() for v in values]


def test_planted_phi_is_absent_from_output_bytes() -> None:
    for original in _planted():
        data = dataset_to_bytes(original)
        originals_uids = [original.SOPInstanceUID, original.FrameOfReferenceUID]
        assert b"PHI" in data  # the plant worked
        out = read_dataset(data, "in.dcm")
        clean_bytes = dataset_to_bytes(deidentify(out, SECRET, facility=FACILITY))
        # Replacement UIDs are long decimals that could contain a planted digit
        # string by chance; they are checked on their own in the UID tests.
        clean = re.sub(rb"2\.25\.\d+", b"", clean_bytes)
        for needle in _plain_strings() + [u.encode() for u in originals_uids]:
            assert needle not in clean, needle
        assert b"PHI" not in clean
        assert not re.search(rb"(19|20)\d\d[01]\d[0-3]\d", clean), "a date survived"
        parsed = read_dataset(clean_bytes)
        assert all(not elem.value for elem in parsed.iterall() if elem.VR in ("DA", "DT", "TM"))


def test_kept_attributes_and_markers() -> None:
    original = read_dataset(dataset_to_bytes(_planted()[0]))
    out = deidentify(original, SECRET, facility=FACILITY)
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethod == METHOD
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    pseudonym = patient_pseudonym(SECRET, FACILITY, PHI["PatientID"])
    assert str(out.PatientName) == out.PatientID == pseudonym
    assert re.fullmatch(r"[0-9a-f]{16}", pseudonym)
    for keyword in ("Modality", "ImageType", "SOPClassUID", "Rows", "Columns", "PixelSpacing",
                    "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness", "RescaleSlope",
                    "RescaleIntercept", "ConvolutionKernel", "BitsStored", "PixelRepresentation", "KVP"):
        assert out[keyword].value == original[keyword].value, keyword
    assert out.PixelData == original.PixelData
    for keyword in ("AccessionNumber", "StudyID", "ReferringPhysicianName", "PatientBirthDate", "StudyDate"):
        assert keyword in out and out[keyword].value in ("", None), keyword  # type 2: present, empty
    assert "PatientAge" not in out and "InstitutionName" not in out and "StudyDescription" not in out
    assert "RequestAttributesSequence" not in out
    # registered UIDs (SOP classes) are kept, instance references replaced
    ref = out.ReferencedImageSequence[0]
    assert ref.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ref.ReferencedSOPInstanceUID == uid_for(SECRET, "1.2.826.0.1.999.77")
    assert "PatientName" not in out.SourceImageSequence[0]
    assert not any(elem.tag.is_private for elem in out.iterall())
    assert not any(0x6000 <= elem.tag.group <= 0x60FF for elem in out)
    # the input is untouched
    assert original.PatientID == PHI["PatientID"] and original.StudyInstanceUID == STUDY_UID


def test_uid_for_is_deterministic_bounded_and_secret_scoped() -> None:
    uid = uid_for(SECRET, STUDY_UID)
    assert uid == uid_for(SECRET, STUDY_UID + " ")  # padding is not part of the UID
    assert uid != uid_for(OTHER_SECRET, STUDY_UID)
    assert uid.startswith("2.25.") and len(uid) <= 64 and re.fullmatch(r"2\.25\.[1-9]\d*", uid)
    expected = int.from_bytes(hmac.new(SECRET, STUDY_UID.encode(), hashlib.sha256).digest()[:16], "big")
    assert uid == f"2.25.{expected}"


def test_uids_consistent_across_a_series_and_per_secret() -> None:
    originals = [read_dataset(dataset_to_bytes(d)) for d in _planted()]
    a = [deidentify(d, SECRET, facility=FACILITY) for d in originals]
    b = [deidentify(d, SECRET, facility=FACILITY) for d in originals]
    c = [deidentify(d, OTHER_SECRET, facility=FACILITY) for d in originals]
    for x, y, z, o in zip(a, b, c, originals):
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            assert x[keyword].value == y[keyword].value == uid_for(SECRET, o[keyword].value)
            assert x[keyword].value != z[keyword].value
        assert x.file_meta.MediaStorageSOPInstanceUID == x.SOPInstanceUID
        assert x.file_meta.MediaStorageSOPClassUID == o.file_meta.MediaStorageSOPClassUID
        assert "SourceApplicationEntityTitle" not in x.file_meta
    assert len({x.StudyInstanceUID for x in a}) == 1 and len({x.SOPInstanceUID for x in a}) == len(a)
    assert patient_pseudonym(SECRET, FACILITY, "p") != patient_pseudonym(SECRET, "other-facility", "p")


def test_deidentified_series_still_builds_the_same_volume() -> None:
    originals = [read_dataset(dataset_to_bytes(d)) for d in _planted()]
    clean = [read_dataset(dataset_to_bytes(deidentify(d, SECRET, facility=FACILITY))) for d in originals]
    before, after = volume_from_series(originals), volume_from_series(choose_series(group_series(clean)))
    np.testing.assert_array_equal(before.hu, after.hu)
    np.testing.assert_array_equal(before.affine, after.affine)


def test_deidentify_rejects_empty_secret() -> None:
    with pytest.raises(ValueError):
        deidentify(_planted()[0], b"", facility=FACILITY)


def test_real_ct_deidentified_pixels_identical(real_ct_dir: Path) -> None:
    files = sorted(real_ct_dir.glob("*.dcm"))
    for path in files[:: max(1, len(files) // 12)] + [files[-1]]:
        original = read_dataset(path.read_bytes(), path.name)
        clean_bytes = dataset_to_bytes(deidentify(original, SECRET, facility=FACILITY))
        clean = read_dataset(clean_bytes, path.name)
        np.testing.assert_array_equal(clean.pixel_array, original.pixel_array)
        assert clean.PixelData == original.PixelData
        for uid in (original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID):
            assert str(uid).encode() not in clean_bytes
        assert b"ELSCINT1" not in clean_bytes  # private blocks gone
        assert not any(elem.tag.is_private for elem in clean.iterall())


def test_real_ct_deidentify_straight_from_dcmread(real_ct_dir: Path) -> None:
    # Callers that bypass read_dataset still must not trip over the wrong-length private tag.
    path = sorted(real_ct_dir.glob("*.dcm"))[0]
    original = pydicom.dcmread(path)
    clean = read_dataset(dataset_to_bytes(deidentify(original, SECRET, facility=FACILITY)))
    assert clean.PixelData == original.PixelData
