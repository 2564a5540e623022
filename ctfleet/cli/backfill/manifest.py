"""The local manifest: one CSV row per study of the archive (and per file that was not sent),
mapping what the API knows (upload id, study key, status, triage) back to the hospital's
own identifiers (patient ID and name, accession number, study date, StudyInstanceUID,
folder). It holds PHI by design and is written only on the hospital's machine, mode 600.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from ctfleet.errors import CtfleetError

from ..client import ApiClient
from .journal import Journal, State

COLUMNS = ("kind", "patient_id", "patient_name", "accession_number", "study_date", "study_instance_uid", "folder",
           "files", "upload_id", "study_key", "state", "status", "reason", "triage_level", "score")


def manifest_path(journal: Journal) -> Path:
    return journal.path.parent / "manifest.csv"


def write_manifest(journal: Journal, path: Path | None = None) -> Path:
    """Every study of the journal, then every file of the last scan that was not sent; atomically."""
    path = path or manifest_path(journal)
    tmp = path.with_suffix(".csv.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, COLUMNS)
        writer.writeheader()
        for s in journal.studies(this_run=False):
            writer.writerow({"kind": "study", "patient_id": s["patient_id"], "patient_name": s["patient_name"],
                             "accession_number": s["accession"], "study_date": s["study_date"],
                             "study_instance_uid": s["study_uid"], "folder": s["folders"], "files": s["files"],
                             "upload_id": s["upload_id"] or "", "study_key": s["study_key"] or "",
                             "state": s["state"], "status": s["status"] or "", "reason": s["reason"] or "",
                             "triage_level": s["triage_level"] or "", "score": "" if s["score"] is None else s["score"]})
        for f in journal.problem_files():
            writer.writerow({"kind": "file", "folder": f["source"], "files": 1, "state": "not_sent",
                             "status": "DUPLICATE" if f["duplicate"] else "UNREADABLE", "reason": f["reason"]})
    os.replace(tmp, path)
    return path


def refresh(journal: Journal, client: ApiClient) -> dict[str, int]:
    """Ask the API where every sent study is now; returns counts by server status."""
    counts: dict[str, int] = {}
    for s in journal.studies(this_run=False):
        if not s["upload_id"] or s["state"] not in (State.COMPLETED, State.CREATED):
            continue
        server = _where(client, s["upload_id"])
        journal.refreshed(s["study_uid"], server)
        counts[str(server.get("status"))] = counts.get(str(server.get("status")), 0) + 1
    return counts


def _where(client: ApiClient, upload_id: str) -> dict[str, Any]:
    """The upload's status, and once it is queued, its study's (status, reason, triage, score)."""
    try:
        upload = client.get_upload(upload_id)
        if upload.get("status") != "QUEUED" or not upload.get("study_key"):
            return {k: upload.get(k) for k in ("status", "reason", "study_key")}
        study = client.get_study(str(upload["study_key"]))
    except CtfleetError as exc:
        return {"status": "UNKNOWN", "reason": exc.reason}
    return {k: study.get(k) for k in ("status", "reason", "study_key", "triage_level", "score")}
