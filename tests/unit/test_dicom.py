"""ctfleet.intake: reading, grouping, choosing, volumes, writing (and ctfleet.dev.synthetic's series).

Synthetic series are generated with series_to_datasets and round-tripped
through bytes (BytesIO), as STYLE.md asks; the one real CT comes from the
``real_ct_dir`` fixture.
"""

from __future__ import annotations

import importlib
import io
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ctfleet.contracts import Reason
from ctfleet.dev.bench import median_time
from ctfleet.dev.synthetic import decimal_string, series_to_datasets
from ctfleet.errors import BadInput
from ctfleet.intake.choice import Choice, choose, choose_series, explain_choice, kernel_class, volume_for_upload
from ctfleet.intake.reading import read_dataset
from ctfleet.intake.series import Series, group_series
from ctfleet.intake.volume import volume_from_series
from ctfleet.intake.writing import dataset_to_bytes
from model.volume import Volume

SPACING = (2.5, 0.7, 0.8)  # distinct on every axis so a swapped axis shows


def _hu(shape: tuple[int, int, int] = (6, 5, 4), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 2000, shape).astype(np.float32)


def _roundtrip(datasets: list[Dataset]) -> list[Dataset]:
    return [read_dataset(dataset_to_bytes(ds), f"slice{k}.dcm") for k, ds in enumerate(datasets)]


def _lps_to_ras(point: np.ndarray) -> np.ndarray:
    return np.array([-point[0], -point[1], point[2]])


def _check_affine_matches_positions(volume: Volume, datasets: list[Dataset]) -> None:
    """Every slice's ImagePositionPatient is the affine image of (0, 0, k) for some k, and
    the row/column directions match the header's cosines."""
    ipps = [np.array([float(v) for v in ds.ImagePositionPatient]) for ds in datasets]
    nz = volume.shape[0]
    mapped = [volume.affine @ np.array([0.0, 0.0, k, 1.0]) for k in range(nz)]
    for ipp in ipps:
        assert min(np.linalg.norm(m[:3] - _lps_to_ras(ipp)) for m in mapped) < 1e-3
    iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    _, dy, dx = volume.spacing_mm
    np.testing.assert_allclose(volume.affine[:3, 0], _lps_to_ras(iop[:3]) * dx, atol=1e-6)
    np.testing.assert_allclose(volume.affine[:3, 1], _lps_to_ras(iop[3:]) * dy, atol=1e-6)


# -- round trip, ordering, affine --------------------------------------------------------


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_roundtrip_hfs_axial_matches_from_spacing(syntax: str) -> None:
    hu = _hu()
    hu[0, 0, 0], hu[-1, -1, -1] = -1024.4, 3071.6  # rounding, extremes
    datasets = _roundtrip(series_to_datasets(hu, SPACING, transfer_syntax=syntax))
    volume = volume_from_series(datasets)
    assert volume.hu.dtype == np.float32
    np.testing.assert_array_equal(volume.hu, np.rint(hu))
    assert volume.spacing_mm == pytest.approx(SPACING)
    expected = Volume.from_spacing(hu, SPACING).affine
    np.testing.assert_allclose(volume.affine[:3, :3], expected[:3, :3], atol=1e-9)
    _check_affine_matches_positions(volume, datasets)


def test_shuffled_files_are_ordered_by_position_not_instance_number() -> None:
    hu = _hu((9, 5, 4), seed=1)
    datasets = _roundtrip(series_to_datasets(hu, SPACING))
    # Lie in InstanceNumber: ordering must come from geometry alone.
    for ds in datasets:
        ds.InstanceNumber = random.Random(3).randint(1, 100)
    random.Random(7).shuffle(datasets)
    volume = volume_from_series(datasets)
    np.testing.assert_array_equal(volume.hu, hu)


