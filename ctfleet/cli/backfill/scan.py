"""Walk an archive and say, for every file, what it is: an image of which study, or why not.

An archive is a folder tree as PACS exports and CD importers leave them: nested folders,
zip files (their members are files like any other), DICOMDIR index files. Each file is
read once with the same checks ingest applies (:func:`ctfleet.intake.read_dataset`:
parsed, pixel data checked for completeness, never decoded) and hashed. The walk is a
generator in sorted path order, so memory does not grow with the archive.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ctfleet.contracts import Reason
from ctfleet.errors import BadInput
from ctfleet.intake import read_dataset
from ctfleet.intake.headers import text_value

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # the SOP class of a DICOMDIR
ZIP_MEMBER_SEP = "!"  # "scans/batch.zip!0001/IM0001": a member of a zip file
MAX_MEMBER_BYTES = 2 * 1024**3  # the API's file limit; larger zip members are not read


class Kind:
    IMAGE = "image"  # a DICOM image of a study: sent
    INDEX = "index"  # a DICOMDIR: the images it lists are found by the walk itself
    UNREADABLE = "unreadable"  # not DICOM, truncated, not an image, a bad zip: reported with a reason


@dataclass(frozen=True)
class Source:
    """Where a file's bytes live: a path under the archive, or a member of a zip file there."""

    path: str  # relative to the archive root, '/'-separated
    member: str = ""  # inside the zip file at ``path``
    size: int = 0
    mtime_ns: int = 0

    @property
    def name(self) -> str:
        return f"{self.path}{ZIP_MEMBER_SEP}{self.member}" if self.member else self.path

    @property
    def folder(self) -> str:
        """The folder the file sits in (a zip file counts as a folder)."""
        inner = self.name.rsplit("/", 1)[0] if "/" in self.name else ""
        return inner if not self.member or "/" in self.member else self.path

    def read(self, root: Path) -> bytes:
        if not self.member:
            return (root / self.path).read_bytes()
        with zipfile.ZipFile(root / self.path) as archive:
            return archive.read(self.member)


@dataclass(frozen=True)
class Scanned:
    """One file, classified. Header values are PHI: they stay in the hospital's journal."""

    source: Source
    kind: str
    sha256: str = ""
    reason: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    patient_id: str = ""
    patient_name: str = ""
    accession: str = ""
    study_date: str = ""


def walk(root: Path) -> Iterator[Source]:
    """Every file under ``root`` and every member of every zip file there, in sorted order."""
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            try:
                stat = path.stat()
            except OSError:
                yield Source(rel)
                continue
            if name.lower().endswith(".zip") and zipfile.is_zipfile(path):
                yield from _members(path, rel, stat.st_mtime_ns)
            else:
                yield Source(rel, size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def _members(path: Path, rel: str, mtime_ns: int) -> Iterator[Source]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = sorted((i for i in archive.infolist() if not i.is_dir()), key=lambda i: i.filename)
    except (OSError, zipfile.BadZipFile):
        yield Source(rel, size=-1, mtime_ns=mtime_ns)  # read() fails: reported as a bad archive
        return
    for info in infos:
        yield Source(rel, info.filename, size=info.file_size, mtime_ns=mtime_ns)


def classify(root: Path, source: Source) -> Scanned:
    """Read one file and say what it is (headers and completeness only; pixels are never decoded)."""
    if source.member and source.size > MAX_MEMBER_BYTES:
        return Scanned(source, Kind.UNREADABLE, reason=Reason.UPLOAD_TOO_LARGE)
    try:
        data = source.read(root)
    except (OSError, zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError):
        return Scanned(source, Kind.UNREADABLE, reason=Reason.BAD_ARCHIVE if source.member or source.size < 0
                       else Reason.UNREADABLE)
    sha = hashlib.sha256(data).hexdigest()
    if data[128:132] == b"DICM" and MEDIA_STORAGE_DIRECTORY.encode() in data[132:1024]:
        return Scanned(source, Kind.INDEX, sha)
    try:
        ds = read_dataset(data)
    except BadInput as exc:
        return Scanned(source, Kind.UNREADABLE, sha, reason=exc.reason)
    meta = getattr(ds, "file_meta", None)
    sop = text_value(ds, "SOPInstanceUID") or (text_value(meta, "MediaStorageSOPInstanceUID") if meta else "")
    study = text_value(ds, "StudyInstanceUID")
    if not study:
        return Scanned(source, Kind.UNREADABLE, sha, reason=Reason.NO_STUDY_UID)
    return Scanned(source, Kind.IMAGE, sha, study_uid=study, series_uid=text_value(ds, "SeriesInstanceUID"),
                   sop_uid=sop, patient_id=text_value(ds, "PatientID"), patient_name=text_value(ds, "PatientName"),
                   accession=text_value(ds, "AccessionNumber"), study_date=text_value(ds, "StudyDate"))
