"""Every transfer syntax a hospital sends decodes to the pixel values it encodes.

Test files are made here, offline:

- RLE lossless, JPEG-LS lossless/near-lossless, JPEG 2000 lossless/lossy with
  pydicom 3's own encoders (``ds.compress``; pydicom's RLE, pyjpegls,
  pylibjpeg-openjpeg), deflate by writing with the deflated syntax;
- JPEG lossless (process 14, any predictor, 2-16 bit) and JPEG DCT
  (baseline 8-bit, extended 12-bit) with the small reference encoders below
  (T.81 Annex F/H, fixed-length Huffman tables), since no installed package
  writes them; JPEG baseline also with Pillow;
- the JPEG extended, JPEG 2000 and JPEG-LS files that ship inside the pydicom
  wheel (``pydicom.data.get_testdata_file``), for codestreams written by
  other encoders.

Lossless syntaxes must give identical HU; lossy ones must decode, stay close
to the source, and equal an independent decode of the same bytes (Pillow for
8-bit JPEG, the codec library called directly otherwise).
"""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    HTJ2K,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from ctfleet.contracts import Reason
from ctfleet.dev.synthetic import series_to_datasets
from ctfleet.errors import BadInput
from ctfleet.intake import choose, dataset_to_bytes, group_series, read_dataset, syntaxes, volume_from_series
from ctfleet.intake.syntaxes import LOSSY_TRANSFER_SYNTAXES, TRANSFER_SYNTAXES, supported_transfer_syntaxes
from ctfleet.intake.volume import PADDING_HU

SPACING = (2.0, 0.7, 0.8)


# -- CT-like data ------------------------------------------------------------------------


def _phantom(shape: tuple[int, int, int] = (4, 64, 64), seed: int = 0) -> np.ndarray:
    """A chest-like HU volume: air outside a body ellipse, lungs, soft tissue, bone, noise."""
    z, y, x = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:y, 0:x]
    cy, cx = (y - 1) / 2, (x - 1) / 2
    body = ((yy - cy) / (0.45 * y)) ** 2 + ((xx - cx) / (0.48 * x)) ** 2 <= 1
    lung_r = ((yy - cy) / (0.3 * y)) ** 2 + ((xx - cx - 0.2 * x) / (0.15 * x)) ** 2 <= 1
    lung_l = ((yy - cy) / (0.3 * y)) ** 2 + ((xx - cx + 0.2 * x) / (0.15 * x)) ** 2 <= 1
    spine = ((yy - 0.8 * y) / (0.06 * y)) ** 2 + ((xx - cx) / (0.06 * x)) ** 2 <= 1
    hu = np.full(shape, -1000.0)
    for k in range(z):
        plane = hu[k]
        plane[body] = 40.0
        plane[lung_r | lung_l] = -850.0
        plane[spine] = 1200.0 + 40 * k
        plane += rng.normal(0, 12, (y, x))
    hu = np.clip(np.rint(hu), -1024, 3071)  # what a 12-bit CT with intercept -1024 stores
    hu[0, 0, 0], hu[-1, -1, -1] = -1024.0, 3071.0  # both extremes present
    return hu


def _read_volume(datasets: list[Dataset]):
    blobs = [dataset_to_bytes(ds) for ds in datasets]
    loaded = [read_dataset(b, f"s{k}.dcm") for k, b in enumerate(blobs)]
    (series,) = group_series(loaded)
    return volume_from_series(series), loaded, blobs


def _as_uint12(datasets: list[Dataset]) -> list[Dataset]:
    """Re-store int16 slices (intercept -1024) as 12-bit unsigned, the other common CT layout."""
    for ds in datasets:
        stored = np.frombuffer(ds.PixelData, "<i2").astype("<u2")  # HU + 1024 is 0..4095
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
        ds.PixelData = stored.tobytes()
    return datasets


# -- uncompressed, deflated, and pydicom's encoders -------------------------------------

LOSSLESS = [
    (ImplicitVRLittleEndian, {}),
    (ExplicitVRLittleEndian, {}),
    (ExplicitVRBigEndian, {}),
    (DeflatedExplicitVRLittleEndian, {}),
    (RLELossless, {}),
    (JPEGLSLossless, {}),
    (JPEG2000Lossless, {}),
]