def test_descending_positions_give_ascending_volume() -> None:
    # The real CT's files go head to foot (InstanceNumber 1 at the top): the
    # volume must still run foot to head, with the standard affine.
    hu = _hu((7, 5, 4), seed=2)
    datasets = series_to_datasets(hu, SPACING, origin_mm=(10.0, -20.0, 50.0))
    for k, ds in enumerate(datasets):
        ds.InstanceNumber = len(datasets) - k
    volume = volume_from_series(_roundtrip(datasets[::-1]))
    np.testing.assert_array_equal(volume.hu, hu)
    np.testing.assert_allclose(volume.affine[:3, :3], Volume.from_spacing(hu, SPACING).affine[:3, :3], atol=1e-9)
    np.testing.assert_allclose(volume.affine[:3, 3], [-10.0, 20.0, 50.0], atol=1e-6)


@pytest.mark.parametrize(
    "orientation",
    [
        (1, 0, 0, 0, 0, -1),  # coronal
        (0, 1, 0, 0, 0, -1),  # sagittal
        (-1, 0, 0, 0, -1, 0),  # axial, feet first prone-like (rows flipped)
        (0.8660254, 0.5, 0, -0.5, 0.8660254, 0),  # axial rotated 30 degrees in plane
        (1, 0, 0, 0, 0.8660254, -0.5),  # oblique: 30 degree tilt
    ],
)
def test_non_standard_orientations(orientation: tuple[float, ...]) -> None:
    hu = _hu((5, 6, 7), seed=4)
    datasets = _roundtrip(series_to_datasets(hu, SPACING, orientation=orientation, origin_mm=(3.0, 4.0, 5.0)))
    random.Random(1).shuffle(datasets)
    volume = volume_from_series(datasets)
    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.spacing_mm == pytest.approx(SPACING)
    _check_affine_matches_positions(volume, datasets)
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    np.testing.assert_allclose(volume.affine[:3, 2], _lps_to_ras(normal) * SPACING[0], atol=1e-5)
    np.testing.assert_allclose(volume.affine[:3, 3], _lps_to_ras(np.array([3.0, 4.0, 5.0])), atol=1e-5)


def test_gantry_tilt_gives_sheared_affine() -> None:
    hu = _hu((5, 4, 4), seed=5)
    datasets = series_to_datasets(hu, (2.0, 1.0, 1.0))
    for k, ds in enumerate(datasets):  # each slice shifted 0.5 mm in y: a tilted gantry
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * k, z]
    volume = volume_from_series(_roundtrip(datasets))
    assert volume.spacing_mm[0] == pytest.approx(2.0)
    np.testing.assert_allclose(volume.affine[:3, 2], [0.0, -0.5, 2.0], atol=1e-6)


def test_rescale_slope_and_unsigned_bits_stored() -> None:
    datasets = series_to_datasets(np.zeros((3, 2, 2)), (1.0, 1.0, 1.0))
    for ds in datasets:
        stored = np.array([[0, 1], [4095, 0xF000 | 100]], dtype="<u2")  # high nibble is not pixel data
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
        ds.PixelData = stored.tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-1000"
    volume = volume_from_series(_roundtrip(datasets))
    np.testing.assert_array_equal(volume.hu[0], [[-1000.0, -999.5], [-1000 + 4095 * 0.5, -950.0]])


# -- geometry errors --------------------------------------------------------------------


def _reason(exc: pytest.ExceptionInfo[BadInput]) -> str:
    return exc.value.reason


def test_missing_slice_is_inconsistent_spacing() -> None:
    datasets = series_to_datasets(_hu((8, 4, 4)), SPACING)
    del datasets[4]
    with pytest.raises(BadInput) as exc:
        volume_from_series(datasets)
    assert _reason(exc) == Reason.INCONSISTENT_SPACING


def test_small_position_rounding_is_tolerated() -> None:
    datasets = series_to_datasets(_hu((8, 4, 4)), (2.0, 1.0, 1.0))
    ds = datasets[3]
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 0.04]  # 2 % of a 2 mm gap
    assert volume_from_series(datasets).spacing_mm[0] == pytest.approx(2.0)


