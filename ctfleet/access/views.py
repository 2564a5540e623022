"""What leaves the server: an explicit allow-list of record fields per role.

Anything not listed stays inside: the job message, object keys and prefixes, the upload
id behind a study, the worker instance, leases, claims and failure counters.
"""

from __future__ import annotations

from typing import Any

from .principal import Principal, Right

UPLOAD_FIELDS = ("upload_id", "facility", "priority", "status", "reason", "study_key", "files", "bytes",
                 "created_at", "completed_at", "ingested_at", "duplicate_of")
# Where a study is: enough for IT to follow a backfill.
STUDY_STATUS_FIELDS = ("study_key", "facility", "priority", "status", "reason", "created_at", "queued_at",
                       "started_at", "done_at", "finished_at", "attempts")
# The triage itself: for IT too, whose local manifest maps it back to the hospital's patients.
STUDY_TRIAGE_FIELDS = ("triage_level", "score")
# What it showed: for the clinical roles.
STUDY_FINDING_FIELDS = ("severity_score", "flags", "lung_volume_ml", "lesion_volume_ml",
                        "involvement_pct", "model_version", "alert_state", "alerted_at", "signoff")


def upload_view(record: dict[str, Any], who: Principal) -> dict[str, Any]:
    return {k: record[k] for k in UPLOAD_FIELDS if k in record}


def study_view(record: dict[str, Any], who: Principal) -> dict[str, Any]:
    fields = (STUDY_STATUS_FIELDS + (STUDY_TRIAGE_FIELDS if who.may(Right.TRIAGE) else ())
              + (STUDY_FINDING_FIELDS if who.may(Right.FINDINGS) else ()))
    return {k: record[k] for k in fields if k in record}
