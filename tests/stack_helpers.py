"""Helpers for tests against a running local stack: waiting on a study, counting its alerts,
making a new study of the same images."""

from __future__ import annotations

import io
import time
from typing import Any


def wait_processing(api: Any, upload_id: str, timeout_s: float = 120, poll_s: float = 0.05) -> dict[str, Any]:
    """The study record once its job runs (fails if it finished first, or never started)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        up = api.get_upload(upload_id)
        if up.get("study_key"):
            study: dict[str, Any] = api.get_study(up["study_key"])
            if study["status"] == "PROCESSING":
                return study
            assert study["status"] == "QUEUED", f"finished before it could be interrupted: {study['status']}"
        time.sleep(poll_s)
    raise AssertionError("the study never started processing")


def alerts_for(stack: Any, key: str, seconds: float = 5.0) -> int:
    """Alerts for study ``key`` delivered to the stack's inbox within ``seconds``."""
    alerts: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alerts += stack.drain_alerts(wait_s=1)
    return sum(1 for a in alerts if a["study_key"] == key)


def another_study(files: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The same images under new UIDs: a study of its own (the same one again would be a duplicate)."""
    import pydicom
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    out = []
    for name, blob in files:
        ds = pydicom.dcmread(io.BytesIO(blob))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buf = io.BytesIO()
        ds.save_as(buf)
        out.append((name, buf.getvalue()))
    return out