@pytest.mark.parametrize("layout", ["int16", "uint12"])
@pytest.mark.parametrize("syntax,kwargs", LOSSLESS, ids=[TRANSFER_SYNTAXES[s] for s, _ in LOSSLESS])
def test_lossless_syntaxes_give_identical_hu(syntax: UID, kwargs: dict, layout: str) -> None:
    hu = _phantom()
    if layout == "uint12":
        native = _as_uint12(series_to_datasets(hu, SPACING))
        datasets = []
        for ds in native:
            if syntax.is_encapsulated:
                ds.compress(syntax, **kwargs)
            else:
                ds.file_meta.TransferSyntaxUID = syntax
                ds.set_original_encoding(syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian, None)
                if syntax == ExplicitVRBigEndian:
                    ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
            datasets.append(ds)
    else:
        datasets = series_to_datasets(hu, SPACING, transfer_syntax=syntax, compress_kwargs=kwargs)
    volume, loaded, blobs = _read_volume(datasets)
    assert all(UID(ds.file_meta.TransferSyntaxUID) == syntax for ds in loaded)
    np.testing.assert_array_equal(volume.hu, hu)
    if syntax == DeflatedExplicitVRLittleEndian:
        assert len(blobs[0]) < 0.8 * 64 * 64 * 2  # it really is deflated


def test_deflated_is_compressed_on_disk_and_reads_back() -> None:
    ds = series_to_datasets(np.full((1, 64, 64), -1000.0), SPACING, transfer_syntax=DeflatedExplicitVRLittleEndian)[0]
    data = dataset_to_bytes(ds)
    assert b"ORIGINAL" not in data[300:]  # the data set itself is deflated
    assert read_dataset(data).Rows == 64


@pytest.mark.parametrize("near", [1, 3])
def test_jpeg_ls_near_lossless_is_within_its_bound(near: int) -> None:
    hu = _phantom(seed=1)
    datasets = series_to_datasets(hu, SPACING, transfer_syntax=JPEGLSNearLossless, compress_kwargs={"jls_error": near})
    volume, loaded, _ = _read_volume(datasets)
    err = np.abs(volume.hu - hu)
    assert err.max() <= near  # JPEG-LS near-lossless bounds every sample's error by NEAR
    assert err.max() > 0 or near == 0
    # and equals an independent decode of the same codestream (CharLS called directly)
    import jpeg_ls

    for k, ds in enumerate(loaded):
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        direct = jpeg_ls.decode(np.frombuffer(frame, np.uint8)).astype(np.int16)  # bit pattern of int16
        np.testing.assert_array_equal(volume.hu[k], direct.astype(np.float32) - 1024)


def test_jpeg_2000_lossy_is_close_and_equals_openjpeg() -> None:
    hu = _phantom((3, 128, 128), seed=2)
    datasets = series_to_datasets(hu, SPACING, transfer_syntax=JPEG2000, compress_kwargs={"j2k_psnr": [80]})
    volume, loaded, _ = _read_volume(datasets)
    err = np.abs(volume.hu - hu)
    assert 0 < np.sqrt(np.mean(err**2)) < 8  # lossy, but close (noise SD in the phantom is 12 HU)
    assert np.abs(np.median(volume.hu[hu == hu]) - np.median(hu)) < 2
    assert choose(group_series(loaded)).candidates[0]["lossy"] is True
    import openjpeg

    frame = next(generate_frames(loaded[0].PixelData, number_of_frames=1))
    direct = openjpeg.decode(frame).astype(np.int16)
    np.testing.assert_array_equal(volume.hu[0], direct.astype(np.float32) - 1024)


def test_htj2k_syntaxes_decode_with_openjpeg() -> None:
    """No installed package encodes HTJ2K; a Part 1 codestream (which every HTJ2K decoder reads)
    under the HTJ2K UIDs checks the plumbing: syntax accepted, frame decoded, HU identical."""
    if HTJ2KLossless not in supported_transfer_syntaxes():
        pytest.skip("no HTJ2K decoder installed")
    hu = _phantom(seed=3)
    for syntax in (HTJ2KLossless, HTJ2K):
        datasets = series_to_datasets(hu, SPACING, transfer_syntax=JPEG2000Lossless)
        for ds in datasets:
            ds.file_meta.TransferSyntaxUID = syntax
        volume, _, _ = _read_volume(datasets)
        np.testing.assert_array_equal(volume.hu, hu)


