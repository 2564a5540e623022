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
import time
from typing import Any

from botocore.exceptions import ClientError

from ctfleet.aws.clients import list_sizes
from ctfleet.contracts import (
    Manifest,
    ManifestFile,
    Reason,
    Status,
    check_facility,
    check_file_name,
    check_sha256,
    check_upload_id,
    new_upload_id,
    raw_key,
    raw_prefix,
)
from ctfleet.errors import BadInput
from ctfleet.aws.records import ConditionFailed, now
from .deps import HandlerDeps

log = logging.getLogger(__name__)

MAX_FILES = 20_000
MAX_FILE_BYTES = 2 * 1024**3
PROMISED = ".ctfleet/promised.json"  # the file list as announced, kept beside the upload
RESULT_URL_TTL_S = 900


class UploadStatus:
    RECEIVED = "RECEIVED"  # created, files may be arriving
    COMPLETE = "COMPLETE"  # every promised file is present; manifest written
    QUEUED = "QUEUED"  # ingest made (or found) a study of it and queued its job
    REJECTED = "REJECTED"
    FAILED = "FAILED"
    FINAL = frozenset({QUEUED, REJECTED, FAILED})


class Api(HandlerDeps):
    """The API function's dependencies."""


def response(status: int, body: Any) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", "cache-control": "no-store"},
        "body": json.dumps(body, default=str),
    }


def error(status: int, reason: str, message: str) -> dict[str, Any]:
    return response(status, {"error": reason, "message": message})


_ROUTES = [
    ("POST", re.compile(r"^/uploads$"), "create_upload"),
    ("POST", re.compile(r"^/uploads/(?P<upload_id>[0-9a-f]{32})/complete$"), "complete_upload"),
    ("GET", re.compile(r"^/uploads/(?P<upload_id>[0-9a-f]{32})$"), "get_upload"),
    ("GET", re.compile(r"^/studies$"), "list_studies"),
    ("GET", re.compile(r"^/studies/(?P<study_key>[0-9a-f]{8,64})$"), "get_study"),
]


def handle(event: dict[str, Any], api: Api) -> dict[str, Any]:
    """Route one API Gateway (v2) event; every failure is a JSON error with a reason code."""
    http = event.get("requestContext", {}).get("http", {})
    method = http.get("method", "GET").upper()
    path = event.get("rawPath") or http.get("path", "/")
    for route_method, pattern, name in _ROUTES:
        match = pattern.match(path)
        if match and route_method == method:
            try:
                return globals()[name](api, event, **match.groupdict())
            except BadInput as exc:
                return error(400, exc.reason, exc.detail)
    return error(404, "not_found", f"no route for {method} {path}")


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    from .runtime import clients

    return handle(event, Api(clients()))


def _body(event: dict[str, Any]) -> dict[str, Any]:
    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    try:
        data = json.loads(raw or "{}")
    except ValueError as exc:
        raise BadInput("bad_request", "body must be JSON") from exc
    if not isinstance(data, dict):
        raise BadInput("bad_request", "body must be a JSON object")
    return data


def _facility(api: Api, value: Any) -> str:
    facility = check_facility(value)
    if facility not in api.settings.facilities:
        raise BadInput(Reason.UNKNOWN_FACILITY, "facility is not configured on this stack")
    return facility


# -- uploads -------------------------------------------------------------------------


