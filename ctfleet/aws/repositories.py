"""Where every upload's and study's state changes: one method per transition.

Each method owns its condition expression and returns a domain outcome
(a record, ``True``/``False``, a job to send); no caller writes a condition or
catches a lost one. A lost condition means someone else settled the record
first, which for every transition here is an ordinary outcome, not an error.

Uploads:  RECEIVED -> COMPLETE -> QUEUED | REJECTED | FAILED
          (RECEIVED -> REJECTED upload_incomplete when it expires;
          an empty upload is REJECTED when created)
Studies:  QUEUED -> PROCESSING -> DONE | REJECTED | FAILED
          (a FAILED or REJECTED study is QUEUED again by a new upload of it)
Alerts:   (none) -> SENDING -> SENT, a SENDING claim older than its lease may be taken over
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ctfleet.contracts import AlertState, JobMessage, Reason, Status, UploadStatus
from ctfleet.errors import Conflict

from .records import Table, iso, now

_LIVE = {":queued": Status.QUEUED, ":processing": Status.PROCESSING}


def _by(actor: str, at: float) -> dict[str, Any]:
    """Who made a transition and when, on the record itself: the audit trail reads them from the stream."""
    return {"updated_at": at, "updated_by": actor}


def _index(table: Table, name: str) -> Any:
    return next(i for i in table.spec.indexes if i.name == name)


class Repository:
    """One table's records, written only through the transitions of a subclass.

    Parameters
    ----------
    table : Table
    """

    def __init__(self, table: Table) -> None:
        self.table = table

    def get(self, key: str) -> dict[str, Any] | None:
        """The record (consistent read), or None."""
        return self.table.get(key)


class Uploads(Repository):
    """The uploads table (``Settings.uploads_table``): every upload ends here in a recorded state.

    Records are kept ``retention_s`` (DynamoDB's TTL on ``purge_at`` removes them after), long
    after ``expires_at``, the deadline by which an upload must be completed.
    """

    def __init__(self, table: Table, retention_s: float = 30 * 24 * 3600) -> None:
        super().__init__(table)
        self.retention_s = retention_s

    def open_count(self, facility: str, *, since: float) -> int:
        """How many of the facility's uploads created after ``since`` are still RECEIVED (not completed)."""
        index = _index(self.table, "by_facility")
        return self.table.count_index(index.name, index.partition_key, facility, sort_key=str(index.sort_key),
                                      sort_after=iso(since), where=("status", UploadStatus.RECEIVED))

    def create(self, upload_id: str, facility: str, priority: str, *, files: int, size_bytes: int,
               created: float, expires_at: int, actor: str = "api") -> None:
        """A new upload, RECEIVED: its files may now arrive."""
        self.table.put_new({
            "upload_id": upload_id, "facility": facility, "priority": priority, "status": UploadStatus.RECEIVED,
            **_by(actor, created),
            "files": files, "bytes": size_bytes, "created_at": iso(created), "received_at": created,
            "expires_at": expires_at, "purge_at": int(created + self.retention_s),
        })

    def create_rejected(self, upload_id: str, facility: str, priority: str, reason: str, actor: str = "api") -> None:
        """An upload refused as it was announced (nothing to send), REJECTED at once."""
        t = now()
        self.table.put_new({"upload_id": upload_id, "facility": facility, "priority": priority, **_by(actor, t),
                            "status": UploadStatus.REJECTED, "reason": reason, "files": 0, "bytes": 0,
                            "created_at": iso(t), "received_at": t, "ingested_at": t,
                            "purge_at": int(t + self.retention_s)})

    def complete(self, upload_id: str, actor: str = "api") -> dict[str, Any] | None:
        """RECEIVED -> COMPLETE; the new record, or None if it was no longer RECEIVED."""
        t = now()
        try:
            return self.table.update(upload_id, {"status": UploadStatus.COMPLETE, "completed_at": t, **_by(actor, t)},
                                     condition="#status = :received", values={":received": UploadStatus.RECEIVED})
        except Conflict:
            return None

    def finish(self, upload_id: str, status: str, *, reason: str | None = None,
               study_key: str | None = None) -> bool:
        """-> QUEUED, REJECTED or FAILED, unless the upload is final already; True if this call ended it."""
        t = now()
        fields: dict[str, Any] = {"status": status, "ingested_at": t, **_by("ingest", t)}
        if reason:
            fields["reason"] = reason
        if study_key:
            fields["study_key"] = study_key
        try:
            self.table.update(upload_id, fields,
                              condition="attribute_not_exists(#status) OR NOT #status IN (:a, :r, :f)",
                              values={":a": UploadStatus.QUEUED, ":r": UploadStatus.REJECTED,
                                      ":f": UploadStatus.FAILED})
            return True
        except Conflict:
            return False

    def note_duplicate(self, upload_id: str, of_upload: str) -> None:
        """The upload's study was already there, from ``of_upload``."""
        self.table.update(upload_id, {"duplicate_of": of_upload})

    def expire(self, upload_id: str) -> bool:
        """RECEIVED -> REJECTED ``upload_incomplete`` (it never completed); False if it moved on meanwhile."""
        return self._settle_open(upload_id, UploadStatus.REJECTED, Reason.UPLOAD_INCOMPLETE,
                                 (UploadStatus.RECEIVED,), actor="sweeper")

    def fail_ingest(self, upload_id: str) -> bool:
        """RECEIVED or COMPLETE -> FAILED ``ingest_error`` (ingest gave up on it); False if it was settled."""
        return self._settle_open(upload_id, UploadStatus.FAILED, Reason.INGEST_ERROR,
                                 (UploadStatus.RECEIVED, UploadStatus.COMPLETE), actor="sweeper")

    def _settle_open(self, upload_id: str, status: str, reason: str, from_states: tuple[str, ...], *,
                     actor: str) -> bool:
        names = {f":s{i}": s for i, s in enumerate(from_states)}
        t = now()
        try:
            self.table.update(upload_id, {"status": status, "reason": reason, "ingested_at": t, **_by(actor, t)},
                              condition=f"#status IN ({', '.join(names)})", values=names)
            return True
        except Conflict:
            return False

    def stale(self, *, before: float, limit: int) -> list[dict[str, Any]]:
        """Uploads still RECEIVED that were created before ``before`` (epoch seconds), oldest first not promised."""
        index = _index(self.table, "by_status")
        return self.table.query_index(index.name, index.partition_key, UploadStatus.RECEIVED, limit=limit,
                                      sort_key=index.sort_key, sort_before=iso(before))


@dataclass(frozen=True)
class Claim:
    """What :meth:`Studies.claim` found: the claimed record, or who holds the job, or its settled status."""

    record: dict[str, Any] | None
    held_by: str | None = None  # a live worker holds this job: wait, do not compute it twice
    status: str = Status.PROCESSING


@dataclass(frozen=True)
class Registered:
    """What :meth:`Studies.register` found: the job to send (None: nothing to send) and the duplicate's upload."""

    job: JobMessage | None
    duplicate_of: str | None = None


class Studies(Repository):
    """The studies table (``Settings.studies_table``): one record per study key, moved by conditional writes."""

    def for_facility(self, facility: str, *, limit: int) -> list[dict[str, Any]]:
        """The facility's studies, newest first."""
        index = _index(self.table, "by_facility")
        return self.table.query_index(index.name, index.partition_key, facility, limit=limit)

    # -- ingest ---------------------------------------------------------------------

    def register(self, job: JobMessage, item: dict[str, Any]) -> Registered:
        """(none) | FAILED | REJECTED -> QUEUED with ``item``; what to send for ``job``.

        A redelivered ingest of the same upload finds its own QUEUED record and
        sends that record's job again (same ``job_id``); another upload of a
        study already queued, running or done sends nothing.
        """
        item = {**item, **_by("ingest", now())}
        try:
            self.table.put_new(item)
            return Registered(job)
        except Conflict:
            pass
        existing = self.get(job.study_key) or {}
        if existing.get("upload_id") == item["upload_id"] and existing.get("status") == Status.QUEUED:
            return Registered(JobMessage.from_json(existing["job"]))
        if existing.get("status") in (Status.FAILED, Status.REJECTED):
            try:
                self.table.put(item, condition="#status = :old", names={"#status": "status"},
                               values={":old": existing["status"]})
                return Registered(job)
            except Conflict:
                return Registered(None)
        return Registered(None, duplicate_of=str(existing.get("upload_id", "")))

    # -- the worker -----------------------------------------------------------------

    def claim(self, job: JobMessage, instance: str, fields: dict[str, Any], *, lease_s: float) -> Claim:
        """QUEUED, or PROCESSING under an expired lease -> PROCESSING on ``instance``, one attempt more.

        The lease (``lease_until``) is what a live worker renews with its heartbeat;
        a second delivery of a job whose holder is alive finds it held and waits.
        """
        t = now()
        try:
            record = self.table.update(
                job.study_key, {"status": Status.PROCESSING, "started_at": t, "worker_instance": instance,
                                "lease_until": t + lease_s, **_by(f"worker:{instance}", t), **fields},
                add={"attempts": 1},
                condition="#job_id = :job AND (#status = :queued OR (#status = :processing AND "
                          "(attribute_not_exists(#lease_until) OR #lease_until < :now)))",
                values={":job": job.job_id, ":now": t, **_LIVE})
            return Claim(record)
        except Conflict:
            current = self.get(job.study_key) or {}
        held = (current.get("status") == Status.PROCESSING and current.get("job_id") == job.job_id
                and float(current.get("lease_until", 0)) >= t)
        return Claim(None, held_by=str(current.get("worker_instance")) if held else None,
                     status=str(current.get("status", "MISSING")))

    def renew_lease(self, job: JobMessage, instance: str, *, lease_s: float) -> bool:
        """Extend the holder's lease (with each heartbeat); False if ``instance`` no longer holds it.

        A lease given up (a failure or a hand-back set it to 0) stays given up: a heartbeat that
        fires after the failure was recorded does not hold the job again."""
        try:
            self.table.update(job.study_key, {"lease_until": now() + lease_s},
                              condition="#job_id = :job AND #status = :processing AND #worker_instance = :me "
                                        "AND #lease_until > :zero",
                              values={":job": job.job_id, ":processing": Status.PROCESSING, ":me": instance,
                                      ":zero": 0})
            return True
        except Conflict:
            return False

    def release(self, job: JobMessage, instance: str, *, held_s: float = 0.0, held_nano_usd: int = 0) -> bool:
        """Give the lease up at once (a hand-back): the next delivery may claim it without waiting.

        The instance's time on the job so far (``held_s``, costing ``held_nano_usd`` billionths of a
        dollar, an integer so that ADD never meets a number in exponent form) is added to the study's
        ``interrupted_s`` / ``interrupted_nano_usd``: finance charges interrupted work to the study it
        was for, on top of the attempt that finished it."""
        return self._as_holder(job, instance, {"lease_until": 0},
                               add={"interrupted_s": Decimal(f"{max(held_s, 0.0):.3f}"),
                                    "interrupted_nano_usd": int(held_nano_usd)})

    def record_failure(self, job: JobMessage, instance: str) -> int:
        """One failed attempt more, and the lease given up; the study's failures so far (0: not the holder)."""
        try:
            record = self.table.update(
                job.study_key, {"lease_until": 0}, add={"failures": 1},
                condition="#job_id = :job AND #status = :processing AND #worker_instance = :me",
                values={":job": job.job_id, ":processing": Status.PROCESSING, ":me": instance})
            return int(record.get("failures", 0))
        except Conflict:
            return 0

    def _as_holder(self, job: JobMessage, instance: str, fields: dict[str, Any],
                   add: dict[str, Any] | None = None) -> bool:
        try:
            self.table.update(job.study_key, fields, add=add,
                              condition="#job_id = :job AND #status = :processing AND #worker_instance = :me",
                              values={":job": job.job_id, ":processing": Status.PROCESSING, ":me": instance})
            return True
        except Conflict:
            return False

    def mark_done(self, job: JobMessage, fields: dict[str, Any], *, actor: str = "worker") -> bool:
        """PROCESSING -> DONE with the results; False if another attempt settled it first."""
        t = now()
        try:
            self.table.update(job.study_key, {"status": Status.DONE, "done_at": t, **_by(actor, t), **fields},
                              condition="#job_id = :job AND #status = :processing",
                              values={":job": job.job_id, ":processing": Status.PROCESSING})
            return True
        except Conflict:
            return False

    def settle(self, job: JobMessage, status: str, reason: str, detail: str = "", *, actor: str = "worker") -> bool:
        """QUEUED | PROCESSING -> REJECTED or FAILED with a reason; False if it was settled already."""
        t = now()
        fields = {"status": status, "reason": reason, "detail": detail[:200] or None, "finished_at": t,
                  **_by(actor, t)}
        try:
            self.table.update(job.study_key, fields, condition="#job_id = :job AND #status IN (:queued, :processing)",
                              values={":job": job.job_id, **_LIVE})
            return True
        except Conflict:
            return False

    # -- alerts ---------------------------------------------------------------------

    def claim_alert(self, study_key: str, *, at: float, lease_s: float) -> bool:
        """(no alert) | a SENDING claim older than the lease -> SENDING; True if this caller holds it."""
        try:
            self.table.update(
                study_key, {"alert_state": AlertState.SENDING, "alert_claimed_at": at, **_by("triage", now())},
                condition="#status = :done AND (attribute_not_exists(#alert_state) OR "
                          "(#alert_state = :sending AND #alert_claimed_at < :stale))",
                values={":done": Status.DONE, ":sending": AlertState.SENDING, ":stale": at - lease_s},
            )
            return True
        except Conflict:
            return False

    def mark_alert_sent(self, study_key: str, *, latency_s: float | None = None) -> bool:
        """SENDING -> SENT (with DONE -> alert seconds); False if the claim was lost meanwhile."""
        t = now()
        try:
            self.table.update(study_key, {"alert_state": AlertState.SENT, "alerted_at": t, **_by("triage", t),
                                          "alert_latency_s": None if latency_s is None else round(latency_s, 3)},
                              condition="#alert_state = :sending", values={":sending": AlertState.SENDING})
            return True
        except Conflict:
            return False

    def sign_off(self, study_key: str, signoff: dict[str, Any]) -> dict[str, Any] | None:
        """A radiologist's sign-off of a DONE study: the latest shown, every one kept; None if not DONE."""
        try:
            return self.table.update(study_key, {"signoff": signoff, **_by(f"user:{signoff['user']}", signoff["at"])},
                                     append={"signoffs": [signoff]}, add={"signoff_count": 1},
                                     condition="#status = :done", values={":done": Status.DONE})
        except Conflict:
            return None

    def alert_claims(self, *, limit: int) -> list[dict[str, Any]]:
        """Studies whose alert is claimed (SENDING) and not yet marked SENT."""
        index = _index(self.table, "by_alert_state")
        return self.table.query_index(index.name, index.partition_key, AlertState.SENDING, limit=limit)
