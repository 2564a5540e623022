"""The backfill's journal: one SQLite file on the hospital's machine, committed as work happens.

Every file found (what it is, its hash, the header values that place it: PHI, which is why
the journal never leaves the machine), every study, and every upload the API handed out
is written down before the next step starts. A run killed at any point resumes from it:
files already hashed are not read again (same size and modification time), a study whose
upload was created but not completed resumes that upload (only the files S3 lacks are
sent), a completed study is never sent again unless its content changed.

Study states: ``pending`` (found, nothing sent) -> ``created`` (the API gave an upload id)
-> ``completed`` (the API accepted it: ingest has it) | ``rejected`` (the API refused it,
with a reason) | ``failed`` (it kept failing; a new run tries again). ``status`` holds the
server's view, refreshed by ``ctfleet backfill status``.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctfleet.contracts import Reason

from .scan import Kind, Scanned, Source

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    source TEXT PRIMARY KEY, path TEXT NOT NULL, member TEXT NOT NULL, folder TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, kind TEXT NOT NULL, sha256 TEXT, reason TEXT,
    study_uid TEXT, series_uid TEXT, sop_uid TEXT, patient_id TEXT, patient_name TEXT, accession TEXT,
    study_date TEXT, duplicate TEXT, upload_name TEXT, seen INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS files_by_study ON files (study_uid, source);
CREATE INDEX IF NOT EXISTS files_by_sop ON files (sop_uid, source);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY, content_sha TEXT NOT NULL, files INTEGER NOT NULL, bytes INTEGER NOT NULL,
    folders TEXT NOT NULL, patient_id TEXT, patient_name TEXT, accession TEXT, study_date TEXT,
    state TEXT NOT NULL, upload_id TEXT, study_key TEXT, status TEXT, reason TEXT, triage_level TEXT,
    score REAL, seen INTEGER NOT NULL, sent_in INTEGER, updated_at REAL);
CREATE TABLE IF NOT EXISTS runs (run INTEGER PRIMARY KEY, started_at REAL NOT NULL);
"""


class State:
    PENDING = "pending"
    CREATED = "created"
    COMPLETED = "completed"
    REJECTED = "rejected"
    FAILED = "failed"


class Dup:
    SAME = "same"  # the same instance, byte for byte, found again (a copied folder, a zip of it)
    CONFLICT = "conflict"  # the same SOPInstanceUID with other content: reported, not sent


@dataclass(frozen=True)
class StudyRow:
    study_uid: str
    state: str
    upload_id: str | None
    files: int
    bytes: int


def journal_path(home: Path, root: Path) -> Path:
    """Where the journal of the archive at ``root`` lives: one per archive, under the ctfleet home."""
    resolved = root.resolve()
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return home / "backfill" / f"{resolved.name or 'root'}-{tag}" / "journal.sqlite"