def test_duplicate_positions() -> None:
    datasets = series_to_datasets(_hu((5, 4, 4)), SPACING)
    copy_ = series_to_datasets(_hu((5, 4, 4), seed=9), SPACING)[2]  # another instance...
    copy_.ImagePositionPatient = datasets[2].ImagePositionPatient  # ...at the same place
    with pytest.raises(BadInput) as exc:
        volume_from_series([*datasets, copy_])
    assert _reason(exc) == Reason.DUPLICATE_SLICES


def test_same_instance_twice_is_deduplicated_by_grouping() -> None:
    datasets = _roundtrip(series_to_datasets(_hu((5, 4, 4)), SPACING))
    again = read_dataset(dataset_to_bytes(datasets[2]))
    (series,) = group_series([*datasets, again])
    assert series.n_slices == 5
    volume_from_series(series)


def test_mixed_orientation_and_size_are_rejected() -> None:
    datasets = series_to_datasets(_hu((5, 4, 4)), SPACING)
    datasets[1].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    with pytest.raises(BadInput) as exc:
        volume_from_series(datasets)
    assert _reason(exc) == Reason.INCONSISTENT_GEOMETRY

    datasets = series_to_datasets(_hu((5, 4, 4)), SPACING)
    datasets[3].PixelSpacing = [0.5, 0.5]
    with pytest.raises(BadInput) as exc:
        volume_from_series(datasets)
    assert _reason(exc) == Reason.INCONSISTENT_GEOMETRY

    datasets = series_to_datasets(_hu((5, 4, 4)), SPACING)
    other = series_to_datasets(_hu((1, 4, 6)), SPACING, origin_mm=(0, 0, 99))[0]
    with pytest.raises(BadInput) as exc:
        volume_from_series([*datasets, other])
    assert _reason(exc) == Reason.INCONSISTENT_GEOMETRY


def test_missing_geometry() -> None:
    datasets = series_to_datasets(_hu((4, 4, 4)), SPACING)
    del datasets[2].ImagePositionPatient
    with pytest.raises(BadInput) as exc:
        volume_from_series(datasets)
    assert _reason(exc) == Reason.MISSING_GEOMETRY


def test_positions_off_a_line_are_rejected() -> None:
    datasets = series_to_datasets(_hu((5, 4, 4)), (2.0, 1.0, 1.0))
    x, y, z = (float(v) for v in datasets[2].ImagePositionPatient)
    datasets[2].ImagePositionPatient = [x + 5.0, y, z]  # one slice jumps sideways
    with pytest.raises(BadInput) as exc:
        volume_from_series(datasets)
    assert _reason(exc) == Reason.INCONSISTENT_GEOMETRY


# -- reading errors ---------------------------------------------------------------------


def _one_file() -> bytes:
    return dataset_to_bytes(series_to_datasets(_hu((1, 8, 8)), SPACING)[0])


@pytest.mark.filterwarnings("ignore:End of file reached")
@pytest.mark.parametrize(
    "data",
    [b"", b"hello world" * 40, b"\0" * 128 + b"DICM", b"\0" * 128 + b"DICM" + b"\xff" * 300],
    ids=["empty", "text", "prefix-only", "garbage-after-prefix"],
)
def test_not_dicom(data: bytes) -> None:
    with pytest.raises(BadInput) as exc:
        read_dataset(data, "upload/x.dcm")
    assert _reason(exc) == Reason.NOT_DICOM


@pytest.mark.parametrize("keep", [0.99, 0.6, 0.3])
def test_truncated_file_is_not_dicom(keep: float) -> None:
    data = _one_file()
    with pytest.raises(BadInput) as exc:
        read_dataset(data[: int(len(data) * keep)], "x.dcm")
    assert _reason(exc) in (Reason.NOT_DICOM, Reason.NO_PIXEL_DATA)
    if keep > 0.9:  # cut inside the pixel data: the header is complete
        assert _reason(exc) == Reason.NOT_DICOM
        assert "truncated" in str(exc.value)


