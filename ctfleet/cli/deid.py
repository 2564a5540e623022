"""``ctfleet deid INPUT OUTPUT --facility F``: de-identify every series of a folder, no AWS.

The work behind the command (the argument parsing lives in :mod:`ctfleet.cli.main`):

1. every file under INPUT (recursively, in sorted path order) is read with
   :func:`ctfleet.intake.reading.read_dataset`; nothing is skipped silently: a file that
   is not a DICOM image (a DICOMDIR, a text file, a truncated file) is listed under
   ``unreadable`` with its path and reason, a second file with a SOPInstanceUID already
   seen is counted as a ``duplicate`` (same bytes) or listed as ``duplicate_sop_conflict``
   (other bytes; the first in path order is kept), and a SOPInstanceUID or SOPClassUID
   present only in the file meta is copied into the data set and listed under ``repaired``;
2. the images are grouped into stacks with :func:`ctfleet.intake.series.group_series`;
3. each stack goes through :func:`ctfleet.intake.pixels.check_series`; a rejected
   stack writes nothing and is listed with its reason code; so is a stack without a
   Study or Series Instance UID (``no_study_uid``): its replacement UIDs and folder name
   would derive from nothing;
4. each accepted stack is de-identified slice by slice
   (:func:`ctfleet.intake.deid.deidentify`) and written as
   ``OUTPUT/<series pseudonym>/<index>.dcm``, index ``0000``.. along the slice normal.

The series pseudonym is the one ingest uses for S3 keys: the first 16 hex
characters of HMAC-SHA256(secret, SeriesInstanceUID) (:func:`ctfleet.contracts.study_key`);
a SeriesInstanceUID split into several stacks (a scout stored with the axial
slices) gets ``-2``, ``-3`` ... on its later stacks.

Everything is written into a temporary sibling folder which is renamed to
OUTPUT only at the end, so a failure (or nothing accepted) leaves no partial
output. Nothing the command returns or raises carries a header value: pseudonyms,
counts, reason codes, and the paths (relative to INPUT) of the files it could not use,
which stay on the machine that ran it, as its input does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from ctfleet.contracts import Reason, check_facility, series_id
from ctfleet.errors import BadInput
from ctfleet.intake.deid import deidentify
from ctfleet.local.secrets import local_secret
from ctfleet.settings import Settings
from ctfleet.intake.pixels import check_series
from ctfleet.intake.headers import text_value
from ctfleet.intake.reading import read_dataset, repair_from_meta
from ctfleet.intake.series import group_series
from ctfleet.intake.writing import dataset_to_bytes

SERIES_PSEUDONYM_HEX = 16
_Plan = list[tuple[str, tuple[Dataset, ...]]]  # (folder name, slices) of every accepted stack


def series_pseudonym(secret: bytes, facility: str, series_instance_uid: str) -> str:
    """The folder name of one series: short HMAC of its SeriesInstanceUID (as ingest names it).

    Parameters
    ----------
    secret : bytes
    series_instance_uid : str

    Returns
    -------
    str
        :data:`SERIES_PSEUDONYM_HEX` lowercase hex characters.
    """
    return series_id(secret, facility, series_instance_uid)[:SERIES_PSEUDONYM_HEX]


class NothingAccepted(BadInput):
    """No series was accepted; ``result`` still says what was rejected and why."""

    def __init__(self, reason: str, message: str, result: dict[str, Any]) -> None:
        super().__init__(reason, message)
        self.result = result


def _check_output(output_dir: Path) -> None:
    if output_dir.is_symlink() or (output_dir.exists() and not output_dir.is_dir()):
        raise BadInput(Reason.OUTPUT_EXISTS, "OUTPUT exists and is not a folder; give a new or empty folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise BadInput(Reason.OUTPUT_EXISTS, "OUTPUT is not empty; give a new or empty folder")


def _input_files(input_dir: Path) -> list[Path]:
    files: list[Path] = []
    for root, dirs, names in os.walk(input_dir):
        dirs.sort()
        files.extend(Path(root) / name for name in sorted(names))
    return files


def run(input_dir: Path, output_dir: Path, facility: str, secret: bytes) -> dict[str, Any]:
    """De-identify every series under ``input_dir`` into ``output_dir``.

    Parameters
    ----------
    input_dir : pathlib.Path
        Folder searched recursively; any file that is not a DICOM image is skipped.
    output_dir : pathlib.Path
        Created; must not exist yet, or be an empty folder.
    facility : str
        The facility id (a lowercase slug): scopes patient pseudonyms and date shifts.
    secret : bytes
        The facility's secret: UIDs, pseudonyms, date shifts and folder names derive from it.

    Returns
    -------
    dict
        ``{"accepted": [{"series": pseudonym, "files": n}],
        "rejected": [{"series": pseudonym, "files": n, "reason": code}],
        "skipped": {reason: count}}``, series in the order of
        :func:`ctfleet.intake.series.group_series`.

    Raises
    ------
    BadInput
        ``output_exists`` when ``output_dir`` is a file or a non-empty folder
        (checked first: nothing is read); ``unknown_facility`` for a malformed
        facility; when no series is accepted, the most common rejection reason
        (or, with no DICOM image at all, the most common reason files were
        skipped, ``not_dicom`` for an empty folder). Nothing is written then.
    """
    check_facility(facility)
    if not secret:
        raise BadInput(Reason.NO_SECRET, "the facility secret is empty")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    _check_output(output_dir)
    if not input_dir.is_dir():
        raise BadInput(Reason.NO_INPUT, "INPUT is not a folder")
    read = _read_all(input_dir)
    datasets, skipped = read.datasets, read.skipped
    plan, accepted, rejected = _plan(datasets, secret, facility)
    result = {"accepted": accepted, "rejected": rejected, "skipped": dict(sorted(skipped.items())),
              "unreadable": {"count": len(read.unreadable), "files": read.unreadable},
              "repaired": read.repaired, "duplicates": read.duplicates}
    if not plan:
        if rejected:
            reason = Counter(r["reason"] for r in rejected).most_common(1)[0][0]
            raise NothingAccepted(reason, f"none of {len(rejected)} series was accepted", result)
        reason = skipped.most_common(1)[0][0] if skipped else Reason.NOT_DICOM
        raise NothingAccepted(reason, f"no DICOM image among {sum(skipped.values())} files", result)

    _write(output_dir, plan, secret, facility)
    return result


@dataclass
class _Read:
    """Every file under INPUT, accounted for."""

    datasets: list[Dataset] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> files not used
    unreadable: list[dict[str, str]] = field(default_factory=list)  # {file, reason}, in path order
    repaired: list[dict[str, Any]] = field(default_factory=list)  # {file, repaired: [keywords]}
    duplicates: int = 0  # byte-identical copies of an instance already read


def _read_all(input_dir: Path) -> _Read:
    """Every DICOM image under ``input_dir``, and every file not used with its reason."""
    out = _Read()
    seen: dict[str, str] = {}  # SOPInstanceUID -> sha256 of the first file carrying it
    for path in _input_files(input_dir):
        name = path.relative_to(input_dir).as_posix()
        try:
            data = path.read_bytes()
            # Error messages name no path (they may reach logs); the listing below does.
            ds = read_dataset(data)
            repaired = repair_from_meta(ds)
        except BadInput as exc:
            out.skipped[exc.reason] += 1
            out.unreadable.append({"file": name, "reason": exc.reason})
            continue
        except OSError:
            out.skipped[Reason.UNREADABLE] += 1
            out.unreadable.append({"file": name, "reason": Reason.UNREADABLE})
            continue
        if repaired:
            out.repaired.append({"file": name, "repaired": list(repaired)})
        sop, digest = text_value(ds, "SOPInstanceUID"), hashlib.sha256(data).hexdigest()
        if sop and sop in seen:
            if seen[sop] == digest:
                out.duplicates += 1
            else:
                out.skipped[Reason.DUPLICATE_SOP_CONFLICT] += 1
                out.unreadable.append({"file": name, "reason": Reason.DUPLICATE_SOP_CONFLICT})
            continue
        if sop:
            seen[sop] = digest
        out.datasets.append(ds)
    out.unreadable.sort(key=lambda f: f["file"])
    return out


def _plan(datasets: list[Dataset], secret: bytes, facility: str) -> tuple[_Plan, list[dict[str, Any]], list[dict[str, Any]]]:
    """Name every stack and check its pixels: (what to write, the accepted, the rejected)."""
    accepted: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    plan: _Plan = []
    used: Counter[str] = Counter()
    for n, series in enumerate(group_series(datasets)):
        if not series.series_instance_uid or not series.study_instance_uid:
            rejected.append({"series": f"series-{n}", "files": series.n_slices, "reason": Reason.NO_STUDY_UID})
            continue
        base = series_pseudonym(secret, facility, series.series_instance_uid)
        used[base] += 1
        name = base if used[base] == 1 else f"{base}-{used[base]}"
        try:
            check_series(series.datasets)
        except BadInput as exc:
            rejected.append({"series": name, "files": series.n_slices, "reason": exc.reason})
            continue
        plan.append((name, series.datasets))
        accepted.append({"series": name, "files": series.n_slices})
    return plan, accepted, rejected


def _write(output_dir: Path, plan: _Plan, secret: bytes, facility: str) -> None:
    """Write into a temporary sibling, then rename: OUTPUT appears whole or not at all."""
    parent = output_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".partial", dir=parent))
    try:
        for name, slices in plan:
            folder = tmp / name
            folder.mkdir()
            for index, ds in enumerate(slices):
                data = dataset_to_bytes(deidentify(ds, secret, facility=facility))
                (folder / f"{index:04d}.dcm").write_bytes(data)
        _check_output(output_dir)  # someone may have written there meanwhile
        if output_dir.is_dir():
            output_dir.rmdir()  # empty, as checked; rename cannot replace a folder
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["run", "series_pseudonym"]


def command(args: argparse.Namespace, settings: Settings) -> int:
    facility = check_facility(args.facility)
    if args.secret_file is not None:
        try:
            secret = args.secret_file.read_bytes().strip()
        except OSError as exc:
            raise BadInput(Reason.NO_SECRET, f"cannot read --secret-file {args.secret_file}") from exc
        if len(secret) < 16:
            raise BadInput(Reason.NO_SECRET, "the secret file must hold at least 16 bytes (e.g. 64 hex characters)")
    else:
        secret = local_secret(settings, facility)
    if not args.input.is_dir():
        raise BadInput(Reason.NO_INPUT, f"{args.input} is not a folder")
    try:
        result = run(args.input, args.output, facility, secret)
    except NothingAccepted as exc:
        print(json.dumps(exc.result, sort_keys=True))  # what was rejected, and why; then exit 2
        raise
    accepted = sum(a["files"] for a in result["accepted"])
    print(f"deid: {len(result['accepted'])} series ({accepted} files) written to {args.output}, "
          f"{len(result['rejected'])} rejected", file=sys.stderr)
    print(json.dumps(result, sort_keys=True))
    return 0
