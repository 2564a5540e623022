"""ctfleet.cli.deid: a folder in, de-identified series out; rejections write nothing; all or nothing on disk."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from phi import phi_corpus
from PIL import Image, ImageDraw, ImageFont

from ctfleet.cli import deid as deidcli
from ctfleet.cli.deid import run, series_pseudonym
from ctfleet.contracts import Reason
from ctfleet.dev.phantom import chest_phantom
from ctfleet.dev.synthetic import series_to_datasets
from ctfleet.errors import BadInput
from ctfleet.intake import dataset_to_bytes, read_dataset

SECRET = b"f" * 32
FACILITY = "north-general"


@lru_cache(maxsize=1)
def _corpus() -> tuple[tuple[tuple[str, bytes], ...], tuple[bytes, ...]]:
    files, planted = phi_corpus(shape=(6, 64, 64))
    return tuple(files), tuple(planted)


def _texted_series() -> list[bytes]:
    """A CT series with a patient name burned into a corner of every slice, header silent."""
    hu = chest_phantom((4, 96, 96), (5.0, 3.0, 3.0), seed=1).hu.copy()
    image = Image.new("L", (96, 96))
    ImageDraw.Draw(image).text((2, 2), "SMITH^JOHN", fill=255, font=ImageFont.load_default())
    alpha = np.asarray(image, dtype=np.float32) / 255.0
    hu = np.rint(hu * (1 - alpha) + 3071.0 * alpha)
    return [dataset_to_bytes(ds) for ds in series_to_datasets(hu, (5.0, 3.0, 3.0), patient_name="Smith^John")]


def _mr_series() -> list[bytes]:
    hu = np.zeros((3, 16, 16), dtype=np.float32)
    return [dataset_to_bytes(ds) for ds in series_to_datasets(hu, (2.0, 1.0, 1.0), modality="MR")]


def _write_input(root: Path, *, texted: bool = True, mr: bool = True, junk: bool = True,
                 corpus: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if corpus:
        for name, data in _corpus()[0]:
            path = root / "a" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    if texted:
        for k, data in enumerate(_texted_series()):
            (root / "b").mkdir(exist_ok=True)
            (root / "b" / f"{k}.dcm").write_bytes(data)
    if mr:
        for k, data in enumerate(_mr_series()):
            (root / "c" / "deep").mkdir(parents=True, exist_ok=True)
            (root / "c" / "deep" / f"{k}.dcm").write_bytes(data)
    if junk:
        (root / "notes.txt").write_text("Smith John, not DICOM\n")
        (root / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")
    return root


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.relative_to(folder).as_posix().encode() + p.read_bytes()
                    for p in sorted(folder.rglob("*")) if p.is_file())


def test_run_accepts_rejects_skips_and_leaks_nothing(tmp_path: Path) -> None:
    source = _write_input(tmp_path / "in")
    out = tmp_path / "out"
    result = run(source, out, FACILITY, SECRET)
    json.dumps(result)  # the CLI prints it as one JSON line

    corpus_series = read_dataset(_corpus()[0][0][1]).SeriesInstanceUID
    pseudonym = series_pseudonym(SECRET, FACILITY, corpus_series)
    assert result["accepted"] == [{"series": pseudonym, "files": 6}]
    assert sorted(r["reason"] for r in result["rejected"]) == sorted([Reason.BURNED_IN_TEXT, Reason.NOT_CT])
    assert {r["files"] for r in result["rejected"]} == {4, 3}
    assert sum(result["skipped"].values()) == 2  # the text file and the broken DICOMDIR
    # Layout: OUTPUT/<series pseudonym>/<index>.dcm, nothing of the rejected series.
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == (
        [pseudonym] + [f"{pseudonym}/{k:04d}.dcm" for k in range(6)]
    )
    written = [read_dataset((out / pseudonym / f"{k:04d}.dcm").read_bytes()) for k in range(6)]
    assert [int(d.InstanceNumber) for d in written] == list(range(1, 7))  # along the slice normal
    assert all(d.PatientIdentityRemoved == "YES" for d in written)
    # Not one planted byte in any file name or file content, and none in the result.
    blob = _all_bytes(out) + json.dumps(result).encode()
    leaks = [v for v in _corpus()[1] if v in blob]
    assert not leaks, leaks[:5]
    assert b"Smith" not in blob and b"SMITH" not in blob
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left behind


def test_run_is_deterministic(tmp_path: Path) -> None:
    source = _write_input(tmp_path / "in", texted=False, mr=False, junk=False)
    first = run(source, tmp_path / "one", FACILITY, SECRET)
    second = run(source, tmp_path / "two", FACILITY, SECRET)
    assert first == second
    assert _all_bytes(tmp_path / "one") == _all_bytes(tmp_path / "two")
    third = run(source, tmp_path / "three", FACILITY, b"g" * 32)
    assert third["accepted"][0]["series"] != first["accepted"][0]["series"]


def test_output_must_be_new_or_empty(tmp_path: Path) -> None:
    source = _write_input(tmp_path / "in", texted=False, mr=False, junk=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(BadInput) as err:
        run(source, busy, FACILITY, SECRET)
    assert err.value.reason == Reason.OUTPUT_EXISTS
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(BadInput) as err:
        run(source, a_file, FACILITY, SECRET)
    assert err.value.reason == Reason.OUTPUT_EXISTS
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(source, empty, FACILITY, SECRET)["accepted"]


def test_nothing_accepted_raises_and_writes_nothing(tmp_path: Path) -> None:
    source = _write_input(tmp_path / "in", corpus=False, mr=False, junk=False)
    with pytest.raises(BadInput) as err:
        run(source, tmp_path / "out", FACILITY, SECRET)
    assert err.value.reason == Reason.BURNED_IN_TEXT
    assert not (tmp_path / "out").exists()
    empty_out = tmp_path / "empty-out"
    empty_out.mkdir()
    with pytest.raises(BadInput):
        run(source, empty_out, FACILITY, SECRET)
    assert empty_out.is_dir() and not any(empty_out.iterdir())
    junk_only = _write_input(tmp_path / "junk", corpus=False, texted=False, mr=False)
    with pytest.raises(BadInput) as err:
        run(junk_only, tmp_path / "out2", FACILITY, SECRET)
    assert err.value.reason in (Reason.NOT_DICOM, Reason.NO_PIXEL_DATA)
    (tmp_path / "void").mkdir()
    with pytest.raises(BadInput) as err:
        run(tmp_path / "void", tmp_path / "out3", FACILITY, SECRET)
    assert err.value.reason == Reason.NOT_DICOM
    assert not any((tmp_path / name).exists() for name in ("out", "out2", "out3"))


def test_a_failure_midway_leaves_no_partial_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _write_input(tmp_path / "in", texted=False, mr=False, junk=False)
    real = deidcli.deidentify
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(deidcli, "deidentify", flaky)
    with pytest.raises(RuntimeError):
        run(source, tmp_path / "out", FACILITY, SECRET)
    assert calls["n"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # neither OUTPUT nor a temporary folder


def test_cli_deid_prints_one_json_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ctfleet.cli.main import main

    source = _write_input(tmp_path / "in", mr=False, junk=False)
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"ab" * 32)
    code = main(["deid", str(source), str(tmp_path / "out"), "--facility", FACILITY,
                 "--secret-file", str(secret_file)])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert len(result["accepted"]) == 1 and result["rejected"][0]["reason"] == Reason.BURNED_IN_TEXT


def test_two_facilities_with_the_same_secret_get_different_uids(tmp_path: Path) -> None:
    source = _write_input(tmp_path / "in")
    a = run(source, tmp_path / "a", "north-general", SECRET)
    b = run(source, tmp_path / "b", "south-clinic", SECRET)
    assert a["accepted"][0]["series"] != b["accepted"][0]["series"]
    first = lambda out: read_dataset(next((out).rglob("*.dcm")).read_bytes())  # noqa: E731
    da, db = first(tmp_path / "a"), first(tmp_path / "b")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert da[keyword].value != db[keyword].value, keyword


def _clean_series(n: int = 6, **kw) -> list:
    hu = chest_phantom((n, 64, 64), (5.0, 5.0, 5.0), seed=3).hu
    return series_to_datasets(hu, (5.0, 5.0, 5.0), patient_name="Doe^Jane", patient_id="MRN1", **kw)


def test_truncated_files_beside_a_good_series_are_listed_and_the_series_written(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    blobs = [dataset_to_bytes(ds) for ds in _clean_series()]
    for i, blob in enumerate(blobs):
        (src / f"IM{i}.dcm").write_bytes(blob)
    (src / "cut").mkdir()
    (src / "cut" / "IM9.dcm").write_bytes(blobs[0][: len(blobs[0]) // 2])
    (src / "cut" / "meta-only.dcm").write_bytes(blobs[1][:300])
    conflict = bytearray(blobs[2])
    conflict[-1] ^= 0xFF
    (src / "zz-copy.dcm").write_bytes(bytes(conflict))
    (src / "zz-same.dcm").write_bytes(blobs[3])
    result = run(src, tmp_path / "out", FACILITY, SECRET)
    assert [a["files"] for a in result["accepted"]] == [6]
    assert result["unreadable"] == {"count": 3, "files": [
        {"file": "cut/IM9.dcm", "reason": Reason.NOT_DICOM}, {"file": "cut/meta-only.dcm", "reason": Reason.NOT_DICOM},
        {"file": "zz-copy.dcm", "reason": Reason.DUPLICATE_SOP_CONFLICT}]}
    assert result["duplicates"] == 1 and result["skipped"] == {"duplicate_sop_conflict": 1, "not_dicom": 2}


def test_sop_uids_only_in_the_file_meta_are_repaired_consistently(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, ds in enumerate(_clean_series()):
        if i % 2 == 0:
            ds.SOPInstanceUID = ""  # only the file meta names the instance (and, for one, the class)
        if i == 2:
            del ds.SOPClassUID
        (src / f"IM{i}.dcm").write_bytes(dataset_to_bytes(ds))
    result = run(src, tmp_path / "out", FACILITY, SECRET)
    assert [r["file"] for r in result["repaired"]] == ["IM0.dcm", "IM2.dcm", "IM4.dcm"]
    assert result["repaired"][1]["repaired"] == ["SOPInstanceUID", "SOPClassUID"]
    outputs = [read_dataset(p.read_bytes()) for p in sorted((tmp_path / "out").rglob("*.dcm"))]
    assert len(outputs) == 6
    for ds in outputs:
        assert ds.SOPInstanceUID and ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert len({ds.SOPInstanceUID for ds in outputs}) == 6


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_a_series_without_study_or_series_uid_is_rejected_never_written_with_empty_uids(tmp_path, keyword):
    src = tmp_path / "in"
    src.mkdir()
    for i, ds in enumerate(_clean_series()):
        setattr(ds, keyword, "")
        (src / f"IM{i}.dcm").write_bytes(dataset_to_bytes(ds))
    with pytest.raises(deidcli.NothingAccepted) as caught:
        run(src, tmp_path / "out", FACILITY, SECRET)
    assert caught.value.reason == Reason.NO_STUDY_UID
    assert caught.value.result["rejected"] == [{"series": "series-0", "files": 6, "reason": Reason.NO_STUDY_UID}]
    assert not (tmp_path / "out").exists()