# -- JPEG process 1/4/14: a small reference encoder -------------------------------------


class _Bits:
    """MSB-first bit writer with JPEG byte stuffing (0xFF -> 0xFF 0x00)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value: int, length: int) -> None:
        if length == 0:
            return
        self.acc = (self.acc << length) | (value & ((1 << length) - 1))
        self.n += length
        while self.n >= 8:
            self.n -= 8
            byte = (self.acc >> self.n) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0)
        self.acc &= (1 << self.n) - 1

    def flush(self) -> bytes:
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)  # pad with 1-bits
        return bytes(self.out)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _huffman(symbols: list[int], table_class: int, table_id: int) -> tuple[bytes, dict[int, tuple[int, int]]]:
    """A DHT segment giving every symbol a code of the same length, and the code map."""
    length = max(1, int(np.ceil(np.log2(len(symbols) + 1))))  # +1: the all-ones code is reserved
    counts = [0] * 16
    counts[length - 1] = len(symbols)
    codes = {s: (i, length) for i, s in enumerate(symbols)}
    payload = bytes([(table_class << 4) | table_id, *counts, *symbols])
    return _segment(0xC4, payload), codes


def _category(diff: int) -> int:
    return abs(int(diff)).bit_length()


def _put_value(bits: _Bits, diff: int, size: int) -> None:
    if size and size < 16:
        bits.put(diff if diff > 0 else diff - 1, size)


def jpeg_lossless(image: np.ndarray, precision: int, predictor: int = 1) -> bytes:
    """Encode a greyscale image as JPEG lossless (T.81 process 14), selection value ``predictor``."""
    x = image.astype(np.int64) & ((1 << precision) - 1)
    rows, cols = x.shape
    ra = np.zeros_like(x)
    rb = np.zeros_like(x)
    rc = np.zeros_like(x)
    ra[:, 1:], rb[1:, :], rc[1:, 1:] = x[:, :-1], x[:-1, :], x[:-1, :-1]
    pred = {1: ra, 2: rb, 3: rc, 4: ra + rb - rc, 5: ra + ((rb - rc) >> 1), 6: rb + ((ra - rc) >> 1),
            7: (ra + rb) >> 1}[predictor].copy()
    pred[0, 1:] = x[0, :-1]  # first line: left neighbour
    pred[1:, 0] = x[:-1, 0]  # first column: the sample above
    pred[0, 0] = 1 << (precision - 1)
    diff = (x - pred) & 0xFFFF
    diff = np.where(diff >= 0x8000, diff - 0x10000, diff)
    dht, codes = _huffman(list(range(17)), 0, 0)
    bits = _Bits()
    for d in diff.ravel().tolist():
        size = 16 if d == -32768 else _category(d)
        bits.put(*codes[size])
        _put_value(bits, d, size)
    sof = _segment(0xC3, bytes([precision]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + b"\x01\x01\x11\x00")
    sos = _segment(0xDA, bytes([1, 1, 0x00, predictor, 0, 0]))
    return b"\xff\xd8" + dht + sof + sos + bits.flush() + b"\xff\xd9"


_ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61,
    54, 47, 55, 62, 63,
])


def jpeg_dct(image: np.ndarray, precision: int, quant: int = 2) -> bytes:
    """Encode a greyscale image (sides multiple of 8) as sequential DCT JPEG: baseline (8-bit) or extended (12-bit)."""
    rows, cols = image.shape
    assert rows % 8 == 0 and cols % 8 == 0
    u = np.arange(8)
    dct = np.cos((2 * u[None, :] + 1) * u[:, None] * np.pi / 16) / 2
    dct[0] /= np.sqrt(2)
    shifted = image.astype(np.float64) - (1 << (precision - 1))
    max_size = 11 if precision == 8 else 15
    dc_dht, dc_codes = _huffman(list(range(max_size + 1)), 0, 0)
    ac_symbols = [0x00, 0xF0] + [(run << 4) | size for run in range(16) for size in range(1, max_size)]
    ac_dht, ac_codes = _huffman(ac_symbols, 1, 0)
    bits = _Bits()
    previous_dc = 0
    for by in range(0, rows, 8):
        for bx in range(0, cols, 8):
            coeffs = dct @ shifted[by:by + 8, bx:bx + 8] @ dct.T
            zz = np.rint(coeffs.ravel()[_ZIGZAG] / quant).astype(int).tolist()
            diff = zz[0] - previous_dc
            previous_dc = zz[0]
            size = _category(diff)
            bits.put(*dc_codes[size])
            _put_value(bits, diff, size)
            run = 0
            for value in zz[1:]:
                if value == 0:
                    run += 1
                    continue
                while run > 15:
                    bits.put(*ac_codes[0xF0])
                    run -= 16
                size = _category(value)
                bits.put(*ac_codes[(run << 4) | size])
                _put_value(bits, value, size)
                run = 0
            if run:
                bits.put(*ac_codes[0x00])
    dqt = _segment(0xDB, bytes([0]) + bytes([quant] * 64))
    sof = _segment(0xC0 if precision == 8 else 0xC1,
                   bytes([precision]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + b"\x01\x01\x11\x00")
    sos = _segment(0xDA, bytes([1, 1, 0x00, 0, 63, 0]))
    return b"\xff\xd8" + dqt + sof + dc_dht + ac_dht + sos + bits.flush() + b"\xff\xd9"


def _encapsulated(hu: np.ndarray, syntax: UID, encode, *, bits_stored: int, signed: bool,
                  slope: float = 1.0, intercept: float = -1024.0) -> tuple[list[Dataset], np.ndarray]:
    """Slices whose pixel data is ``encode(stored)``; returns them and the stored values."""
    datasets = series_to_datasets(np.zeros_like(hu), SPACING)
    stored = np.rint((hu - intercept) / slope).astype(np.int64)
    for k, ds in enumerate(datasets):
        ds.file_meta.TransferSyntaxUID = syntax
        ds.BitsAllocated = 8 if bits_stored <= 8 else 16
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, int(signed)
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.PixelData = encapsulate([encode(stored[k])])
        ds["PixelData"].VR = "OB"
        if syntax in LOSSY_TRANSFER_SYNTAXES:
            ds.LossyImageCompression = "01"
    return datasets, stored


@pytest.mark.parametrize("syntax,predictor", [(JPEGLosslessSV1, 1), (JPEGLossless, 1), (JPEGLossless, 4),
                                              (JPEGLossless, 6), (JPEGLossless, 7)])
@pytest.mark.parametrize("layout", ["uint12", "int16"])
def test_jpeg_lossless_gives_identical_hu(syntax: UID, predictor: int, layout: str) -> None:
    hu = _phantom((3, 40, 48), seed=4)
    if layout == "uint12":
        datasets, _ = _encapsulated(hu, syntax, lambda s: jpeg_lossless(s, 12, predictor), bits_stored=12, signed=False)
    else:  # int16 two's complement, intercept 0: negative stored values
        datasets, _ = _encapsulated(hu, syntax, lambda s: jpeg_lossless(s, 16, predictor), bits_stored=16, signed=True,
                                    intercept=0.0)
    volume, _, _ = _read_volume(datasets)
    np.testing.assert_array_equal(volume.hu, hu)


def test_jpeg_extended_12_bit_is_close_and_equals_libjpeg() -> None:
    hu = _phantom((3, 64, 64), seed=5)
    datasets, stored = _encapsulated(hu, JPEGExtended12Bit, lambda s: jpeg_dct(s, 12, quant=2), bits_stored=12,
                                     signed=False)
    volume, loaded, _ = _read_volume(datasets)
    err = np.abs(volume.hu - hu)
    assert 0 < err.max() <= 12 and err.mean() < 1.5
    from libjpeg import decode

    for k, ds in enumerate(loaded):
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        np.testing.assert_array_equal(volume.hu[k], decode(frame).astype(np.float32) - 1024)


@pytest.mark.parametrize("encoder", ["pillow", "reference"])
def test_jpeg_baseline_8_bit_equals_pillow(encoder: str) -> None:
    from PIL import Image

    hu = np.clip(_phantom((3, 64, 64), seed=6), -1024, 1016)
    slope, intercept = 8.0, -1024.0  # 8-bit stored values: HU = 8 * stored - 1024

    def encode(stored: np.ndarray) -> bytes:
        if encoder == "reference":
            return jpeg_dct(stored, 8, quant=1)
        buffer = io.BytesIO()
        Image.fromarray(stored.astype(np.uint8), mode="L").save(buffer, "JPEG", quality=95)
        return buffer.getvalue()

    datasets, stored = _encapsulated(hu, JPEGBaseline8Bit, encode, bits_stored=8, signed=False, slope=slope,
                                     intercept=intercept)
    volume, loaded, _ = _read_volume(datasets)
    assert np.abs(volume.hu - hu).max() / slope <= 8  # a few 8-bit levels
    from libjpeg import decode

    for k, ds in enumerate(loaded):
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        # pydicom decodes with libjpeg (its first plugin): identical to libjpeg called directly...
        np.testing.assert_array_equal(volume.hu[k], decode(frame).astype(np.float32) * slope + intercept)
        # ...and within one 8-bit level of Pillow's decode (IDCT rounding differs between libraries; T.81 allows it)
        pillow = np.asarray(Image.open(io.BytesIO(frame)), dtype=np.float32)
        assert np.abs(volume.hu[k] - (pillow * slope + intercept)).max() <= slope


# -- files written by other encoders (inside the pydicom wheel) -------------------------


def _testdata(name: str) -> bytes:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not in this pydicom")
    return Path(path).read_bytes()


def _single_slice(data: bytes) -> Dataset:
    """A pydicom test file made into a one-slice axial stack (some lack geometry)."""
    ds = read_dataset(data, "testdata")
    ds.ImageOrientationPatient = ds.get("ImageOrientationPatient") or [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = ds.get("ImagePositionPatient") or [0, 0, 0]
    ds.PixelSpacing = ds.get("PixelSpacing") or [1, 1]
    ds.SliceThickness = ds.get("SliceThickness") or 1
    return ds


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_pydicom_lossless_family_equals_the_uncompressed_original(name: str) -> None:
    reference = volume_from_series([_single_slice(_testdata("MR_small.dcm"))])
    volume = volume_from_series([_single_slice(_testdata(name))])
    np.testing.assert_array_equal(volume.hu, reference.hu)


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEGLSNearLossless_16.dcm", "JPEG2000.dcm", "693_J2KI.dcm",
                                  "J2K_pixelrep_mismatch.dcm"])
def test_pydicom_compressed_files_decode_like_pydicom(name: str) -> None:
    ds = _single_slice(_testdata(name))
    volume = volume_from_series([ds])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pydicom.dcmread(io.BytesIO(_testdata(name))).pixel_array.astype(np.float32)
    expected = expected * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    if "PixelPaddingValue" in ds:  # 693_J2KI: padding -2000 (stored) = -3024 HU, smeared by the lossy codec
        expected[expected < -1024] = PADDING_HU
    np.testing.assert_array_equal(volume.hu[0], expected)


def test_j2k_with_padding_outside_the_scan_circle_becomes_air() -> None:
    ds = _single_slice(_testdata("693_J2KI.dcm"))
    assert int(ds.PixelPaddingValue) == -2000
    hu = volume_from_series([ds]).hu
    assert hu.min() >= -1024 - 1  # no -3024 HU rim left
    assert np.count_nonzero(hu == PADDING_HU) > 0.1 * hu.size  # the corners of a 512 x 512 slice


# -- padding ------------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless])
def test_pixel_padding_value_and_range(syntax: UID) -> None:
    hu = _phantom((3, 32, 32), seed=7)
    hu[:, :2, :] = 3071.0  # a "metal-bright" padded rim, as some scanners write it
    hu[:, -2:, :] = -3024.0 + 1024  # -2000: inside HU but a padding value -> must be left alone
    datasets = series_to_datasets(hu, SPACING, transfer_syntax=syntax,
                                  extra={"PixelPaddingValue": 3071 + 1024, "PixelPaddingRangeLimit": 3071 + 1024 - 5})
    volume, _, _ = _read_volume(datasets)
    assert np.all(volume.hu[:, :2, :] == PADDING_HU)
    inside = volume.hu[:, 2:, :]
    np.testing.assert_array_equal(inside[inside > -1500], hu[:, 2:, :][inside > -1500])


def test_padding_inside_the_tissue_range_is_ignored() -> None:
    hu = _phantom((3, 16, 16), seed=8)
    datasets = series_to_datasets(hu, SPACING, extra={"PixelPaddingValue": 1024 + 40})  # would be 40 HU: water
    volume, _, _ = _read_volume(datasets)
    np.testing.assert_array_equal(volume.hu, hu)


def test_padding_value_read_with_the_other_vr_is_reinterpreted() -> None:
    hu = np.full((3, 8, 8), 0.0)
    hu[:, 0, 0] = -2000.0 - 1024  # stored -2000 (int16)
    datasets = series_to_datasets(hu, SPACING, transfer_syntax=ImplicitVRLittleEndian)
    for ds in datasets:
        ds.add_new(0x00280120, "US", 63536)  # -2000 as an unsigned 16-bit pattern
    volume, _, _ = _read_volume(datasets)
    assert np.all(volume.hu[:, 0, 0] == PADDING_HU)
    assert np.all(volume.hu[:, 1:, :] == 0.0)


# -- unsupported syntaxes and truncation --------------------------------------------------


def _with_syntax(syntax: str) -> bytes:
    ds = series_to_datasets(_phantom((1, 16, 16)), SPACING, patient_name="Doe^Jane")[0]
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    data = buffer.getvalue()
    assert data[128:132] == b"DICM"
    return data


@pytest.mark.parametrize("syntax", [
    "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 multi-component
    "1.2.840.10008.1.2.4.94",  # JPIP referenced
    "1.2.840.10008.1.2.4.53",  # retired JPEG extended (process 3 & 5)
    "1.2.826.0.1.3680043.9.9999.1",  # a made-up private syntax
])
def test_unsupported_transfer_syntax(syntax: str) -> None:
    with pytest.raises(BadInput) as exc:
        read_dataset(_with_syntax(syntax), "clip.dcm")
    assert exc.value.reason == Reason.UNSUPPORTED_TRANSFER_SYNTAX == "unsupported_transfer_syntax"
    assert "clip.dcm" in str(exc.value) and "Doe" not in str(exc.value)
    assert syntax not in str(exc.value)  # never a UID from the file
    assert exc.value.__cause__ is None


def test_the_constant_matches_the_contract() -> None:
    assert Reason.UNSUPPORTED_TRANSFER_SYNTAX == "unsupported_transfer_syntax"  # clients match on the string


def test_missing_decoder_is_unsupported_transfer_syntax(monkeypatch: pytest.MonkeyPatch) -> None:
    data = dataset_to_bytes(series_to_datasets(_phantom((1, 64, 64)), SPACING, transfer_syntax=JPEG2000Lossless)[0])
    monkeypatch.setattr(syntaxes, "decoder_available", lambda syntax: syntax != JPEG2000Lossless)
    with pytest.raises(BadInput) as exc:
        read_dataset(data, "x.dcm")
    assert exc.value.reason == Reason.UNSUPPORTED_TRANSFER_SYNTAX and "no decoder" in str(exc.value)


def test_every_listed_syntax_is_supported_here() -> None:
    # The pinned environment has every decoder; a missing plugin shows up here first.
    assert supported_transfer_syntaxes() == frozenset(TRANSFER_SYNTAXES)


COMPRESSED = [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1]


def _compressed_file(syntax: UID) -> bytes:
    if syntax == JPEGLosslessSV1:
        datasets, _ = _encapsulated(_phantom((1, 32, 32)), syntax, lambda s: jpeg_lossless(s, 12), bits_stored=12,
                                    signed=False)
        return dataset_to_bytes(datasets[0])
    return dataset_to_bytes(series_to_datasets(_phantom((1, 32, 32)), SPACING, transfer_syntax=syntax)[0])


def test_cut_inside_the_final_delimiter_loses_nothing() -> None:
    """The last byte of the sequence delimiter gone: every frame is intact, so it reads and decodes."""
    data = _compressed_file(RLELossless)
    np.testing.assert_array_equal(volume_from_series([read_dataset(data[:-1])]).hu,
                                  volume_from_series([read_dataset(data)]).hu)


@pytest.mark.filterwarnings("ignore:End of file reached")
@pytest.mark.parametrize("cut", [9, 12, 20, 200])
@pytest.mark.parametrize("syntax", COMPRESSED, ids=[TRANSFER_SYNTAXES[s] for s in COMPRESSED])
def test_truncated_compressed_file_is_not_dicom(syntax: UID, cut: int) -> None:
    data = _compressed_file(syntax)
    read_dataset(data)  # the whole file is fine
    with pytest.raises(BadInput) as exc:
        read_dataset(data[:-cut], "cut.dcm")
    assert exc.value.reason == Reason.NOT_DICOM and "truncated" in str(exc.value)


@pytest.mark.parametrize("syntax", COMPRESSED, ids=[TRANSFER_SYNTAXES[s] for s in COMPRESSED])
def test_cut_codestream_re_encapsulated_is_not_dicom(syntax: UID) -> None:
    """A codestream cut short but wrapped in well-formed items (a broken gateway) is caught too."""
    ds = read_dataset(_compressed_file(syntax))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    cut = frame[:40] if syntax == RLELossless else frame[: len(frame) // 2]
    ds.PixelData = encapsulate([cut])
    with pytest.raises(BadInput) as exc:
        read_dataset(dataset_to_bytes(ds), "cut.dcm")
    assert exc.value.reason == Reason.NOT_DICOM


def test_verify_pixels_catches_a_corrupt_codestream() -> None:
    ds = read_dataset(_compressed_file(JPEG2000Lossless))
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    frame[60:200] = b"\xff" * 140  # garbage in the middle; markers at both ends intact
    ds.PixelData = encapsulate([bytes(frame)])
    data = dataset_to_bytes(ds)
    read_dataset(data)  # structurally fine
    with pytest.raises(BadInput) as exc:
        read_dataset(data, verify_pixels=True)
    assert exc.value.reason == Reason.UNSUPPORTED_PIXEL_DATA


# -- the real CT, compressed ---------------------------------------------------------------


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_real_ct_recompressed_is_identical(real_ct_dir: Path, syntax: UID) -> None:
    files = sorted(real_ct_dir.glob("*.dcm"))[::20]  # 8 slices spread over the stack
    native = [read_dataset(f.read_bytes()) for f in files]
    expected = volume_from_series(native)
    compressed = []
    for ds in native:
        ds = read_dataset(dataset_to_bytes(ds))
        ds.compress(syntax)
        compressed.append(read_dataset(dataset_to_bytes(ds)))
    np.testing.assert_array_equal(volume_from_series(compressed).hu, expected.hu)


def test_compressed_decode_timing(real_ct_dir: Path) -> None:
    """Measure (not assert): the real CT's 141 slices native vs JPEG-LS and JPEG 2000 lossless."""
    files = sorted(real_ct_dir.glob("*.dcm"))
    native = [read_dataset(f.read_bytes()) for f in files]
    lines = []
    t0 = time.perf_counter()
    volume_from_series(native)
    t_native = time.perf_counter() - t0
    lines.append(f"native {t_native:.2f} s")
    for syntax in (JPEGLSLossless, JPEG2000Lossless):
        blobs = []
        for ds in native:
            copy = read_dataset(dataset_to_bytes(ds))
            copy.compress(syntax)
            blobs.append(dataset_to_bytes(copy))
        t0 = time.perf_counter()
        volume_from_series([read_dataset(b) for b in blobs])
        elapsed = time.perf_counter() - t0
        size = sum(map(len, blobs)) / sum(f.stat().st_size for f in files)
        lines.append(f"{TRANSFER_SYNTAXES[syntax]} read+volume {elapsed:.2f} s (x{elapsed / t_native:.1f}, size {size:.0%})")
    print("\n[real CT 141 x 512 x 512] " + " | ".join(lines))