def test_no_pixel_data() -> None:
    ds = series_to_datasets(_hu((1, 4, 4)), SPACING)[0]
    del ds.PixelData
    with pytest.raises(BadInput) as exc:
        read_dataset(dataset_to_bytes(ds))
    assert _reason(exc) == Reason.NO_PIXEL_DATA


def test_error_messages_carry_no_header_values() -> None:
    ds = series_to_datasets(_hu((1, 4, 4)), SPACING, patient_name="Doe^Jane", patient_id="PID-4711")[0]
    data = dataset_to_bytes(ds)
    for bad in (data[: len(data) - 10], data[:400]):
        with pytest.raises(BadInput) as exc:
            read_dataset(bad, "f.dcm")
        assert "Doe" not in str(exc.value) and "4711" not in str(exc.value)
        assert exc.value.__cause__ is None


def test_private_tag_with_wrong_length_is_kept_as_un() -> None:
    ds = series_to_datasets(_hu((1, 4, 4)), SPACING, transfer_syntax=ImplicitVRLittleEndian)[0]
    # The real CT's quirk: ELSCINT1 (01F1,1026) is FD in the dictionary but holds "0.15".
    ds.add_new(0x01F10010, "LO", "ELSCINT1")
    ds.add_new(0x01F11026, "UN", b"0.15")
    loaded = read_dataset(dataset_to_bytes(ds), "quirk.dcm")
    assert loaded[0x01F11026].VR == "UN"
    assert loaded[0x01F11026].value == b"0.15"
    dataset_to_bytes(loaded)  # and it writes back out


# -- grouping and choosing --------------------------------------------------------------


def _series(n: int, **kwargs: object) -> list[Dataset]:
    return series_to_datasets(_hu((n, 4, 4)), SPACING, **kwargs)  # type: ignore[arg-type]


