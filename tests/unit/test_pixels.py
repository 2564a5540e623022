"""ctfleet.intake.pixels: header rules per slice, burned-in text in the pixels, no false alarm on real anatomy."""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from ctfleet.contracts import Reason
from ctfleet.dev.phantom import chest_phantom
from ctfleet.dev.synthetic import series_to_datasets
from ctfleet.errors import BadInput
from ctfleet.intake import dataset_to_bytes, pixels, read_dataset

PHI_TEXT = "SMITH^JOHN 1970-01-01"


@lru_cache(maxsize=1)
def _phantom_hu() -> np.ndarray:
    return chest_phantom((6, 256, 256), (5.0, 1.4, 1.4), seed=3).hu


def _series(hu: np.ndarray | None = None, **extra: object) -> list[Dataset]:
    hu = _phantom_hu() if hu is None else hu
    datasets = series_to_datasets(hu, (5.0, 1.4, 1.4), extra=extra or None)
    return [read_dataset(dataset_to_bytes(ds)) for ds in datasets]


def _draw(hu: np.ndarray, text: str, xy: tuple[int, int], *, size: int | None = None, antialias: bool = True,
          value: float = 3071.0) -> np.ndarray:
    """Burn ``text`` into a HU image the way a scanner or PACS export would: PIL's default font at ``value``."""
    font = ImageFont.load_default() if size is None else ImageFont.load_default(size)
    image = Image.new("L", (hu.shape[1], hu.shape[0]))
    draw = ImageDraw.Draw(image)
    if not antialias:
        draw.fontmode = "1"
    draw.text(xy, text, fill=255, font=font)
    alpha = np.asarray(image, dtype=np.float32) / 255.0
    return np.rint(hu * (1 - alpha) + value * alpha).astype(np.float32)


def _with_slice(datasets: list[Dataset], index: int, hu: np.ndarray) -> list[Dataset]:
    ds = datasets[index]
    stored = np.rint(hu - float(ds.RescaleIntercept)).astype("<i2")
    ds.PixelData = stored.tobytes()
    return datasets


# -- header rules --------------------------------------------------------------------------


def test_phantom_series_passes() -> None:
    pixels.check_series(_series(), pixel_slices=None)


