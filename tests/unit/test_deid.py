"""ctfleet.intake.deid: PS3.15 Table E.1-1 with modified dates; PHI planted everywhere is gone from the output bytes."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from phi import SEQUENCES, TOP_LEVEL, phi_corpus
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from ctfleet.intake.deid import (
    ACTIONS,
    MASKED_ACTIONS,
    MAX_SHIFT_DAYS,
    METHOD,
    MIN_SHIFT_DAYS,
    date_offset_days,
    deidentify,
    patient_pseudonym,
    shift_date,
    table_action,
    uid_for,
)
from ctfleet.dev.synthetic import series_to_datasets
from ctfleet.intake import choose_series, dataset_to_bytes, group_series, read_dataset, volume_from_series

SECRET = b"s" * 32
OTHER_SECRET = b"t" * 32
FACILITY = "north-general"


@lru_cache(maxsize=1)
def _corpus() -> tuple[tuple[tuple[str, bytes], ...], tuple[bytes, ...]]:
    files, planted = phi_corpus()
    return tuple(files), tuple(planted)


def _originals() -> list[Dataset]:
    files, _ = _corpus()
    return [read_dataset(data, name) for name, data in files]


def _clean_bytes(secret: bytes = SECRET, facility: str = FACILITY) -> list[bytes]:
    return [dataset_to_bytes(deidentify(ds, secret, facility=facility)) for ds in _originals()]


def _parse_date(value: str) -> dt.date:
    return dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))


# -- the table ----------------------------------------------------------------------------


def test_table_is_the_whole_annex_e_table_with_masks() -> None:
    assert len(ACTIONS) > 600
    assert set(ACTIONS.values()) == {"D", "Z", "X", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    assert table_action(0x00100010) == "Z"  # PatientName
    assert table_action(0x00200052) == "U"  # FrameOfReferenceUID
    # Repeating groups as the package encodes them: (group, element, group mask, element mask).
    assert {m[:4] for m in MASKED_ACTIONS} >= {(0x5000, 0x0000, 0xFF00, 0x0000), (0x6000, 0x3000, 0xFF00, 0xFFFF)}
    assert table_action(0x60123000) == "X" and table_action(0x501E0040) == "X"
    assert table_action(0x60120010) is None  # OverlayRows: not listed; deid removes the whole group anyway
    assert table_action(0x00180050) is None  # SliceThickness: kept


def test_corpus_plants_every_action_category() -> None:
    for category, keywords in TOP_LEVEL.items():
        for keyword in keywords:
            expected = None if category == "-" else category
            assert table_action(int(tag_for_keyword(keyword))) == expected, keyword
    for keyword, category in SEQUENCES.items():
        assert table_action(int(tag_for_keyword(keyword))) == (None if category == "-" else category), keyword
    covered = set(TOP_LEVEL) | set(SEQUENCES.values())
    assert covered >= {"D", "Z", "X", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*", "-"}


# -- no leak -------------------------------------------------------------------------------


def test_every_planted_value_is_in_the_input() -> None:
    files, planted = _corpus()
    blob = b"".join(name.encode() + data for name, data in files)
    missing = [v for v in planted if v not in blob]
    assert not missing
    assert len(planted) == len(set(planted)) > 300


def test_no_planted_byte_survives_deidentification() -> None:
    _, planted = _corpus()
    for data in _clean_bytes():
        leaks = [v for v in planted if v in data]
        assert not leaks, leaks[:5]
        # Also no original UID root, no date from 1987, no private creator, no planted prefix at all.
        assert b"Zqphi" not in data and b"ZQPHI" not in data
        assert b"1.2.826.0.1.3680043.10." not in data
        assert not re.search(rb"1987[01]\d[0-3]\d", re.sub(rb"2\.25\.\d+", b"", data))


def test_structure_after_deidentification() -> None:
    original = _originals()[0]
    out = deidentify(original, SECRET, facility=FACILITY)
    assert not any(e.tag.is_private for e in out.iterall())
    assert not any(0x5000 <= e.tag.group <= 0x50FF or 0x6000 <= e.tag.group <= 0x60FF for e in out.iterall())
    assert not any(e.VR == "PN" and e.value and e.tag != 0x00100010 for e in out.iterall())
    assert not any(e.VR == "TM" and e.value for e in out.iterall())  # times are dropped
    for keyword in ("PatientAge", "PatientAddress", "InstitutionName", "StudyDescription", "SeriesDescription",
                    "OperatorsName", "DeviceSerialNumber", "StationName", "OtherPatientIDsSequence",
                    "RequestAttributesSequence", "EthnicGroup", "Occupation", "EvaluatorName"):
        assert keyword not in out, keyword
    for keyword in ("AccessionNumber", "StudyID", "ReferringPhysicianName", "PatientBirthDate", "PatientSex",
                    "StudyTime", "ContentTime"):
        assert keyword in out and out[keyword].value in ("", None), keyword  # type 2: present, empty
    assert len(out.ContentSequence) == 0  # D on a sequence: emptied
    assert out.AcquisitionFieldOfViewLabel == "ANONYMIZED"  # D: dummy
    # X/Z/U*: kept, UIDs replaced, walked two levels deep (nested names gone, nested dates shifted).
    source = out.SourceImageSequence[0]
    assert source.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert source.ReferencedSOPInstanceUID == uid_for(SECRET, FACILITY,
                                                      original.SourceImageSequence[0].ReferencedSOPInstanceUID)
    assert "PatientName" not in source and "OtherPatientIDsSequence" not in source
    deeper = source.ReferencedImageSequence[0]
    original_deeper = original.SourceImageSequence[0].ReferencedImageSequence[0]
    assert "OperatorsName" not in deeper and deeper.AcquisitionDate != original_deeper.AcquisitionDate
    # Unlisted sequence: benign codes kept, safety net applied inside.
    region = out.AnatomicRegionSequence[0]
    assert region.CodeMeaning == "Chest" and "EvaluatorName" not in region
    assert region.AnatomicRegionModifierSequence[0].CodeMeaning == "Right"
    assert "StationName" not in region.AnatomicRegionModifierSequence[0]
    # File meta rebuilt from an allow-list.
    assert set(out.file_meta.keys()) <= {
        tag_for_keyword(k) for k in ("FileMetaInformationGroupLength", "FileMetaInformationVersion",
                                     "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID",
                                     "ImplementationClassUID", "ImplementationVersionName")
    }
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_markers_of_the_profile_and_option() -> None:
    out = deidentify(_originals()[0], SECRET, facility=FACILITY)
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethod == METHOD and len(METHOD) <= 64
    codes = [(c.CodeValue, c.CodingSchemeDesignator) for c in out.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113107", "DCM")]
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    pid = _originals()[0].PatientID
    assert out.PatientID == patient_pseudonym(SECRET, FACILITY, pid)
    assert str(out.PatientName) == f"{out.PatientID}^ANON" and out.PatientName.family_name == out.PatientID


def test_analysis_attributes_and_pixels_are_kept() -> None:
    originals = _originals()
    for original in originals[:2]:
        out = deidentify(original, SECRET, facility=FACILITY)
        for keyword in ("Modality", "ImageType", "SOPClassUID", "Rows", "Columns", "PixelSpacing",
                        "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness", "RescaleSlope",
                        "RescaleIntercept", "ConvolutionKernel", "BitsStored", "PixelRepresentation", "KVP",
                        "Manufacturer", "InstanceNumber", "SeriesNumber", "BurnedInAnnotation"):
            assert out[keyword].value == original[keyword].value, keyword
        assert out.PixelData == original.PixelData
        assert original.PatientID != out.PatientID  # the input is untouched
    clean = [read_dataset(b) for b in _clean_bytes()]
    before, after = volume_from_series(originals), volume_from_series(choose_series(group_series(clean)))
    np.testing.assert_array_equal(before.hu, after.hu)
    np.testing.assert_array_equal(before.affine, after.affine)


# -- determinism, secrets ------------------------------------------------------------------


def test_same_input_and_secret_give_byte_identical_output() -> None:
    a, b = _clean_bytes(), _clean_bytes()
    assert a == b
    # From a fresh parse of the same bytes, and from pydicom.dcmread straight.
    files, _ = _corpus()
    again = dataset_to_bytes(deidentify(read_dataset(files[3][1]), SECRET, facility=FACILITY))
    assert again == a[3]
    direct = dataset_to_bytes(deidentify(pydicom.dcmread(io.BytesIO(files[3][1])), SECRET, facility=FACILITY))
    assert direct == a[3]


def test_another_secret_or_facility_gives_other_uids_and_dates() -> None:
    original = _originals()[0]
    a = deidentify(original, SECRET, facility=FACILITY)
    b = deidentify(original, OTHER_SECRET, facility=FACILITY)
    c = deidentify(original, SECRET, facility="south-clinic")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert a[keyword].value == uid_for(SECRET, FACILITY, original[keyword].value)
        assert a[keyword].value != b[keyword].value
        assert a[keyword].value != c[keyword].value, "another facility, the same secret: other UIDs"
    assert a.StudyDate != b.StudyDate and a.StudyDate != c.StudyDate  # different shift (fixed secrets: checked)
    assert a.PatientID != b.PatientID != c.PatientID


def test_uids_consistent_across_a_series() -> None:
    clean = [read_dataset(b) for b in _clean_bytes()]
    assert len({d.StudyInstanceUID for d in clean}) == 1 and len({d.SeriesInstanceUID for d in clean}) == 1
    assert len({d.SOPInstanceUID for d in clean}) == len(clean)
    assert all(re.fullmatch(r"2\.25\.[1-9]\d*", d.SOPInstanceUID) for d in clean)


def test_uid_for_is_deterministic_bounded_and_secret_scoped() -> None:
    uid_ = "1.2.826.0.1.999.1"
    uid = uid_for(SECRET, FACILITY, uid_)
    assert uid == uid_for(SECRET, FACILITY, uid_ + " ")  # padding is not part of the UID
    assert uid != uid_for(OTHER_SECRET, FACILITY, uid_)
    assert uid.startswith("2.25.") and len(uid) <= 64
    message = b"uid\x00" + FACILITY.encode() + b"\x00" + uid_.encode()
    expected = int.from_bytes(hmac.new(SECRET, message, hashlib.sha256).digest()[:16], "big")
    assert uid == f"2.25.{expected}"


# -- dates ---------------------------------------------------------------------------------


def test_dates_shift_by_one_offset_per_patient() -> None:
    original = _originals()[0]
    out = deidentify(original, SECRET, facility=FACILITY)
    days = date_offset_days(SECRET, FACILITY, original.PatientID)
    assert MIN_SHIFT_DAYS <= days <= MAX_SHIFT_DAYS
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate",
                    "ExpiryDate"):
        assert (_parse_date(original[keyword].value) - _parse_date(out[keyword].value)).days == days, keyword
    assert out.AcquisitionDateTime == shift_date(original.AcquisitionDateTime, days)
    assert len(out.AcquisitionDateTime) == 8  # DT keeps only its date
    assert out.PatientBirthDate == ""  # emptied, not shifted


def test_date_shift_links_studies_of_one_patient_only() -> None:
    hu = np.full((3, 4, 4), -1000.0, dtype=np.float32)

    def study(patient_id: str, date: str) -> Dataset:
        ds = series_to_datasets(hu, (2.0, 1.0, 1.0), patient_id=patient_id, study_date=date)[0]
        return deidentify(read_dataset(dataset_to_bytes(ds)), SECRET, facility=FACILITY)

    first, second = study("PID-1", "20200101"), study("PID-1", "20200315")
    # The interval between two studies of one patient survives; the calendar dates do not.
    assert (_parse_date(second.StudyDate) - _parse_date(first.StudyDate)).days == 74
    assert first.StudyDate != "20200101"
    offsets = {date_offset_days(SECRET, FACILITY, f"PID-{i}") for i in range(50)}
    assert len(offsets) > 40 and min(offsets) >= MIN_SHIFT_DAYS and max(offsets) <= MAX_SHIFT_DAYS


@pytest.mark.parametrize(
    "value, days, expected",
    [
        ("20240301", 1, "20240229"),
        ("20240301120000.5+0100", 366, "20230301"),
        ("2024", 10, ""),  # a DT of year precision cannot be shifted by days: emptied
        ("2024.03.01", 1, ""),  # ACR-NEMA style: emptied
        ("00010105", 10, ""),  # before year 1: emptied
        ("", 10, ""),
    ],
)
def test_shift_date(value: str, days: int, expected: str) -> None:
    assert shift_date(value, days) == expected


# -- odd inputs ------------------------------------------------------------------------------


def test_deidentify_rejects_empty_secret() -> None:
    with pytest.raises(ValueError):
        deidentify(_originals()[0], b"", facility=FACILITY)


def test_unknown_public_tags_and_group_lengths_are_removed() -> None:
    ds = _originals()[0]
    ds.add_new(0x00091234 - 0x00010000, "LO", "unknown public element")  # (0008,1234): not in the dictionary
    ds.add_new(0x00180000, "UL", 1234)  # a group length
    out = deidentify(ds, SECRET, facility=FACILITY)
    assert 0x00081234 not in out and 0x00180000 not in out


def test_real_ct_deidentified_pixels_identical_and_no_original_uid(real_ct_dir: Path) -> None:
    files = sorted(real_ct_dir.glob("*.dcm"))
    for path in files[:: max(1, len(files) // 6)] + [files[-1]]:
        original = read_dataset(path.read_bytes(), path.name)
        clean_bytes = dataset_to_bytes(deidentify(original, SECRET, facility=FACILITY))
        assert clean_bytes == dataset_to_bytes(deidentify(original, SECRET, facility=FACILITY))
        clean = read_dataset(clean_bytes, path.name)
        np.testing.assert_array_equal(clean.pixel_array, original.pixel_array)
        assert clean.PixelData == original.PixelData
        for uid in (original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID,
                    original.FrameOfReferenceUID):
            assert str(uid).encode() not in clean_bytes
        assert b"ELSCINT1" not in clean_bytes
        assert not any(elem.tag.is_private for elem in clean.iterall())
        for elem in original.iterall():
            if elem.VR == "DA" and elem.value:
                assert str(elem.value).encode() not in clean_bytes


def test_real_ct_deidentify_straight_from_dcmread(real_ct_dir: Path) -> None:
    # Callers that bypass read_dataset still must not trip over the wrong-length private tag.
    path = sorted(real_ct_dir.glob("*.dcm"))[0]
    original = pydicom.dcmread(path)
    clean = read_dataset(dataset_to_bytes(deidentify(original, SECRET, facility=FACILITY)))
    assert clean.PixelData == original.PixelData