def test_choose_prefers_axial_most_slices_and_skips_localizers() -> None:
    study = "1.2.3.4"
    localizer = _series(1, study_instance_uid=study, extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    scout_like = _series(2, study_instance_uid=study)
    big_localizer = _series(20, study_instance_uid=study, extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    thick = _series(6, study_instance_uid=study, extra={"SliceThickness": "5"})
    thin = _series(12, study_instance_uid=study, extra={"SliceThickness": "1"})
    coronal = _series(30, study_instance_uid=study, orientation=(1, 0, 0, 0, 0, -1))
    everything = [*localizer, *scout_like, *big_localizer, *thick, *thin, *coronal]
    random.Random(0).shuffle(everything)
    groups = group_series(everything)
    assert sorted(s.n_slices for s in groups) == [1, 2, 6, 12, 20, 30]
    chosen = choose_series(groups)
    assert chosen.series_instance_uid == thin[0].SeriesInstanceUID
    assert chosen.orientation == "axial" and not chosen.is_localizer
    # datasets come back ordered along the normal
    z = [float(ds.ImagePositionPatient[2]) for ds in chosen.datasets]
    assert z == sorted(z)
    assert "1.2.3.4" not in repr(chosen)


def test_choose_thinnest_on_equal_slice_count() -> None:
    study = "1.2.3.5"
    a = _series(10, study_instance_uid=study, extra={"SliceThickness": "3", "SeriesNumber": 1})
    b = _series(10, study_instance_uid=study, extra={"SliceThickness": "1.5", "SeriesNumber": 2})
    chosen = choose_series(group_series([*a, *b]))
    assert chosen.series_instance_uid == b[0].SeriesInstanceUID


def test_series_with_a_scout_inside_is_split() -> None:
    axial = _series(8, series_instance_uid="1.2.3.6.1")
    scout = series_to_datasets(
        _hu((1, 6, 4)), SPACING, series_instance_uid="1.2.3.6.1", study_instance_uid=axial[0].StudyInstanceUID,
        orientation=(1, 0, 0, 0, 0, -1),
    )
    groups = group_series([*scout, *axial])
    assert sorted(s.n_slices for s in groups) == [1, 8]
    assert choose_series(groups).n_slices == 8


def test_mr_only_is_not_ct() -> None:
    with pytest.raises(BadInput) as exc:
        choose_series(group_series(_roundtrip(_series(5, modality="MR"))))
    assert _reason(exc) == Reason.NOT_CT


def test_two_studies() -> None:
    with pytest.raises(BadInput) as exc:
        choose_series(group_series([*_series(5), *_series(5)]))
    assert _reason(exc) == Reason.MULTIPLE_STUDIES


def test_only_localizers_is_no_usable_series() -> None:
    study = "1.2.3.7"
    datasets = [*_series(1, study_instance_uid=study), *_series(2, study_instance_uid=study)]
    with pytest.raises(BadInput) as exc:
        choose_series(group_series(datasets))
    assert _reason(exc) == Reason.NO_USABLE_SERIES


def test_empty() -> None:
    with pytest.raises(BadInput) as exc:
        choose_series([])
    assert _reason(exc) == Reason.EMPTY_UPLOAD


def test_series_to_datasets_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        series_to_datasets(np.zeros((2, 2)), SPACING)
    with pytest.raises(ValueError):
        series_to_datasets(np.full((1, 2, 2), 40000.0), SPACING)
    with pytest.raises(ValueError):
        series_to_datasets(np.zeros((1, 2, 2)), (0, 1, 1))
    with pytest.raises(ValueError):
        series_to_datasets(np.zeros((1, 2, 2)), (1, 1, 1), extra={"SliceThicknes": "1"})


def test_written_file_is_standard_ct_image_storage() -> None:
    data = dataset_to_bytes(series_to_datasets(_hu((1, 4, 4)), SPACING, patient_name="Doe^Jane")[0])
    assert data[128:132] == b"DICM"
    ds = pydicom.dcmread(io.BytesIO(data), force=False)
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    for keyword in (
        "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
        "Modality", "ImageType", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
        "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
        "HighBit", "PixelRepresentation", "RescaleIntercept", "RescaleSlope", "PixelData",
    ):
        assert ds.get(keyword) not in (None, ""), keyword
    np.testing.assert_array_equal(ds.pixel_array.shape, (4, 4))


# -- the real CT ------------------------------------------------------------------------


def _read_real(real_ct_dir: Path) -> tuple[list[bytes], list[str]]:
    files = sorted(real_ct_dir.glob("*.dcm"))
    return [f.read_bytes() for f in files], [f.name for f in files]


def test_real_ct(real_ct_dir: Path) -> None:
    blobs, names = _read_real(real_ct_dir)
    datasets = [read_dataset(b, n) for b, n in zip(blobs, names)]
    series = choose_series(group_series(datasets))
    assert isinstance(series, Series) and series.n_slices == 141 and series.orientation == "axial"
    volume = volume_from_series(series)
    assert volume.shape == (141, 512, 512)
    assert volume.spacing_mm == pytest.approx((2.0, 0.9765625, 0.9765625), rel=1e-3)
    hu = volume.hu
    assert hu.min() >= -1100 and hu.max() < 4000
    assert np.percentile(hu, 5) < -900  # air around the patient and in the lungs
    soft = np.count_nonzero((hu > 0) & (hu < 100))
    assert soft > 0.05 * hu.size  # soft tissue is there
    np.testing.assert_allclose(volume.affine[:3, :3], np.diag([-0.9765625, -0.9765625, 2.0]), atol=1e-6)
    _check_affine_matches_positions(volume, list(series.datasets))
    # The files go head to foot (InstanceNumber 1 is the highest slice); the volume foot to head.
    first_file = next(ds for ds in datasets if int(ds.InstanceNumber) == 1)
    np.testing.assert_array_equal(
        hu[-1], first_file.pixel_array.astype(np.float32) * float(first_file.RescaleSlope)
        + float(first_file.RescaleIntercept),
    )


def _naive_hu(blobs: list[bytes]) -> np.ndarray:
    """What a plain pydicom reader does: dcmread, pixel_array, rescale, stack."""
    return np.stack([ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                     for ds in [pydicom.dcmread(io.BytesIO(b)) for b in blobs]])


def test_real_ct_timing(real_ct_dir: Path) -> None:
    """Measure (not assert) volume_from_series against plain pydicom on the same files."""
    blobs, _ = _read_real(real_ct_dir)
    plain = [pydicom.dcmread(io.BytesIO(b)) for b in blobs]
    datasets = [read_dataset(b) for b in blobs]
    volume_from_series(datasets)  # warm up: first touch of ~150 MB is paid once per process
    t_dcmread = median_time(lambda: [pydicom.dcmread(io.BytesIO(b)) for b in blobs], 3)
    t_read = median_time(lambda: [read_dataset(b) for b in blobs], 3)
    t_volume = median_time(lambda: volume_from_series(datasets), 3)
    t_pixel_array = median_time(lambda: _naive_hu(blobs), 3)
    del plain
    from ctfleet.intake.deid import deidentify  # the worker reads de-identified files: its real hot path

    clean = [dataset_to_bytes(deidentify(ds, b"k" * 32, facility="f")) for ds in datasets]
    t_dcmread_clean = median_time(lambda: [pydicom.dcmread(io.BytesIO(b)) for b in clean], 3)
    t_read_clean = median_time(lambda: [read_dataset(b) for b in clean], 3)
    print(
        f"\n[de-identified copy] dcmread {t_dcmread_clean:.3f} s | read_dataset {t_read_clean:.3f} s | "
        f"ratio {t_read_clean / t_dcmread_clean:.2f}"
    )
    print(
        f"\n[real CT, 141 x 512 x 512] dcmread {t_dcmread:.3f} s | read_dataset {t_read:.3f} s | "
        f"volume_from_series {t_volume:.3f} s | ratio volume/dcmread {t_volume / t_dcmread:.2f} | "
        f"naive dcmread+pixel_array+rescale {t_pixel_array:.3f} s"
    )


@pytest.mark.parametrize("module", ["syntaxes", "headers", "reading", "geometry", "series", "choice", "volume",
                                    "writing"])
def test_intake_modules_have_no_io_imports(module: str) -> None:
    source = Path(importlib.import_module(f"ctfleet.intake.{module}").__file__ or "").read_text()
    assert "boto3" not in source and "open(" not in source


# -- choosing: coverage, thickness, kernel, the record of why ------------------------------


def _stack(n: int, dz: float, study: str, **extra: object) -> list[Dataset]:
    number = extra.pop("SeriesNumber", 1)
    return series_to_datasets(
        _hu((n, 4, 4)), (dz, 0.7, 0.8), study_instance_uid=study,
        extra={"SliceThickness": decimal_string(dz), "SeriesNumber": number, **extra},  # type: ignore[dict-item]
    )


def test_kernel_class() -> None:
    soft = ["B30f", "Br40d", "I31f", "STANDARD", "SOFT", "FC13", "FC03", "B", "YB", "Qr40"]
    sharp = ["B70f", "Bl64", "LUNG", "BONE", "BONEPLUS", "FC51", "FC86", "FL04", "L", "YD", "EDGE"]
    assert [kernel_class(k) for k in soft] == ["soft"] * len(soft)
    assert [kernel_class(k) for k in sharp] == ["sharp"] * len(sharp)
    assert kernel_class("B50f") == "medium" and kernel_class("DETAIL") == "medium"
    assert kernel_class("") == "unknown" and kernel_class("XYZ") == "unknown"
    assert kernel_class("Br40\\3") == "soft"  # Siemens' second value is the strength


def test_choose_prefers_full_coverage_then_thin_then_soft_kernel() -> None:
    study = "1.2.3.10"
    thin_lung = _stack(301, 1.0, study, ConvolutionKernel="B70f", SeriesNumber=2)  # 300 mm
    thin_soft = _stack(301, 1.0, study, ConvolutionKernel="B30f", SeriesNumber=3)  # 300 mm
    thick_soft = _stack(61, 5.0, study, ConvolutionKernel="B30f", SeriesNumber=4)  # 300 mm
    short_thin = _stack(101, 0.6, study, ConvolutionKernel="B30f", SeriesNumber=5)  # 60 mm: a targeted recon
    coronal = series_to_datasets(_hu((400, 4, 4)), (1.0, 0.7, 0.8), study_instance_uid=study,
                                 orientation=(1, 0, 0, 0, 0, -1))
    groups = group_series([*thin_lung, *thin_soft, *thick_soft, *short_thin, *coronal])
    choice = choose(groups)
    assert choice.series.series_instance_uid == thin_soft[0].SeriesInstanceUID
    assert choice_series_is(choice, groups)
    by_index = {c["index"]: c for c in choice.candidates}
    order = sorted((c["rank"], c["index"]) for c in choice.candidates if c["rank"])
    ranked = [groups[i] for _, i in order]
    uids = [thin_soft, thin_lung, thick_soft, short_thin, coronal]
    assert [s.series_instance_uid for s in ranked] == [u[0].SeriesInstanceUID for u in uids]
    assert by_index[choice.index]["full_coverage"] and by_index[choice.index]["kernel_class"] == "soft"
    assert "axial, full coverage 300 mm, 1 mm slices, soft kernel" in choice.reason

    # Without the thin soft stack, the thin sharp one beats the thick soft one (thin first).
    groups = group_series([*thin_lung, *thick_soft, *short_thin])
    assert choose_series(groups).series_instance_uid == thin_lung[0].SeriesInstanceUID


def choice_series_is(choice: Choice, groups: list[Series]) -> bool:
    return groups[choice.index] is choice.series and choice.candidates[choice.index]["chosen"]


def test_short_scan_uses_relative_coverage() -> None:
    # A child: nothing reaches 200 mm; stacks within 90 % of the longest count as full.
    study = "1.2.3.11"
    a = _stack(61, 2.5, study, ConvolutionKernel="B70f", SeriesNumber=1)  # 150 mm, sharp
    b = _stack(141, 1.0, study, ConvolutionKernel="B30f", SeriesNumber=2)  # 140 mm, soft: >= 135
    c = _stack(101, 0.5, study, ConvolutionKernel="B30f", SeriesNumber=3)  # 50 mm
    choice = choose(group_series([*a, *b, *c]))
    assert choice.series.series_instance_uid == b[0].SeriesInstanceUID
    assert [cand["full_coverage"] for cand in choice.candidates] == [True, True, False]


def test_choice_record_has_no_phi_and_lists_exclusions() -> None:
    study = "1.2.3.12.99"
    axial = series_to_datasets(_hu((12, 4, 4)), SPACING, study_instance_uid=study, patient_name="Doe^Jane",
                               patient_id="PID-4711", study_date="20240102",
                               extra={"SeriesDescription": "CHEST Doe", "ConvolutionKernel": "B30f"})
    scout = _series(1, study_instance_uid=study, extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    two = _series(2, study_instance_uid=study)
    mr = _series(5, study_instance_uid=study, modality="MR")
    groups = group_series(_roundtrip([*axial, *scout, *two, *mr]))
    choice = choose(groups)
    record = choice.as_dict()
    text = repr(record)
    for phi in ("Doe", "4711", "20240102", study, axial[0].SeriesInstanceUID, "CHEST"):
        assert phi not in text
    reasons = sorted(str(c["excluded_because"]) for c in record["candidates"])
    assert reasons == ["None", "localizer", "not_ct", "too_few_slices"]
    assert set(record["candidates"][0]) == {
        "index", "modality", "orientation", "slices", "slice_thickness_mm", "slice_gap_mm", "coverage_mm", "kernel",
        "kernel_class", "transfer_syntax", "lossy", "full_coverage", "rank", "chosen", "excluded_because"}
    assert record["chosen"] == choice.index and record["candidates"][choice.index]["kernel"] == "B30f"
    import json

    json.dumps(record)  # plain types only
    assert explain_choice(groups, choice.series) == record


def test_choose_falls_back_when_the_best_stack_misses_a_slice() -> None:
    study = "1.2.3.13"
    best = _stack(201, 1.0, study, ConvolutionKernel="B30f", SeriesNumber=1)
    del best[100]  # a slice lost in transfer
    backup = _stack(41, 5.0, study, ConvolutionKernel="B30f", SeriesNumber=2)
    groups = group_series([*best, *backup])
    choice = choose(groups)
    assert choice.series.series_instance_uid == backup[0].SeriesInstanceUID
    failed = next(c for c in choice.candidates if c["slices"] == 200)
    assert failed["excluded_because"] == Reason.INCONSISTENT_SPACING and failed["rank"] is None
    assert "failed (inconsistent_spacing)" in choice.reason
    # Only the broken stack: its own geometry reason, not a generic one.
    with pytest.raises(BadInput) as exc:
        choose_series(group_series(best))
    assert _reason(exc) == Reason.INCONSISTENT_SPACING


def test_volume_for_upload_falls_back_when_pixels_do_not_decode() -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    study = "1.2.3.14"
    best = _roundtrip(_stack(201, 1.0, study, ConvolutionKernel="B30f", SeriesNumber=1))
    backup = _roundtrip(_stack(41, 5.0, study, ConvolutionKernel="B30f", SeriesNumber=2))
    broken = best[50]
    broken.file_meta.TransferSyntaxUID = RLELossless
    broken.PixelData = encapsulate([b"\x01\x00\x00\x00" + (64).to_bytes(4, "little") + b"\x00" * 56 + b"\xff" * 8])
    volume, choice = volume_for_upload(group_series([*best, *backup]))
    assert volume.shape[0] == 41 and choice.series.n_slices == 41
    failed = next(c for c in choice.candidates if c["slices"] == 201)
    assert failed["excluded_because"] == Reason.UNSUPPORTED_PIXEL_DATA
    assert "fell back from stack" in choice.reason
    assert [c["chosen"] for c in choice.candidates].count(True) == 1


def test_volume_for_upload_matches_choose_on_good_data() -> None:
    study = "1.2.3.15"
    a = _stack(9, 2.0, study, SeriesNumber=1)
    volume, choice = volume_for_upload(group_series(_roundtrip(a)))
    assert choice.index == 0 and volume.shape == (9, 4, 4)


def test_synthetic_400_slice_timing(tmp_path: Path) -> None:
    """Measure (not assert): a 400 x 512 x 512 series, volume_from_series vs plain pydicom."""
    rng = np.random.default_rng(0)
    plane = rng.integers(-1024, 1500, (512, 512)).astype(np.float32)
    datasets = series_to_datasets(np.repeat(plane[None], 400, axis=0), (0.8, 0.7, 0.7))
    blobs = [dataset_to_bytes(ds) for ds in datasets]
    del datasets
    loaded = [read_dataset(b) for b in blobs]
    volume_from_series(loaded)  # warm-up
    t_dcmread = median_time(lambda: [pydicom.dcmread(io.BytesIO(b)) for b in blobs], 3)
    t_read = median_time(lambda: [read_dataset(b) for b in blobs], 3)
    t_volume = median_time(lambda: volume_from_series(loaded), 3)
    t_naive = median_time(lambda: _naive_hu(blobs), 3)
    print(
        f"\n[synthetic 400 x 512 x 512] dcmread {t_dcmread:.3f} s | read_dataset {t_read:.3f} s "
        f"(x{t_read / t_dcmread:.2f}) | volume_from_series {t_volume:.3f} s (x{t_volume / t_dcmread:.2f} of dcmread) | "
        f"read+volume x{(t_read + t_volume) / t_dcmread:.2f} | naive dcmread+pixel_array+rescale {t_naive:.3f} s "
        f"(ours x{(t_read + t_volume) / t_naive:.2f} of naive)"
    )
