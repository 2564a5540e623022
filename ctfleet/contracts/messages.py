"""Messages between the parts, parsed once into frozen dataclasses: valid once built.

- :class:`JobMessage`: ingest -> the urgent or backfill queue -> a worker.
- :class:`Manifest`: what an uploader promised to send, written by the API on completion.
- :func:`alert_message`: the triage alert's body (no PHI), and :func:`needs_alert`, when one is due.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from ctfleet.errors import BadInput

from .keys import check_facility, check_file_name, check_sha256, check_upload_id
from .reasons import Reason
from .states import AlertState, Status, TriageLevel

MESSAGE_VERSION = 2
# Version 1 named two fields differently; messages still in a queue across a deploy are read as version 2.
_V1_FIELDS = {"bytes": "size_bytes", "model_version": "model"}


class Priority:
    """Which queue a job goes to: urgent work always before backfill."""

    URGENT = "urgent"
    BACKFILL = "backfill"
    ALL = (URGENT, BACKFILL)


# -- the job message ------------------------------------------------------------------


@dataclass(frozen=True)
class JobMessage:
    """One study to analyze. Parsed once from the queue; valid once built."""

    job_id: str
    facility: str
    study_key: str
    series: str
    object_keys: tuple[str, ...]
    slice_count: int
    size_bytes: int
    priority: str
    enqueued_at: float
    model: str  # the analyzer asked for (a name, path or s3:// URI); the record keeps the version that ran
    version: int = MESSAGE_VERSION

    def __post_init__(self) -> None:
        check_facility(self.facility)
        if self.priority not in Priority.ALL:
            raise BadInput(Reason.MANIFEST_INVALID, f"priority must be urgent or backfill, not {self.priority!r}")
        if not self.object_keys or self.slice_count != len(self.object_keys):
            raise BadInput(Reason.MANIFEST_INVALID, "object_keys must list one key per slice")
        prefix = f"studies/{self.facility}/{self.study_key}/"
        if not all(k.startswith(prefix) for k in self.object_keys):
            raise BadInput(Reason.MANIFEST_INVALID, "object keys must lie under the study's prefix")
        object.__setattr__(self, "object_keys", tuple(self.object_keys))

    @classmethod
    def new(cls, **fields: Any) -> "JobMessage":
        fields.setdefault("job_id", uuid.uuid4().hex)
        fields.setdefault("enqueued_at", time.time())
        return cls(**fields)

    def to_json(self) -> str:
        data = asdict(self)
        data["object_keys"] = list(self.object_keys)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, body: str) -> "JobMessage":
        try:
            data = json.loads(body)
        except (TypeError, ValueError) as exc:
            raise BadInput(Reason.MANIFEST_INVALID, "job message is not JSON") from exc
        if not isinstance(data, dict):
            raise BadInput(Reason.MANIFEST_INVALID, "job message is not a JSON object")
        version = data.get("version")
        if version == 1:
            data = {_V1_FIELDS.get(k, k): v for k, v in data.items()}
            data["version"] = version = MESSAGE_VERSION
        if version != MESSAGE_VERSION:
            raise BadInput(Reason.MANIFEST_INVALID, f"unsupported job message version {version!r}")
        try:
            data["object_keys"] = tuple(data["object_keys"])
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise BadInput(Reason.MANIFEST_INVALID, f"job message fields: {exc}") from exc


# -- the upload manifest --------------------------------------------------------------


@dataclass(frozen=True)
class ManifestFile:
    """One promised file: its name in the upload (may carry PHI; stays in ``raw/``), size and sha256."""

    name: str
    size: int
    sha256: str

    def __post_init__(self) -> None:
        check_file_name(self.name)
        check_sha256(self.sha256)
        if self.size < 0:
            raise BadInput(Reason.MANIFEST_INVALID, "file sizes cannot be negative")


@dataclass(frozen=True)
class Manifest:
    """What the uploader promised to send; written by the API on completion."""

    upload_id: str
    facility: str
    priority: str
    files: tuple[ManifestFile, ...]
    created_at: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, body: bytes | str) -> "Manifest":
        try:
            data = json.loads(body)
            files = tuple(
                ManifestFile(name=str(f["name"]), size=int(f["size"]), sha256=str(f["sha256"])) for f in data["files"]
            )
            manifest = cls(
                upload_id=check_upload_id(data["upload_id"]),
                facility=check_facility(data["facility"]),
                priority=str(data.get("priority", Priority.URGENT)),
                files=files,
                created_at=float(data.get("created_at", 0.0)),
            )
        except BadInput:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(Reason.MANIFEST_INVALID, "manifest.json is malformed") from exc
        if manifest.priority not in Priority.ALL:
            raise BadInput(Reason.MANIFEST_INVALID, "priority must be urgent or backfill")
        return manifest


# -- the triage alert -----------------------------------------------------------------


def needs_alert(record: dict[str, Any]) -> bool:
    """True for a DONE, HIGH study whose alert is not yet SENT (a SENDING claim may be stale)."""
    return (
        record.get("status") == Status.DONE
        and record.get("triage_level") == TriageLevel.HIGH
        and record.get("alert_state") != AlertState.SENT
    )


def alert_message(record: dict[str, Any], api_url: str | None) -> dict[str, Any]:
    """The alert body: what the on-call radiologist needs, and no PHI (the study key is the only identity)."""
    key = record["study_key"]
    return {
        "kind": "ctfleet.triage",
        "study_key": key,
        "facility": record["facility"],
        "triage_level": record.get("triage_level"),
        "score": record.get("score"),
        "severity_score": record.get("severity_score"),
        "model_version": record.get("model_version"),
        "link": f"{api_url.rstrip('/')}/#/studies/{key}" if api_url else None,
    }
