"""A messy hospital archive of small synthetic chest studies, for the backfill's tests and bench.

What real exports hold, on purpose: nested patient/study folders, zip files, a CD-style
tree with a DICOMDIR, a study split across two folders, a copy of a study, files that are
not DICOM (notes, thumbnails), truncated DICOM files, and an instance whose SOPInstanceUID
another file carries with other content. :func:`messy_archive` says what it wrote, so a
test can hold the backfill to every file.
"""

from __future__ import annotations

import functools
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.fileset import FileSet

from ctfleet.dev.phantom import Phantom, chest_phantom
from ctfleet.dev.synthetic import series_to_datasets
from ctfleet.intake import dataset_to_bytes

SHAPE = (16, 64, 64)  # small, so two hundred studies run through the local stack in minutes
SPACING_MM = (10.0, 5.5, 5.5)


@functools.lru_cache(maxsize=4)
def _phantom(seed: int) -> Phantom:
    return chest_phantom(SHAPE, SPACING_MM, seed=seed)


@dataclass
class Archive:
    """What :func:`messy_archive` wrote: the studies (by StudyInstanceUID) and the files that
    must be reported, not sent, by reason."""

    root: Path
    studies: dict[str, dict[str, str]] = field(default_factory=dict)  # uid -> patient id, name, accession, folder
    bad_files: dict[str, str] = field(default_factory=dict)  # relative path -> reason code
    duplicate_files: int = 0
    index_files: int = 0


def _study_files(n: int) -> tuple[str, list[tuple[str, bytes]], dict[str, str]]:
    p = _phantom(n % 4)
    who = {"patient_id": f"MRN{n // 2:05d}", "patient_name": f"Doe^Pat{n // 2}", "accession": f"ACC{n:06d}",
           "study_date": f"2026{1 + n % 12:02d}{1 + n % 28:02d}"}
    datasets = series_to_datasets(p.hu, p.spacing_mm, patient_id=who["patient_id"], patient_name=who["patient_name"],
                                  study_date=who["study_date"], extra={"AccessionNumber": who["accession"], "StudyTime": "101500", "StudyID": str(n),
                                         "SeriesNumber": 2, "InstanceNumber": 1})
    return str(datasets[0].StudyInstanceUID), [(f"IM{i:04d}.dcm", dataset_to_bytes(ds)) for i, ds in
                                               enumerate(datasets)], who


def messy_archive(root: Path, n_studies: int) -> Archive:
    """Write ``n_studies`` studies under ``root`` in the ways real archives hold them."""
    root.mkdir(parents=True, exist_ok=True)
    archive = Archive(root)
    for n in range(n_studies):
        uid, files, who = _study_files(n)
        folder = _place(root, n, files)
        archive.studies[uid] = {**who, "folder": folder}
        if n == 1:  # a copy of a whole study elsewhere: found twice, sent once
            shutil.copytree(root / folder, root / "copies" / "again")
            archive.duplicate_files += len(files)
        if n % 25 == 2:  # a truncated slice beside the study (an interrupted copy)
            name = f"{folder}/IM9999.dcm" if "!" not in folder else f"trunc{n}.dcm"
            (root / name).write_bytes(files[0][1][: len(files[0][1]) // 2])
            archive.bad_files[name] = "not_dicom"
        if n == 3:  # the same SOPInstanceUID with other bytes (a re-export with other pixels)
            data = bytearray(files[5][1])
            data[-2] ^= 0xFF
            # Later in path order than the original, which is therefore the instance sent.
            (root / "zz-reexport").mkdir(exist_ok=True)
            (root / "zz-reexport" / "conflict.dcm").write_bytes(bytes(data))
            archive.bad_files["zz-reexport/conflict.dcm"] = "duplicate_sop_conflict"
    archive.index_files = int(n_studies > 7)  # the CD of study 7
    (root / "README.txt").write_text("Export of the imaging archive, batch 7.\n")
    archive.bad_files["README.txt"] = "not_dicom"
    (root / "copies").mkdir(exist_ok=True)
    (root / "copies" / "thumb.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    archive.bad_files["copies/thumb.jpg"] = "not_dicom"
    return archive


def _place(root: Path, n: int, files: list[tuple[str, bytes]]) -> str:
    """Write one study: zipped, on a CD with a DICOMDIR, split in two folders, or in a folder."""
    if n % 10 == 3:
        path = root / "zips" / f"batch{n:04d}.zip"
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in files:
                z.writestr(f"STUDY{n}/{name}", data)
        return f"zips/batch{n:04d}.zip!STUDY{n}"
    if n == 7:
        from ctfleet.intake import read_dataset

        fs = FileSet()
        for i, (_, data) in enumerate(files):
            ds = read_dataset(data)
            ds.InstanceNumber = i + 1
            fs.add(ds)
        fs.write(root / "cd7")
        return "cd7"
    if n == 5:
        half = len(files) // 2
        for part, chunk in (("part1", files[:half]), ("part2", files[half:])):
            _write(root / f"split/{part}", chunk)
        return "split"
    folder = f"PAT{n // 2:05d}/STUDY{n:05d}"
    _write(root / folder, files)
    return folder


def _write(folder: Path, files: list[tuple[str, bytes]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files:
        (folder / name).write_bytes(data)
