"""Send one study of the journal through the API: create (or resume) its upload, POST each file
to S3, complete it. Every step is journaled before the next, so a killed run resumes.

Network errors, 5xx and 429 are retried with exponential backoff (tenacity); an expired
presigned URL is renewed (``POST /uploads/{id}/urls``, which also says which files S3 still
lacks); an upload whose deadline passed is replaced by a new one. A study the API refuses
(400: a file too large, too many files) ends ``rejected`` with the API's reason code; one
that keeps failing ends ``failed`` (``upload_failed``) and is tried again by the next run.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ctfleet.contracts import Priority, Reason
from ctfleet.errors import BadInput, Conflict, Forbidden, NotFound, Transient

from ..client import ApiClient
from .journal import Journal, State, StudyRow
from .scan import Source

log = logging.getLogger(__name__)

ALREADY_COMPLETED = "already_completed"


class Throttle:
    """Paces bytes to at most ``mbps`` megabits per second across every sending thread."""

    def __init__(self, mbps: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if mbps <= 0:
            raise BadInput(Reason.BAD_REQUEST, "--max-mbps must be positive")
        self.bytes_per_s = mbps * 1e6 / 8
        self.clock, self.sleep = clock, sleep
        self._next = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        """Wait until ``n`` more bytes fit the rate (each caller gets the next free slot)."""
        with self._lock:
            now = self.clock()
            start = max(now, self._next)
            self._next = start + n / self.bytes_per_s
        if start > now:
            self.sleep(start - now)


@dataclass(frozen=True)
class Outcome:
    study_uid: str
    state: str  # completed | rejected | failed
    reason: str | None = None
    resumed: bool = False  # an upload of an earlier run was carried on
    sent_bytes: int = 0


class Sender:
    """Sends studies of ``journal`` found under ``root`` through ``client``; thread-safe."""

    def __init__(self, client: ApiClient, journal: Journal, root: Path, *, throttle: Throttle | None = None,
                 attempts: int = 6, backoff_s: float = 0.5, on_bytes: Callable[[int], None] = lambda n: None) -> None:
        self.client = client
        self.journal = journal
        self.root = root
        self.throttle = throttle
        self.on_bytes = on_bytes
        self._retry = Retrying(retry=retry_if_exception_type(Transient), stop=stop_after_attempt(attempts),
                               wait=wait_exponential(multiplier=backoff_s, max=30), reraise=True)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._retry(fn, *args)

    def send(self, study: StudyRow) -> Outcome:
        try:
            return self._send(study)
        except BadInput as exc:  # the API refused the study itself: sending it again would not help
            self.journal.settled(study.study_uid, State.REJECTED, status="REJECTED", reason=exc.reason)
            return Outcome(study.study_uid, State.REJECTED, exc.reason)
        except (Transient, Forbidden, Conflict, NotFound) as exc:
            log.warning("study not sent", extra={"reason": exc.reason, "error": type(exc).__name__})
            self.journal.settled(study.study_uid, State.FAILED, reason=Reason.UPLOAD_FAILED)
            return Outcome(study.study_uid, State.FAILED, Reason.UPLOAD_FAILED)

    def _send(self, study: StudyRow) -> Outcome:
        resumed = self._resume(study.study_uid, study.upload_id) if study.upload_id else None
        if resumed is ALREADY_COMPLETED:
            return Outcome(study.study_uid, State.COMPLETED, resumed=True)
        if isinstance(resumed, list) and study.upload_id:
            upload_id, targets = study.upload_id, resumed
        else:
            upload_id, targets = self._create(study.study_uid, self.journal.files_of(study.study_uid))
        by_name = {f["upload_name"]: f for f in self.journal.files_of(study.study_uid)}
        sent = self._post_all(upload_id, targets, by_name)
        for attempt in range(3):
            try:
                answer = self.call(self.client.complete, upload_id)
                break
            except Conflict:  # 409: S3 lacks a file (a POST lost on the way): send what is missing
                if attempt == 2:
                    raise
                sent += self._post_all(upload_id, self.call(self.client.renew_urls, upload_id)["files"], by_name)
        self.journal.settled(study.study_uid, State.COMPLETED, status=str(answer.get("status", "COMPLETE")))
        return Outcome(study.study_uid, State.COMPLETED, resumed=resumed is not None, sent_bytes=sent)

    def _resume(self, study_uid: str, upload_id: str) -> list[dict[str, Any]] | str | None:
        """An earlier run's upload: the targets still to send; :data:`ALREADY_COMPLETED` if that run
        completed it (and died before writing it down); None if it cannot be used any more (gone,
        rejected, past its deadline): a new upload is created."""
        try:
            return list(self.call(self.client.renew_urls, upload_id)["files"])
        except NotFound:
            return None
        except Conflict:
            upload = self.call(self.client.get_upload, upload_id)
            if upload.get("completed_at"):  # ingest has it (queued, or rejected on its own merits)
                self.journal.settled(study_uid, State.COMPLETED, status=upload.get("status"), reason=upload.get("reason"))
                return ALREADY_COMPLETED
            return None

    def _create(self, study_uid: str, files: list[Any]) -> tuple[str, list[dict[str, Any]]]:
        names = [f"{n:05d}.dcm" for n in range(len(files))]
        listing = [{"name": name, "size": f["size"], "sha256": f["sha256"]} for name, f in zip(names, files)]
        created = self.call(lambda: self.client.create_upload(listing, priority=Priority.BACKFILL))
        self.journal.created(study_uid, created["upload_id"], [(n, f["source"]) for n, f in zip(names, files)])
        return created["upload_id"], list(created["files"])

    def _post_all(self, upload_id: str, targets: list[dict[str, Any]], by_name: dict[str, Any]) -> int:
        sent = 0
        for target in targets:
            row = by_name[target["name"]]
            data = Source(row["path"], row["member"]).read(self.root)
            if hashlib.sha256(data).hexdigest() != row["sha256"]:
                raise BadInput(Reason.CHECKSUM_MISMATCH, "a file changed since the scan; run the backfill again")
            if self.throttle:
                self.throttle.take(len(data))
            try:
                self.call(self.client.post_file, target, data)
            except Forbidden:  # the URL expired (a slow link, a resumed run): renew it once
                fresh = {t["name"]: t for t in self.call(self.client.renew_urls, upload_id)["files"]}
                if target["name"] in fresh:
                    self.call(self.client.post_file, fresh[target["name"]], data)
            sent += len(data)
            self.on_bytes(len(data))
        return sent
