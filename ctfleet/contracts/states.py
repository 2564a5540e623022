"""The states of an upload, a study and its alert, and the words for the model's outputs.

Which transitions are allowed, and under which condition, is owned by
:mod:`ctfleet.aws.repositories`; this module only names the states.
"""

from __future__ import annotations

from model.labels import Label, TriageLevel

__all__ = ["AlertState", "Label", "Status", "TriageLevel", "UploadStatus"]


class Status:
    """Study record statuses, in the order a study moves through them."""

    RECEIVED = "RECEIVED"
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    DONE = "DONE"
    REJECTED = "REJECTED"
    FAILED = "FAILED"
    FINAL = frozenset({DONE, REJECTED, FAILED})


class UploadStatus:
    """Upload record statuses: every upload ends QUEUED, REJECTED or FAILED."""

    RECEIVED = "RECEIVED"  # created, files may be arriving
    COMPLETE = "COMPLETE"  # every promised file is present; manifest written
    QUEUED = "QUEUED"  # ingest made (or found) a study of it and queued its job
    REJECTED = "REJECTED"
    FAILED = "FAILED"
    FINAL = frozenset({QUEUED, REJECTED, FAILED})


class AlertState:
    """A HIGH study's alert: claimed (SENDING) by one sender, then SENT."""

    SENDING = "SENDING"
    SENT = "SENT"
