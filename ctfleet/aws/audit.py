"""The audit trail: an append-only table of who did what to each upload and study, and when.

One item per event, never updated or deleted by ctfleet (no TTL): a state change (``from`` ->
``to``, with its reason), a sign-off, an alert, a read of a study's results. Items name
records by their keys and people by their user pool id (``user:<sub>``) or a component
(``ingest``, ``worker:<instance>``, ``triage``, ``sweeper``); no PHI.

State changes are derived from the tables' change streams (:func:`changes`), so none can be
missed by a code path that forgot to log; each event's id comes from its stream record, so a
replayed record writes nothing new. Reads and sign-offs are written by the API as they happen.
"""

from __future__ import annotations

import uuid
from typing import Any

from ctfleet.errors import Conflict

from .records import Table, iso, now

# Fields whose change is an event of its own, besides ``status``.
_WATCHED = (("status", "state"), ("alert_state", "alert"))


def subject(kind: str, key: str) -> str:
    """``study:<key>`` or ``upload:<id>``."""
    return f"{kind}:{key}"


class AuditTrail:
    """The audit table (``Settings.audit_table``)."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def append(self, subject_id: str, kind: str, *, facility: str, actor: str, at: float | None = None,
               event_id: str | None = None, **fields: Any) -> bool:
        """One event; False if an event with this id is on record already (a replay)."""
        t = now() if at is None else at
        eid = event_id or uuid.uuid4().hex
        item = {"event_id": eid, "subject": subject_id, "seq": f"{iso(t)}#{eid[-12:]}", "at": t, "kind": kind,
                "facility": facility, "actor": actor, **{k: v for k, v in fields.items() if v is not None}}
        try:
            self.table.put_new(item)
            return True
        except Conflict:
            return False

    def history(self, subject_id: str, *, limit: int = 1000) -> list[dict[str, Any]]:
        """Every event of ``subject_id``, oldest first."""
        index = next(i for i in self.table.spec.indexes if i.name == "by_subject")
        items = self.table.query_index(index.name, index.partition_key, subject_id, limit=limit)
        return sorted(items, key=lambda i: str(i["seq"]))


def changes(kind: str, key_field: str, old: dict[str, Any] | None, new: dict[str, Any] | None
            ) -> list[dict[str, Any]]:
    """The audit events one stream record of the ``kind`` table (``study`` or ``upload``) holds.

    A new ``status`` is a state change (from the old image's, or none), a new ``alert_state``
    an alert event, a new latest sign-off a sign-off event. Each carries the actor the record
    names (``updated_by``) at the time it wrote (``updated_at``), the reason, and an attempt
    number for studies.
    """
    new = new or {}
    old = old or {}
    if not new:
        return []
    events = []
    for field, event in _WATCHED:
        if new.get(field) and new.get(field) != old.get(field):
            events.append({"subject": subject(kind, str(new[key_field])), "kind": event, "at": new.get("updated_at"),
                           "from": old.get(field), "to": new[field], "facility": new.get("facility", ""),
                           "actor": str(new.get("updated_by") or "unknown"),
                           "reason": new.get("reason") if field == "status" else None,
                           "attempt": new.get("attempts") if kind == "study" else None,
                           "upload_id": new.get("upload_id") if kind == "study" else None,
                           "field": field})
    signoff = new.get("signoff")
    if isinstance(signoff, dict) and signoff != old.get("signoff"):
        events.append({"subject": subject(kind, str(new[key_field])), "kind": "signoff", "at": signoff.get("at"),
                       "from": None,
                       "to": signoff.get("decision"), "facility": new.get("facility", ""),
                       "actor": f"user:{signoff.get('user')}", "reason": None, "attempt": None, "field": "signoff"})
    return events
