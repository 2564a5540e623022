"""Contracts between the parts: study keys, S3 keys, job messages, statuses.

No PHI crosses any of these: a study is named by an HMAC of its
StudyInstanceUID under the facility's secret, never by the UID itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from .errors import BadInput

MESSAGE_VERSION = 1
STUDY_KEY_HEX = 24  # 96 bits: collisions are not a concern at 10^9 studies.

_FACILITY = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_UPLOAD = re.compile(r"^[0-9a-f]{32}$")


class Status:
    """Study record statuses, in the order a study moves through them."""

    RECEIVED = "RECEIVED"
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    DONE = "DONE"
    REJECTED = "REJECTED"
    FAILED = "FAILED"
    FINAL = frozenset({DONE, REJECTED, FAILED})


class Labels:
    """Label values in ``labels.nii.gz``."""

    BACKGROUND = 0
    LUNG = 1
    GGO = 2
    CONSOLIDATION = 3


class Reason:
    """Reason codes recorded with REJECTED and FAILED. Stable: clients match on them."""

    EMPTY_UPLOAD = "empty_upload"
    MANIFEST_INVALID = "manifest_invalid"
    UPLOAD_INCOMPLETE = "upload_incomplete"  # never completed, or files missing at completion
    CHECKSUM_MISMATCH = "checksum_mismatch"  # a file's sha256 differs from the manifest
    NOT_DICOM = "not_dicom"
    NO_PIXEL_DATA = "no_pixel_data"
    NOT_CT = "not_ct"
    MULTIPLE_STUDIES = "multiple_studies"
    NO_USABLE_SERIES = "no_usable_series"
    UNKNOWN_FACILITY = "unknown_facility"
    # Geometry and pixel checks while building the volume.
    INCONSISTENT_SPACING = "inconsistent_spacing"  # slice gaps differ (a missing slice, mixed stacks)
    DUPLICATE_SLICES = "duplicate_slices"  # two instances at the same position along the normal
    INCONSISTENT_GEOMETRY = "inconsistent_geometry"  # orientation, size or pixel spacing differ
    MISSING_GEOMETRY = "missing_geometry"  # position, orientation or pixel spacing absent
    UNSUPPORTED_PIXEL_DATA = "unsupported_pixel_data"  # multi-frame, colour, undecodable syntax
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"  # a syntax no installed decoder reads
    # Pixel safety: images that may show identity in their pixels.
    BURNED_IN_ANNOTATION = "burned_in_annotation"  # the header says so (BurnedInAnnotation YES)
    SECONDARY_CAPTURE = "secondary_capture"  # screenshots and other converted images
    DERIVED_IMAGE = "derived_image"  # screen saves and other derived pictures, not reconstructions
    BURNED_IN_TEXT = "burned_in_text"  # text found in the pixels although the header is silent
    OUTPUT_EXISTS = "output_exists"  # a command's output folder is not empty
    ANALYSIS_FAILED = "analysis_failed"
    TOO_MANY_ATTEMPTS = "too_many_attempts"


def check_facility(facility: str) -> str:
    """Return ``facility`` if it is a valid facility id (lowercase slug), else raise."""
    if not isinstance(facility, str) or not _FACILITY.match(facility):
        raise BadInput(Reason.UNKNOWN_FACILITY, "facility must be a lowercase slug of letters, digits and '-'")
    return facility


def check_upload_id(upload_id: str) -> str:
    if not isinstance(upload_id, str) or not _UPLOAD.match(upload_id):
        raise BadInput(Reason.MANIFEST_INVALID, "upload id must be 32 lowercase hex characters")
    return upload_id


def new_upload_id() -> str:
    return uuid.uuid4().hex


def study_key(secret: bytes, study_instance_uid: str) -> str:
    """HMAC-SHA256 of the StudyInstanceUID under the facility's secret, short hex.

    The same study always gives the same key (dedupe); only the facility,
    holding the secret and its own UIDs, can map it back.
    """
    digest = hmac.new(secret, study_instance_uid.strip().encode("ascii"), hashlib.sha256).hexdigest()
    return digest[:STUDY_KEY_HEX]


# -- S3 keys --------------------------------------------------------------------------


def raw_prefix(facility: str, upload_id: str) -> str:
    return f"raw/{facility}/{upload_id}/"


def raw_key(facility: str, upload_id: str, name: str) -> str:
    return raw_prefix(facility, upload_id) + name


def parse_raw_key(key: str) -> tuple[str, str, str]:
    """``raw/{facility}/{upload}/{name}`` -> ``(facility, upload, name)``."""
    parts = key.split("/", 3)
    if len(parts) != 4 or parts[0] != "raw":
        raise BadInput(Reason.MANIFEST_INVALID, "key is not under raw/{facility}/{upload}/")
    _, facility, upload_id, name = parts
    return check_facility(facility), check_upload_id(upload_id), name


def study_prefix(facility: str, key: str, series: str) -> str:
    return f"studies/{facility}/{key}/{series}/"


def results_prefix(facility: str, key: str, model_version: str) -> str:
    return f"results/{facility}/{key}/{model_version}/"


# -- the job message ------------------------------------------------------------------


@dataclass(frozen=True)
class JobMessage:
    """One study to analyse. Parsed once from the queue; valid once built."""

    job_id: str
    facility: str
    study_key: str
    series: str
    object_keys: tuple[str, ...]
    slice_count: int
    bytes: int
    priority: str
    enqueued_at: float
    model_version: str
    version: int = MESSAGE_VERSION

    def __post_init__(self) -> None:
        check_facility(self.facility)
        if self.priority not in ("urgent", "backfill"):
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
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What the uploader promised to send; written by the API on completion."""

    upload_id: str
    facility: str
    priority: str
    files: tuple[ManifestFile, ...]
    created_at: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "upload_id": self.upload_id,
                "facility": self.facility,
                "priority": self.priority,
                "files": [asdict(f) for f in self.files],
                "created_at": self.created_at,
            },
            sort_keys=True,
        )

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
                priority=str(data.get("priority", "urgent")),
                files=files,
                created_at=float(data.get("created_at", 0.0)),
            )
        except BadInput:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(Reason.MANIFEST_INVALID, "manifest.json is malformed") from exc
        if manifest.priority not in ("urgent", "backfill"):
            raise BadInput(Reason.MANIFEST_INVALID, "priority must be urgent or backfill")
        for f in manifest.files:
            check_file_name(f.name)
            check_sha256(f.sha256)
        return manifest


def check_sha256(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise BadInput(Reason.MANIFEST_INVALID, "sha256 must be 64 lowercase hex characters")
    return value


def check_file_name(name: str) -> str:
    """A safe relative object name: no absolute paths, no '..', no control characters."""
    if (
        not name
        or len(name) > 512
        or name.startswith("/")
        or any(part in ("", ".", "..") for part in name.split("/"))
        or any(ord(c) < 32 for c in name)
        or name == "manifest.json"
    ):
        raise BadInput(Reason.MANIFEST_INVALID, "file names must be relative paths without '..'")
    return name
