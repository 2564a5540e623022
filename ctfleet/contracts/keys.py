"""Names that cross the parts: facility and upload ids, study keys, S3 keys.

No PHI in any of them: a study is named by an HMAC of its StudyInstanceUID under
the facility's secret, never by the UID itself; file names stay in ``raw/``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import unicodedata
import uuid
from urllib.parse import unquote_plus

from ctfleet.errors import BadInput

from .reasons import Reason

PROMISED_NAME = ".ctfleet/promised.json"
STUDY_KEY_HEX = 24  # 96 bits: collisions are not a concern at 10^9 studies.

_FACILITY = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_UPLOAD = re.compile(r"^[0-9a-f]{32}$")


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


def pseudonym(secret: bytes, purpose: str, facility: str, value: str) -> bytes:
    """HMAC-SHA256(secret, purpose NUL facility NUL value): every pseudonym ctfleet derives.

    Domain separation: the purpose (``study-key``, ``series-id``, ``uid``) and the facility are
    part of the input, so two facilities never get the same pseudonym for the same original
    even if they share a secret, and no study key equals the hash of a UID.
    """
    original = str(value).strip().rstrip("\x00").strip()
    message = b"\x00".join((purpose.encode(), facility.encode(), original.encode("utf-8", "replace")))
    return hmac.new(secret, message, hashlib.sha256).digest()


def study_key(secret: bytes, facility: str, study_instance_uid: str) -> str:
    """The study's key: short hex of its StudyInstanceUID's ``study-key`` pseudonym.

    The same study always gives the same key (dedupe); only the facility,
    holding the secret and its own UIDs, can map it back.
    """
    return pseudonym(secret, "study-key", facility, study_instance_uid).hex()[:STUDY_KEY_HEX]


def series_id(secret: bytes, facility: str, series_instance_uid: str) -> str:
    """The folder name of one de-identified series (``studies/{facility}/{key}/{series}/``)."""
    return pseudonym(secret, "series-id", facility, series_instance_uid).hex()[:SERIES_ID_HEX]


# -- S3 keys --------------------------------------------------------------------------


SERIES_ID_HEX = 16


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


def promised_key(facility: str, upload_id: str) -> str:
    """The file list as announced at creation, kept beside the upload (names may carry PHI)."""
    return raw_key(facility, upload_id, PROMISED_NAME)


def s3_event_keys(body: str) -> list[tuple[str, str]]:
    """(bucket, key) of each object in an S3 notification body; [] for S3's test event and non-JSON.

    S3 URL-encodes keys in notifications (spaces as '+'); they come back decoded.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return []
    if not isinstance(data, dict) or data.get("Event") == "s3:TestEvent":
        return []
    out = []
    for rec in data.get("Records", []):
        s3 = rec.get("s3", {})
        out.append((s3.get("bucket", {}).get("name", ""), unquote_plus(s3.get("object", {}).get("key", ""))))
    return out


def study_prefix(facility: str, key: str, series: str) -> str:
    return f"studies/{facility}/{key}/{series}/"


def results_prefix(facility: str, key: str, model_version: str) -> str:
    return f"results/{facility}/{key}/{model_version}/"


def check_sha256(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise BadInput(Reason.MANIFEST_INVALID, "sha256 must be 64 lowercase hex characters")
    return value


MAX_FILE_NAME_BYTES = 512  # raw/{facility}/{upload}/ + this stays far below S3's 1,024-byte keys
_NAME_PUNCTUATION = frozenset("._-+()~@, ")


def _safe_char(c: str) -> bool:
    """Letters, marks and digits of any script, and a little ASCII punctuation; never a control,
    format (bidi overrides), separator, private-use or unassigned character, nor a backslash."""
    return c in _NAME_PUNCTUATION or unicodedata.category(c)[0] in "LMN"


def check_file_name(name: object) -> str:
    """A safe relative object name: '/'-separated parts of safe characters, no '.' or '..' parts,
    at most :data:`MAX_FILE_NAME_BYTES` bytes of UTF-8."""
    if (
        not isinstance(name, str)
        or not name
        or len(name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES
        or any(part in ("", ".", "..") or part != part.strip() for part in name.split("/"))
        or not all(_safe_char(c) for c in name.replace("/", ""))
        or name == "manifest.json"
    ):
        raise BadInput(Reason.BAD_FILE_NAME, "file names are relative paths of letters, digits and ._-+()~@, "
                       f"(no '..', at most {MAX_FILE_NAME_BYTES} bytes)")
    return name
