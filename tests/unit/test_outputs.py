"""ctfleet.results.files: result files decode with the usual tools; writing is all or nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ctfleet.results.files import render, write
from ctfleet.dev.phantom import chest_phantom, lung_point_mm, Opacity
from model.analysis import analyze
from model.volume import Volume


@pytest.fixture(scope="module")
def result() -> tuple:
    p = chest_phantom(opacities=[Opacity("ggo", lung_point_mm("right", (0.5, 0.5, 0.5)), 15.0)])
    # A non-trivial affine: origin shift, to check it round-trips.
    v = Volume.from_spacing(p.hu, p.spacing_mm)
    affine = v.affine.copy()
    affine[:3, 3] = (120.0, -30.5, -250.0)
    v = Volume(hu=v.hu, spacing_mm=v.spacing_mm, affine=affine)
    a = analyze(v, "cpu")
    return v, a, render(a, v)


def test_labels_nifti_on_grid(result: tuple, tmp_path: Path) -> None:
    v, a, files = result
    path = tmp_path / "labels.nii.gz"
    path.write_bytes(files["labels.nii.gz"])
    img = nib.load(str(path))
    assert np.allclose(img.affine, v.affine)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.uint8
    assert np.array_equal(data.transpose(2, 1, 0), a.labels)


def test_report_json(result: tuple) -> None:
    _, a, files = result
    text = files["report.json"].decode()
    assert json.loads(text) == json.loads(json.dumps(a.report))
    assert text.startswith("{\n  ")


def test_pngs_decode(result: tuple) -> None:
    _, a, files = result
    pngs = {k: v for k, v in files.items() if k.startswith("overlay/")}
    assert set(pngs) == {f"overlay/{n}.png" for n in a.overlays}
    for name, data in pngs.items():
        img = np.asarray(Image.open(io.BytesIO(data)))
        assert img.shape == a.overlays[name[len("overlay/") : -4]].shape


def test_write_then_replace(result: tuple, tmp_path: Path) -> None:
    _, _, files = result
    out = tmp_path / "out"
    write(files, out)
    assert (out / "report.json").read_bytes() == files["report.json"]
    assert (out / "overlay").is_dir()
    write({"report.json": b"{}"}, out)
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        write({"a.txt": b"x", "../escape.txt": b"y"}, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_no_seg_without_sources(result: tuple) -> None:
    _, _, files = result
    assert "seg.dcm" not in files


def test_seg_with_sources() -> None:
    """From DICOM slices (shuffled, as a job's keys come) to a SEG that matches labels.nii.gz."""
    import random

    import highdicom as hd

    from ctfleet.dev.synthetic import series_to_datasets
    from ctfleet.intake import volume_from_series
    from ctfleet.dev.phantom import from_preset

    p = from_preset("high")
    datasets = series_to_datasets(p.hu, p.spacing_mm)
    shuffled = list(datasets)
    random.Random(1).shuffle(shuffled)
    v = volume_from_series(shuffled)
    a = analyze(v, "cpu")
    files = render(a, v, source_datasets=shuffled)
    assert set(files) >= {"labels.nii.gz", "report.json", "seg.dcm"}
    seg = hd.seg.segread(io.BytesIO(files["seg.dcm"]))
    assert seg.get_segment_description(1).algorithm_identification[0].AlgorithmVersion == a.report["model_version"]
    labels = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in datasets], combine_segments=True,
                                               ignore_spatial_locations=True)
    assert np.array_equal(labels, a.labels)
    with pytest.raises(ValueError):
        render(a, v, source_datasets=shuffled[:-1])
