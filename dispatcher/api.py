"""The HTTP API (API Gateway HTTP API, payload v2): uploads and the worklist.

Routes
------
POST /uploads                      {facility, priority?, files: [{name, size, sha256}]}
                                   -> 201 {upload_id, files: [{name, url, fields}], complete_url}
POST /uploads/{upload_id}/complete -> 202 once every promised file is in S3 (409 otherwise)
GET  /uploads/{upload_id}          -> the upload record (status, reason, study_key)
GET  /studies?facility=F           -> the facility's worklist, newest first
GET  /studies/{study_key}          -> one study with presigned result URLs

File names live only in the raw bucket (they may carry PHI); records hold counts.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from ctfleet.aws.records import now
from ctfleet.contracts import (
    Manifest,
    ManifestFile,
    Priority,
    Reason,
    Status,
    UploadStatus,
    check_facility,
    check_file_name,
    check_sha256,
    check_upload_id,
    new_upload_id,
    promised_key,
    raw_key,
    raw_prefix,
)
from ctfleet.errors import BadInput

from .deps import HandlerDeps
from .runtime import deps

log = logging.getLogger(__name__)

MAX_FILES = 20_000
MAX_FILE_BYTES = 2 * 1024**3
RESULT_URL_TTL_S = 900

Response = dict[str, Any]


def response(status: int, body: Any) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", "cache-control": "no-store"},
        "body": json.dumps(body, default=str),
    }


def error(status: int, reason: str, message: str) -> dict[str, Any]:
    return response(status, {"error": reason, "message": message})


def handle(event: dict[str, Any], api: HandlerDeps) -> Response:
    """Route one API Gateway (v2) event; every failure is a JSON error with a reason code."""
    http = event.get("requestContext", {}).get("http", {})
    method = http.get("method", "GET").upper()
    path = event.get("rawPath") or http.get("path", "/")
    for route_method, pattern, route in ROUTES:
        match = pattern.match(path)
        if match and route_method == method:
            try:
                return route(api, event, **match.groupdict())
            except BadInput as exc:
                return error(400, exc.reason, exc.detail)
    return error(404, Reason.NOT_FOUND, f"no route for {method} {path}")


def lambda_handler(event: dict[str, Any], context: Any) -> Response:
    return handle(event, deps())


def _body(event: dict[str, Any]) -> dict[str, Any]:
    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    try:
        data = json.loads(raw or "{}")
    except ValueError as exc:
        raise BadInput(Reason.BAD_REQUEST, "body must be JSON") from exc
    if not isinstance(data, dict):
        raise BadInput(Reason.BAD_REQUEST, "body must be a JSON object")
    return data


def _facility(api: HandlerDeps, value: Any) -> str:
    facility = check_facility(value)
    if facility not in api.settings.facilities:
        raise BadInput(Reason.UNKNOWN_FACILITY, "facility is not configured on this stack")
    return facility


# -- uploads -------------------------------------------------------------------------


def create_upload(api: HandlerDeps, event: dict[str, Any]) -> Response:
    body = _body(event)
    facility = _facility(api, body.get("facility"))
    priority = body.get("priority", Priority.URGENT)
    if priority not in Priority.ALL:
        raise BadInput(Reason.BAD_REQUEST, "priority must be urgent or backfill")
    files = body.get("files")
    if not isinstance(files, list):
        raise BadInput(Reason.BAD_REQUEST, "files must be a list of {name, size, sha256?}")
    if not files:
        # Still recorded: every upload attempt ends in a state with a reason code.
        upload_id = new_upload_id()
        api.uploads.create_rejected(upload_id, facility, priority, Reason.EMPTY_UPLOAD)
        log.info("upload rejected", extra={"upload_id": upload_id, "reason": Reason.EMPTY_UPLOAD})
        return response(400, {"error": Reason.EMPTY_UPLOAD, "message": "an upload needs at least one file",
                              "upload_id": upload_id})
    promised = _promised_files(files)
    s = api.settings
    upload_id = new_upload_id()
    created = now()
    manifest = Manifest(upload_id=upload_id, facility=facility, priority=priority,
                        files=promised, created_at=created)
    api.raw.put(promised_key(facility, upload_id), manifest.to_json().encode(), "application/json")
    api.uploads.create(upload_id, facility, priority, files=len(promised), size_bytes=sum(f.size for f in promised),
                       created=created, expires_at=int(created + s.upload_expiry_s))
    urls = [{"name": f.name, **api.raw.presigned_post(raw_key(facility, upload_id, f.name), f.size,
                                                     s.upload_url_ttl_s)} for f in promised]
    log.info("upload created", extra={"upload_id": upload_id, "facility": facility, "files": len(promised)})
    return response(201, {"upload_id": upload_id, "files": urls, "complete_url": f"/uploads/{upload_id}/complete"})


def _promised_files(files: list[Any]) -> tuple[ManifestFile, ...]:
    """The announced files, checked: safe unique names, sizes in range, a sha256 each."""
    if len(files) > MAX_FILES:
        raise BadInput(Reason.BAD_REQUEST, f"at most {MAX_FILES} files per upload")
    promised: list[ManifestFile] = []
    seen: set[str] = set()
    for f in files:
        try:
            name, size = check_file_name(str(f["name"])), int(f["size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(Reason.BAD_REQUEST, "each file needs a name and a size") from exc
        if name.split("/", 1)[0] == ".ctfleet" or name in seen:
            raise BadInput(Reason.BAD_REQUEST, "file names must be unique and not start with .ctfleet")
        if not 0 <= size <= MAX_FILE_BYTES:
            raise BadInput(Reason.BAD_REQUEST, "file sizes must be between 0 bytes and 2 GiB")
        sha = check_sha256(f.get("sha256"))
        seen.add(name)
        promised.append(ManifestFile(name=name, size=size, sha256=sha))
    return tuple(promised)


def complete_upload(api: HandlerDeps, event: dict[str, Any], upload_id: str) -> Response:
    record = api.uploads.get(check_upload_id(upload_id))
    if record is None:
        return error(404, Reason.NOT_FOUND, "no such upload")
    if record["status"] != UploadStatus.RECEIVED:
        # Completing twice is harmless: the manifest exists, ingest is idempotent.
        return response(202, _public_upload(record))
    s = api.settings
    facility = record["facility"]
    promised = Manifest.from_json(api.raw.get(promised_key(facility, upload_id)))
    present = api.raw.sizes(raw_prefix(facility, upload_id))
    missing = [f for f in promised.files if present.get(f.name) != f.size]
    if missing:
        return error(409, Reason.UPLOAD_INCOMPLETE,
                     f"{len(missing)} of {len(promised.files)} files are missing or of the wrong size")
    updated = api.uploads.complete(upload_id)
    if updated is None:
        return response(202, _public_upload(api.uploads.get(upload_id) or record))
    # The manifest's arrival is the S3 event that starts ingest; it is written last.
    api.raw.put(raw_key(facility, upload_id, s.manifest_name), promised.to_json().encode(), "application/json")
    log.info("upload complete", extra={"upload_id": upload_id, "facility": facility})
    return response(202, _public_upload(updated))


def get_upload(api: HandlerDeps, event: dict[str, Any], upload_id: str) -> Response:
    record = api.uploads.get(upload_id)
    if record is None:
        return error(404, Reason.NOT_FOUND, "no such upload")
    return response(200, _public_upload(record))


def _public_upload(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("upload_id", "facility", "priority", "status", "reason", "study_key", "files", "bytes",
            "created_at", "received_at", "completed_at", "ingested_at", "duplicate_of")
    return {k: record[k] for k in keys if k in record}


# -- studies -------------------------------------------------------------------------


def list_studies(api: HandlerDeps, event: dict[str, Any]) -> Response:
    query = event.get("queryStringParameters") or {}
    facility = _facility(api, query.get("facility"))
    items = api.studies.for_facility(facility, limit=200)
    return response(200, {"studies": [_public_study(api, i, urls=False) for i in items]})


def get_study(api: HandlerDeps, event: dict[str, Any], study_key: str) -> Response:
    record = api.studies.get(study_key)
    if record is None:
        return error(404, Reason.NOT_FOUND, "no such study")
    return response(200, _public_study(api, record, urls=True))


def _public_study(api: HandlerDeps, record: dict[str, Any], *, urls: bool) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k not in ("alert_claimed_at",)}
    if urls and record.get("status") == Status.DONE:
        out["result_urls"] = {_result_name(key): api.results.presigned_get(key, RESULT_URL_TTL_S)
                              for key in record.get("result_keys", [])}
    return out


def _result_name(key: str) -> str:
    """``labels.nii.gz``, ``report.json``, ``overlay/axial_028.png``: a result's name in its prefix."""
    name = key.rsplit("/", 1)[-1]
    return "overlay/" + name if "/overlay/" in key else name


Route = Callable[..., Response]
# Method, path pattern (its named groups become keyword arguments), function.
ROUTES: tuple[tuple[str, re.Pattern[str], Route], ...] = (
    ("POST", re.compile(r"^/uploads$"), create_upload),
    ("POST", re.compile(r"^/uploads/(?P<upload_id>[0-9a-f]{32})/complete$"), complete_upload),
    ("GET", re.compile(r"^/uploads/(?P<upload_id>[0-9a-f]{32})$"), get_upload),
    ("GET", re.compile(r"^/studies$"), list_studies),
    ("GET", re.compile(r"^/studies/(?P<study_key>[0-9a-f]{8,64})$"), get_study),
)

__all__ = ["ROUTES", "handle", "lambda_handler"]
