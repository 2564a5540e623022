"""From the bytes of an upload to a de-identified study: the pure core of ingest.

No AWS here: ``dispatcher.ingest`` downloads and verifies the files, calls
:func:`prepare_study`, and writes what it returns. ``make bench`` times the
same function.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ctfleet.contracts import Reason, series_id, study_key
from ctfleet.errors import BadInput
from ctfleet.intake import pixels
from ctfleet.intake.choice import choose
from ctfleet.intake.deid import deidentify
from ctfleet.intake.reading import read_dataset, repair_from_meta
from ctfleet.intake.series import group_series
from ctfleet.intake.writing import dataset_to_bytes


@dataclass(frozen=True)
class PreparedStudy:
    """A de-identified series ready to store, and what ingest learned on the way (no PHI)."""

    study_key: str
    series_id: str
    files: tuple[bytes, ...]  # de-identified DICOM, ordered along the slice normal
    series_found: int
    files_skipped: dict[str, int]
    choice: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)


def prepare_study(blobs: list[bytes], *, secret: bytes, facility: str) -> PreparedStudy:
    """Read, validate, choose the series, check pixel safety and de-identify.

    Parameters
    ----------
    blobs : list of bytes
        Every file of one upload, as sent.
    secret : bytes
        The facility's HMAC secret (study keys, UIDs, dates).
    facility : str
        The facility id.

    Raises
    ------
    BadInput
        With the reason code of the first thing that makes the upload unusable.
    """
    t0 = time.perf_counter()
    datasets = []
    skipped: Counter[str] = Counter()
    for i, blob in enumerate(blobs):  # file names may carry PHI: errors name an index
        try:
            ds = read_dataset(blob, name=f"file {i}")
            repair_from_meta(ds)  # SOP UIDs only in the file meta: the data set gets them too
        except BadInput as exc:
            skipped[exc.reason] += 1  # e.g. a DICOMDIR or a stray text file beside the images
            continue
        datasets.append(ds)
    if not datasets:
        reason = skipped.most_common(1)[0][0] if skipped else Reason.NOT_DICOM
        raise BadInput(reason, f"none of the {len(blobs)} files is a usable DICOM image")
    found = group_series(datasets)
    choice = choose(found)
    chosen = choice.series
    if not chosen.study_instance_uid or not chosen.series_instance_uid:
        # Its study key, series folder and replacement UIDs would all derive from nothing.
        raise BadInput(Reason.NO_STUDY_UID, "the series has no StudyInstanceUID or SeriesInstanceUID")
    # Pixels that may show identity (burned-in text, screenshots) never get past ingest.
    pixels.check_series(list(chosen.datasets))
    t_read = time.perf_counter()
    key = study_key(secret, facility, chosen.study_instance_uid)
    series = series_id(secret, facility, chosen.series_instance_uid)
    clean = tuple(dataset_to_bytes(deidentify(ds, secret, facility=facility)) for ds in chosen.datasets)
    t_deid = time.perf_counter()
    return PreparedStudy(
        study_key=key,
        series_id=series,
        files=clean,
        series_found=len(found),
        files_skipped=dict(skipped),
        choice=choice.as_dict(),
        timings_s={"read": t_read - t0, "deidentify": t_deid - t_read},
    )