@pytest.mark.parametrize(
    "extra, reason",
    [
        ({"BurnedInAnnotation": "YES"}, Reason.BURNED_IN_ANNOTATION),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, Reason.SECONDARY_CAPTURE),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.2"}, Reason.SECONDARY_CAPTURE),
        ({"ConversionType": "WSD"}, Reason.SECONDARY_CAPTURE),
        ({"ImageType": ["DERIVED", "SECONDARY"]}, Reason.DERIVED_IMAGE),
        ({"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}, Reason.DERIVED_IMAGE),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "SCREEN SAVE"]}, Reason.DERIVED_IMAGE),
        ({"ImageType": ["DERIVED", "SECONDARY", "VOLUME RENDERING"]}, Reason.DERIVED_IMAGE),
        ({"Modality": "MR"}, Reason.NOT_CT),
    ],
)
def test_header_rules_reject(extra: dict[str, object], reason: str) -> None:
    datasets = _series(**extra)
    with pytest.raises(BadInput) as err:
        pixels.check_series(datasets)
    assert err.value.reason == reason


@pytest.mark.parametrize(
    "image_type",
    [
        ["ORIGINAL", "PRIMARY", "AXIAL"],
        ["DERIVED", "PRIMARY", "AXIAL"],  # a reconstruction from raw data
        ["DERIVED", "SECONDARY", "MPR"],  # Siemens/Philips reformat
        ["DERIVED", "SECONDARY", "REFORMATTED", "AVERAGE"],  # GE reformat
        ["DERIVED"],
    ],
)
def test_reconstructions_are_not_screenshots(image_type: list[str]) -> None:
    assert not pixels.is_screenshot_like(image_type)
    pixels.check_series(_series(ImageType=image_type), pixel_slices=1)


def test_one_bad_slice_rejects_the_series_and_the_message_names_no_value() -> None:
    datasets = _series()
    datasets[4].BurnedInAnnotation = "YES"
    datasets[4].PatientName = "Secret^Name"
    with pytest.raises(BadInput) as err:
        pixels.check_series(datasets)
    assert err.value.reason == Reason.BURNED_IN_ANNOTATION
    assert "slice 4" in str(err.value) and "Secret" not in str(err.value)


# -- burned-in text ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [None, 14, 22])
@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("corner", ["top-left", "bottom-right"])
def test_text_in_a_corner_is_found(size: int | None, antialias: bool, corner: str) -> None:
    hu = _phantom_hu()[2]
    xy = (4, 4) if corner == "top-left" else (hu.shape[1] - 150 - (size or 10) * 3, hu.shape[0] - 6 - (size or 10))
    xy = (max(0, xy[0]), max(0, xy[1]))
    text = PHI_TEXT if corner == "top-left" else "ID 4711"
    assert pixels.find_text_lines(_draw(hu, text, xy, size=size, antialias=antialias))


def test_bitmap_text_over_the_body_is_found() -> None:
    hu = _phantom_hu()[2]
    burned = _draw(hu, PHI_TEXT, (60, 120), size=14, antialias=False)
    assert pixels.find_text_lines(burned)


def test_text_on_the_real_ct_is_found(real_ct_dir: Path) -> None:
    ds = read_dataset(sorted(real_ct_dir.glob("*.dcm"))[70].read_bytes())
    hu = pixels.hounsfield(ds)
    for xy in ((5, 5), (360, 495), (5, 420)):  # anti-aliased, in the air around the patient
        assert pixels.find_text_lines(_draw(hu, PHI_TEXT, xy)), xy
    # Over the arm and chest wall: found when painted at one value (a bitmap font), as scanners do.
    assert pixels.find_text_lines(_draw(hu, PHI_TEXT, (5, 250), antialias=False))
    assert pixels.find_text_lines(_draw(hu, PHI_TEXT, (5, 250), size=20))


def test_series_with_text_on_one_sampled_slice_is_rejected() -> None:
    datasets = _series()
    last = len(datasets) - 1
    _with_slice(datasets, last, _draw(_phantom_hu()[last], PHI_TEXT, (4, 4)))
    with pytest.raises(BadInput) as err:
        pixels.check_series(datasets, pixel_slices=2)  # first and last
    assert err.value.reason == Reason.BURNED_IN_TEXT
    assert "SMITH" not in str(err.value)


def test_metal_wires_electrodes_and_table_are_not_text() -> None:
    hu = _phantom_hu()[2].copy()
    yy, xx = np.mgrid[: hu.shape[0], : hu.shape[1]]
    # Surgical clips and sternal wires: small saturated blobs inside the body, some in a row.
    for x in (100, 112, 124, 136, 148):
        hu[(yy - 90) ** 2 + (xx - x) ** 2 <= 9] = 3071
    # ECG electrodes on the skin: solid saturated discs in a row.
    for x in (80, 128, 176):
        hu[(yy - 62) ** 2 + (xx - x) ** 2 <= 16] = 3071
    # A saturated cable outside the body: one thin curve.
    t = np.linspace(0, 1, 400)
    hu[(10 + 8 * np.sin(12 * t)).astype(int), (20 + 200 * t).astype(int)] = 3071
    # A dense table rail and a row of tiny dots (ruler ticks) at the bottom.
    hu[240:243, 10:246] = 1500
    hu[248:250, 20:240:6] = 3071
    assert pixels.find_text_lines(hu) == []


def test_real_ct_has_no_text_and_checks_fast(real_ct_dir: Path) -> None:
    datasets = [read_dataset(p.read_bytes(), p.name) for p in sorted(real_ct_dir.glob("*.dcm"))]
    assert len(datasets) == 141
    started = time.perf_counter()
    pixels.check_series(datasets, pixel_slices=None)  # every slice, not only the sample
    per_slice = (time.perf_counter() - started) / len(datasets)
    assert per_slice < 0.1, per_slice


@pytest.mark.filterwarnings("ignore:The number of bytes of compressed pixel data")
def test_undecodable_pixels_are_rejected() -> None:
    ds = _series()[0]
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"  # claims JPEG baseline, holds raw bytes
    with pytest.raises(BadInput) as err:
        pixels.check_pixels(ds)
    assert err.value.reason == Reason.UNSUPPORTED_PIXEL_DATA


def test_sample_indices() -> None:
    assert pixels.sample_indices(141, 8)[0] == 0 and pixels.sample_indices(141, 8)[-1] == 140
    assert len(pixels.sample_indices(141, 8)) == 8
    assert pixels.sample_indices(3, 8) == [0, 1, 2]
    assert pixels.sample_indices(5, None) == [0, 1, 2, 3, 4]
    assert pixels.sample_indices(0, 8) == []


def test_components_match_a_flood_fill() -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((40, 50)) > 0.7
    found = pixels.components(mask)
    assert sum(c.area for c in found) == int(mask.sum())
    # Reference: a plain 8-connected flood fill.
    seen = np.zeros_like(mask)
    sizes = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        stack, size = [(y, x)], 0
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            size += 1
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < 40 and 0 <= nx < 50 and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        sizes.append(size)
    assert sorted(c.area for c in found) == sorted(sizes)