class Journal:
    """The journal of one archive. Thread-safe: senders share it (one connection, one lock)."""

    def __init__(self, path: Path, *, new_run: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.lock = threading.Lock()
        with self.lock:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process
            self.db.executescript(SCHEMA)
            if new_run:
                self.db.execute("INSERT INTO runs (started_at) VALUES (?)", (time.time(),))
            # Without a new run (``backfill status``): the files of the last scan.
            self.run = int(self.db.execute("SELECT COALESCE(MAX(run), 0) FROM runs").fetchone()[0])
        path.chmod(0o600)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def _write(self, sql: str, args: tuple[Any, ...] | list[tuple[Any, ...]], many: bool = False) -> None:
        with self.lock:
            if many:
                self.db.execute("BEGIN")
                self.db.executemany(sql, args)
                self.db.execute("COMMIT")
            else:
                self.db.execute(sql, args)

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    # -- scan -----------------------------------------------------------------------

    def known(self, source: Source) -> bool:
        """The file was classified before, unchanged since (same size and mtime): mark it seen."""
        with self.lock:
            cur = self.db.execute("UPDATE files SET seen = ? WHERE source = ? AND size = ? AND mtime_ns = ?",
                                  (self.run, source.name, source.size, source.mtime_ns))
            return cur.rowcount == 1

    def record_files(self, scanned: list[Scanned]) -> None:
        rows = [(s.source.name, s.source.path, s.source.member, s.source.folder, s.source.size, s.source.mtime_ns,
                 s.kind, s.sha256, s.reason, s.study_uid, s.series_uid, s.sop_uid, s.patient_id, s.patient_name,
                 s.accession, s.study_date, self.run) for s in scanned]
        self._write("INSERT OR REPLACE INTO files (source, path, member, folder, size, mtime_ns, kind, sha256, reason,"
                    " study_uid, series_uid, sop_uid, patient_id, patient_name, accession, study_date, seen)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows, many=True)

    def mark_duplicates(self) -> None:
        """The first file (in path order) of each SOPInstanceUID is the instance; later ones are
        the same (identical bytes) or a conflict (other bytes)."""
        updates: list[tuple[str | None, str]] = []
        current, first_sha = None, None
        with self.lock:
            cursor = self.db.execute("SELECT source, sop_uid, sha256 FROM files WHERE seen = ? AND kind = ? "
                                     "AND sop_uid != '' ORDER BY sop_uid, source", (self.run, Kind.IMAGE))
            for source, sop, sha in cursor:
                if sop != current:
                    current, first_sha = sop, sha
                    updates.append((None, source))
                else:
                    updates.append((Dup.SAME if sha == first_sha else Dup.CONFLICT, source))
        for start in range(0, len(updates), 5000):
            self._write("UPDATE files SET duplicate = ? WHERE source = ?", updates[start:start + 5000], many=True)

    def build_studies(self) -> None:
        """One study per StudyInstanceUID from this run's images; a study seen before keeps its state
        unless its content changed (then it is sent again as a new upload)."""
        for study in self._study_summaries():
            old = self._rows("SELECT content_sha, state FROM studies WHERE study_uid = ?", (study["study_uid"],))
            if old and old[0]["content_sha"] == study["content_sha"]:
                state = State.PENDING if old[0]["state"] == State.FAILED else old[0]["state"]
                self._write("UPDATE studies SET seen = ?, state = ?, folders = ? WHERE study_uid = ?",
                            (self.run, state, study["folders"], study["study_uid"]))
                continue
            self._write(
                "INSERT OR REPLACE INTO studies (study_uid, content_sha, files, bytes, folders, patient_id,"
                " patient_name, accession, study_date, state, seen, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (study["study_uid"], study["content_sha"], study["files"], study["bytes"], study["folders"],
                 study["patient_id"], study["patient_name"], study["accession"], study["study_date"], State.PENDING,
                 self.run, time.time()))

    def _study_summaries(self) -> Iterator[dict[str, Any]]:
        """Each study of this run's images, with a hash of its content (instances and their bytes)."""
        with self.lock:
            uids = [r[0] for r in self.db.execute(
                "SELECT DISTINCT study_uid FROM files WHERE seen = ? AND kind = ? AND duplicate IS NULL",
                (self.run, Kind.IMAGE))]
        for uid in sorted(uids):
            rows = self._rows("SELECT * FROM files WHERE seen = ? AND kind = ? AND duplicate IS NULL AND study_uid = ?"
                              " ORDER BY sop_uid, source", (self.run, Kind.IMAGE, uid))
            digest = hashlib.sha256()
            for r in rows:
                digest.update(f"{r['sop_uid']}\0{r['sha256']}\n".encode())
            first = min(rows, key=lambda r: r["source"])
            yield {"study_uid": uid, "content_sha": digest.hexdigest(), "files": len(rows),
                   "bytes": sum(r["size"] for r in rows), "folders": ";".join(sorted({r["folder"] for r in rows})),
                   "patient_id": first["patient_id"], "patient_name": first["patient_name"],
                   "accession": first["accession"], "study_date": first["study_date"]}

    # -- send -----------------------------------------------------------------------

    def studies_to_send(self) -> list[StudyRow]:
        return [StudyRow(r["study_uid"], r["state"], r["upload_id"], r["files"], r["bytes"]) for r in self._rows(
            "SELECT * FROM studies WHERE seen = ? AND state IN (?, ?) ORDER BY study_uid",
            (self.run, State.PENDING, State.CREATED))]

    def files_of(self, study_uid: str) -> list[sqlite3.Row]:
        """The instances of a study, in path order (the order their upload names follow)."""
        return self._rows("SELECT * FROM files WHERE seen = ? AND kind = ? AND duplicate IS NULL AND study_uid = ?"
                          " ORDER BY source", (self.run, Kind.IMAGE, study_uid))

    def created(self, study_uid: str, upload_id: str, names: list[tuple[str, str]]) -> None:
        """The API gave ``upload_id``; ``names`` pairs each file's upload name with its source."""
        with self.lock:
            self.db.execute("BEGIN")
            self.db.executemany("UPDATE files SET upload_name = ? WHERE source = ?", names)
            self.db.execute("UPDATE studies SET state = ?, upload_id = ?, status = 'RECEIVED', reason = NULL,"
                            " sent_in = ?, updated_at = ? WHERE study_uid = ?",
                            (State.CREATED, upload_id, self.run, time.time(), study_uid))
            self.db.execute("COMMIT")

    def settled(self, study_uid: str, state: str, *, status: str | None = None, reason: str | None = None) -> None:
        self._write("UPDATE studies SET state = ?, status = COALESCE(?, status), reason = ?, sent_in = ?,"
                    " updated_at = ? WHERE study_uid = ?", (state, status, reason, self.run, time.time(), study_uid))

    def refreshed(self, study_uid: str, server: dict[str, Any]) -> None:
        """What the API says of the study's upload and study now."""
        self._write("UPDATE studies SET status = ?, reason = ?, study_key = COALESCE(?, study_key),"
                    " triage_level = ?, score = ?, updated_at = ? WHERE study_uid = ?",
                    (server.get("status"), server.get("reason"), server.get("study_key"), server.get("triage_level"),
                     server.get("score"), time.time(), study_uid))

    # -- report ---------------------------------------------------------------------

    def studies(self, *, this_run: bool = True) -> list[sqlite3.Row]:
        where, args = ("WHERE seen = ?", (self.run,)) if this_run else ("", ())
        return self._rows(f"SELECT * FROM studies {where} ORDER BY study_uid", args)

    def problem_files(self) -> list[sqlite3.Row]:
        """This run's files that are not sent: unreadable ones and conflicting duplicates, with a reason."""
        return self._rows(
            "SELECT source, folder, kind, duplicate, CASE WHEN duplicate = ? THEN ? ELSE reason END AS reason"
            " FROM files WHERE seen = ? AND (kind = ? OR duplicate = ?) ORDER BY source",
            (Dup.CONFLICT, Reason.DUPLICATE_SOP_CONFLICT, self.run, Kind.UNREADABLE, Dup.CONFLICT))

    def counts(self) -> dict[str, int]:
        """Files of this run by what they are: images, index files, unreadable, duplicates."""
        rows = self._rows("SELECT kind, duplicate, COUNT(*) AS n FROM files WHERE seen = ? GROUP BY kind, duplicate",
                          (self.run,))
        out = {"images": 0, "index_files": 0, "unreadable": 0, "duplicate_files": 0, "conflicting_files": 0}
        for r in rows:
            if r["kind"] == Kind.INDEX:
                out["index_files"] += r["n"]
            elif r["kind"] == Kind.UNREADABLE:
                out["unreadable"] += r["n"]
            elif r["duplicate"] == Dup.SAME:
                out["duplicate_files"] += r["n"]
            elif r["duplicate"] == Dup.CONFLICT:
                out["conflicting_files"] += r["n"]
            else:
                out["images"] += r["n"]
        return out
