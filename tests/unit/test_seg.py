"""ctfleet.results.seg: the label map as a DICOM SEG that references the de-identified source series."""

from __future__ import annotations

import io
import random
import time

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ctfleet.dev.synthetic import series_to_datasets
from ctfleet.intake import volume_from_series
from ctfleet.dev.phantom import from_preset
from ctfleet.results.seg import SEGMENTS, make_seg


@pytest.fixture(scope="module")
def series() -> tuple[list[pydicom.Dataset], np.ndarray]:
    p = from_preset("high")
    return series_to_datasets(p.hu, p.spacing_mm, patient_id="", patient_name=""), p.truth


def _read(data: bytes) -> hd.seg.Segmentation:
    return hd.seg.segread(io.BytesIO(data))


def test_round_trip(series: tuple[list[pydicom.Dataset], np.ndarray]) -> None:
    datasets, truth = series
    seg = _read(make_seg(truth, datasets, model_version="acme-lung-1.0.0-abcdef012345"))
    src = datasets[0]
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert seg.PatientID == src.PatientID and str(seg.PatientName) == str(src.PatientName)
    # Segments, codes and algorithm version.
    assert seg.number_of_segments == 3
    for number, value in enumerate((1, 2, 3), start=1):
        desc = seg.get_segment_description(number)
        label, category, prop, _ = SEGMENTS[value]
        assert desc.segment_label == label
        assert desc.segmented_property_category == category
        assert desc.segmented_property_type == prop
        assert desc.algorithm_identification[0].AlgorithmVersion == "acme-lung-1.0.0-abcdef012345"
        assert desc.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    # Frames map to their source instances; pixels equal the labels.
    sops = [ds.SOPInstanceUID for ds in datasets]
    labels = seg.get_pixels_by_source_instance(sops, combine_segments=True, ignore_spatial_locations=True)
    assert labels.dtype == np.uint8 and np.array_equal(labels, truth)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = sops.index(ref)
        pos = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(pos, [float(v) for v in datasets[k].ImagePositionPatient])
    # Only slices with a segment are stored.
    assert seg.NumberOfFrames == sum(int(np.any(truth[k] == v)) for k in range(truth.shape[0]) for v in (1, 2, 3))


def test_any_source_order_and_deterministic(series: tuple[list[pydicom.Dataset], np.ndarray]) -> None:
    datasets, truth = series
    shuffled = list(datasets)
    random.Random(0).shuffle(shuffled)
    a, b = _read(make_seg(truth, datasets, model_version="v")), _read(make_seg(truth, shuffled, model_version="v"))
    # Deterministic UIDs and frames (the bytes differ only in ContentDate/Time).
    assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (b.SeriesInstanceUID, b.SOPInstanceUID)
    assert a.PixelData == b.PixelData
    assert a.SOPInstanceUID != _read(make_seg(truth, datasets, model_version="w")).SOPInstanceUID


def test_volume_labels_from_dicom_round_trip(series: tuple[list[pydicom.Dataset], np.ndarray]) -> None:
    """Labels on the grid of volume_from_series(datasets) land on the right slices (as the worker uses it)."""
    datasets, truth = series
    v = volume_from_series(list(reversed(datasets)))
    assert v.shape == truth.shape
    seg = _read(make_seg(truth, list(reversed(datasets)), model_version="v"))
    out = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in datasets], combine_segments=True,
                                            ignore_spatial_locations=True)
    assert np.array_equal(out, truth)


def test_no_phi_beyond_source(series: tuple[list[pydicom.Dataset], np.ndarray]) -> None:
    datasets, truth = series
    seg = _read(make_seg(truth, datasets, model_version="v"))
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName", "InstitutionName"):
        assert str(seg.get(keyword, "") or "") == str(datasets[0].get(keyword, "") or "")


def test_empty_and_bad_input(series: tuple[list[pydicom.Dataset], np.ndarray]) -> None:
    datasets, truth = series
    empty = _read(make_seg(np.zeros_like(truth), datasets, model_version="v"))
    assert empty.number_of_segments == 3
    only_lung_cons = np.where(truth == 2, 1, truth).astype(np.uint8)
    seg = _read(make_seg(only_lung_cons, datasets, model_version="v"))
    back = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in datasets], combine_segments=True,
                                             ignore_spatial_locations=True)
    assert np.array_equal(back, only_lung_cons)  # segment number == label value
    with pytest.raises(ValueError):
        make_seg(truth[:-1], datasets, model_version="v")
    with pytest.raises(ValueError):
        make_seg(truth[:, :-1], datasets, model_version="v")
    with pytest.raises(ValueError):
        make_seg(truth + 4, datasets, model_version="v")


def test_speed_full_size() -> None:
    """141 x 512 x 512 sparse labels (timed, printed, not asserted)."""
    z, y, x = 141, 512, 512
    hu = np.full((z, 4, 4), -1000.0, dtype=np.float32)
    small = series_to_datasets(hu, (2.5, 0.7, 0.7))
    datasets = []
    for ds in small:
        ds.Rows, ds.Columns = y, x
        del ds.PixelData  # the SEG needs geometry and UIDs, not the pixels
        datasets.append(ds)
    labels = np.zeros((z, y, x), dtype=np.uint8)
    zz, yy, xx = np.ogrid[:z, :y, :x]
    labels[((yy - 256) ** 2 / 150**2 + (xx - 170) ** 2 / 90**2 <= 1) & (zz > 20) & (zz < 130)] = 1
    labels[((yy - 256) ** 2 / 150**2 + (xx - 342) ** 2 / 90**2 <= 1) & (zz > 25) & (zz < 130)] = 1
    labels[((zz - 70) ** 2 + (yy - 230) ** 2 + (xx - 160) ** 2) <= 30**2] = 2
    labels[((zz - 90) ** 2 + (yy - 280) ** 2 + (xx - 350) ** 2) <= 20**2] = 3
    t = time.perf_counter()
    data = make_seg(labels, datasets, model_version="v")
    seconds = time.perf_counter() - t
    print(f"\nmake_seg 141x512x512: {seconds:.2f} s, {len(data) / 1e6:.1f} MB")
    t = time.perf_counter()
    seg = _read(data)
    back = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in datasets], combine_segments=True,
                                             ignore_spatial_locations=True)
    print(f"read back: {time.perf_counter() - t:.2f} s")
    assert np.array_equal(back, labels)