def create_upload(api: Api, event: dict[str, Any]) -> dict[str, Any]:
    body = _body(event)
    facility = _facility(api, body.get("facility"))
    priority = body.get("priority", "urgent")
    if priority not in ("urgent", "backfill"):
        raise BadInput("bad_request", "priority must be urgent or backfill")
    files = body.get("files")
    if not isinstance(files, list):
        raise BadInput("bad_request", "files must be a list of {name, size, sha256?}")
    if not files:
        # Still recorded: every upload attempt ends in a state with a reason code.
        upload_id = _record_rejected(api, facility, priority, Reason.EMPTY_UPLOAD)
        return response(400, {"error": Reason.EMPTY_UPLOAD, "message": "an upload needs at least one file",
                              "upload_id": upload_id})
    if len(files) > MAX_FILES:
        raise BadInput("bad_request", f"at most {MAX_FILES} files per upload")
    promised: list[ManifestFile] = []
    seen: set[str] = set()
    for f in files:
        try:
            name, size = check_file_name(str(f["name"])), int(f["size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput("bad_request", "each file needs a name and a size") from exc
        if name.split("/", 1)[0] == ".ctfleet" or name in seen:
            raise BadInput("bad_request", "file names must be unique and not start with .ctfleet")
        if not 0 <= size <= MAX_FILE_BYTES:
            raise BadInput("bad_request", "file sizes must be between 0 bytes and 2 GiB")
        sha = check_sha256(f.get("sha256"))
        seen.add(name)
        promised.append(ManifestFile(name=name, size=size, sha256=sha))

    s = api.settings
    upload_id = new_upload_id()
    created = now()
    manifest = Manifest(upload_id=upload_id, facility=facility, priority=priority,
                        files=tuple(promised), created_at=created)
    api.clients.s3.put_object(
        Bucket=s.raw_bucket, Key=raw_key(facility, upload_id, PROMISED), Body=manifest.to_json().encode(),
        ContentType="application/json",
    )
    api.uploads.put_new(
        {
            "upload_id": upload_id,
            "facility": facility,
            "priority": priority,
            "status": UploadStatus.RECEIVED,
            "files": len(promised),
            "bytes": sum(f.size for f in promised),
            "created_at": _iso(created),
            "received_at": created,
            "expires_at": int(created + s.upload_expiry_s),
        }
    )
    urls = []
    for f in promised:
        post = api.clients.s3.generate_presigned_post(
            Bucket=s.raw_bucket,
            Key=raw_key(facility, upload_id, f.name),
            Conditions=[["content-length-range", f.size, f.size]],
            ExpiresIn=s.upload_url_ttl_s,
        )
        urls.append({"name": f.name, "url": post["url"], "fields": post["fields"]})
    log.info("upload created", extra={"upload_id": upload_id, "facility": facility, "files": len(promised)})
    return response(201, {"upload_id": upload_id, "files": urls, "complete_url": f"/uploads/{upload_id}/complete"})


def _record_rejected(api: Api, facility: str, priority: str, reason: str) -> str:
    upload_id = new_upload_id()
    t = now()
    api.uploads.put_new({"upload_id": upload_id, "facility": facility, "priority": priority,
                         "status": UploadStatus.REJECTED, "reason": reason, "files": 0, "bytes": 0,
                         "created_at": _iso(t), "received_at": t, "ingested_at": t})
    log.info("upload rejected", extra={"upload_id": upload_id, "reason": reason})
    return upload_id


def complete_upload(api: Api, event: dict[str, Any], upload_id: str) -> dict[str, Any]:
    record = api.uploads.get(check_upload_id(upload_id))
    if record is None:
        return error(404, "not_found", "no such upload")
    if record["status"] != UploadStatus.RECEIVED:
        # Completing twice is harmless: the manifest exists, ingest is idempotent.
        return response(202, _public_upload(record))
    s = api.settings
    facility = record["facility"]
    promised = Manifest.from_json(
        api.clients.s3.get_object(Bucket=s.raw_bucket, Key=raw_key(facility, upload_id, PROMISED))["Body"].read()
    )
    present = _listing(api, facility, upload_id)
    missing = [f for f in promised.files if present.get(f.name) != f.size]
    if missing:
        return error(409, Reason.UPLOAD_INCOMPLETE,
                     f"{len(missing)} of {len(promised.files)} files are missing or of the wrong size")
    try:
        updated = api.uploads.update(
            upload_id,
            {"status": UploadStatus.COMPLETE, "completed_at": now()},
            condition="#status = :received",
            values={":received": UploadStatus.RECEIVED},
        )
    except ConditionFailed:
        return response(202, _public_upload(api.uploads.get(upload_id) or record))
    # The manifest's arrival is the S3 event that starts ingest; it is written last.
    api.clients.s3.put_object(
        Bucket=s.raw_bucket, Key=raw_key(facility, upload_id, s.manifest_name),
        Body=promised.to_json().encode(), ContentType="application/json",
    )
    log.info("upload complete", extra={"upload_id": upload_id, "facility": facility})
    return response(202, _public_upload(updated))


def _listing(api: Api, facility: str, upload_id: str) -> dict[str, int]:
    return list_sizes(api.clients.s3, api.settings.raw_bucket, raw_prefix(facility, upload_id))


def get_upload(api: Api, event: dict[str, Any], upload_id: str) -> dict[str, Any]:
    record = api.uploads.get(upload_id)
    if record is None:
        return error(404, "not_found", "no such upload")
    return response(200, _public_upload(record))


def _public_upload(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("upload_id", "facility", "priority", "status", "reason", "study_key", "files", "bytes",
            "created_at", "received_at", "completed_at", "ingested_at", "duplicate_of")
    return {k: record[k] for k in keys if k in record}


# -- studies -------------------------------------------------------------------------


def list_studies(api: Api, event: dict[str, Any]) -> dict[str, Any]:
    query = event.get("queryStringParameters") or {}
    facility = _facility(api, query.get("facility"))
    index = api.settings.studies_table.indexes[0]
    items = api.studies.query_index(index.name, index.partition_key, facility, limit=200)
    return response(200, {"studies": [_public_study(api, i, urls=False) for i in items]})


def get_study(api: Api, event: dict[str, Any], study_key: str) -> dict[str, Any]:
    record = api.studies.get(study_key)
    if record is None:
        return error(404, "not_found", "no such study")
    return response(200, _public_study(api, record, urls=True))


def _public_study(api: Api, record: dict[str, Any], *, urls: bool) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k not in ("alert_claimed_at",)}
    if urls and record.get("status") == Status.DONE:
        out["result_urls"] = {
            key.rsplit("/", 1)[-1] if "/overlay/" not in key else "overlay/" + key.rsplit("/", 1)[-1]:
            api.clients.s3.generate_presigned_url(
                "get_object", Params={"Bucket": api.settings.results_bucket, "Key": key}, ExpiresIn=RESULT_URL_TTL_S
            )
            for key in record.get("result_keys", [])
        }
    return out


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


__all__ = ["Api", "handle", "lambda_handler", "UploadStatus", "ClientError"]
