"""The HTTP API (API Gateway HTTP API, payload v2): uploads and the worklist.

Every route needs a verified Cognito access token: API Gateway's JWT authorizer (locally,
:class:`ctfleet.local.api_server.ApiServer`) checks it and passes its claims in
``requestContext.authorizer.jwt.claims``; the caller's facility and role come from there
only (:class:`ctfleet.access.Principal`). Another facility's upload or study answers 404,
as if it did not exist; a role without the right answers 403; no token 401.

Routes (right needed)
---------------------
POST /uploads                      {priority?, files: [{name, size, sha256}]}            upload
                                   -> 201 {upload_id, files: [{name, url, fields}], complete_url}
POST /uploads/{upload_id}/urls     -> 200 fresh presigned URLs for the promised files S3 lacks  upload
                                      (expired ones renewed; 409 once the upload is completed)
POST /uploads/{upload_id}/complete -> 202 once every promised file is in S3 (409 otherwise)  upload
GET  /uploads/{upload_id}          -> the upload's status, reason and study key           status
GET  /studies                      -> the facility's worklist, newest first              status
GET  /studies/{study_key}          -> one study; with findings and presigned result URLs   status
                                      for the clinical roles (handing them out is an audited read)
POST /studies/{study_key}/signoff  {decision: agree|disagree, comment?, triage_level?}   signoff
                                   -> 201 the study with its latest sign-off (every one is kept)
GET  /studies/{study_key}/audit    -> every event of the study and its uploads, in order   audit
GET  /cost?month=YYYY-MM&by=facility|study|day -> the facility's direct and fully loaded   cost
                                      cost of its studies DONE that month (:mod:`ctfleet.aws.costs`)

File names live only in the raw bucket (they may carry PHI); records hold counts. What each
role is shown of a record is :mod:`ctfleet.access.views`.
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
    TriageLevel,
    UploadStatus,
    check_file_name,
    check_sha256,
    check_upload_id,
    new_upload_id,
    promised_key,
    raw_key,
    raw_prefix,
)
from ctfleet.access import Principal, Right, study_view, upload_view
from ctfleet.aws.audit import subject
from ctfleet.aws.costs import read_report
from ctfleet.errors import BadInput, Forbidden, Unauthenticated

from .deps import HandlerDeps
from .runtime import deps

log = logging.getLogger(__name__)

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
    for route_method, pattern, right, route in ROUTES:
        match = pattern.match(path)
        if match and route_method == method:
            try:
                who = Principal.from_claims(_claims(event), api.settings.facilities)
                who.require(right)
                return route(api, event, who, **match.groupdict())
            except Unauthenticated as exc:
                return error(401, exc.reason, exc.detail)
            except Forbidden as exc:
                return error(403, exc.reason, exc.detail)
            except BadInput as exc:
                return error(400, exc.reason, exc.detail)
    return error(404, Reason.NOT_FOUND, f"no route for {method} {path}")


def lambda_handler(event: dict[str, Any], context: Any) -> Response:
    return handle(event, deps())


def _claims(event: dict[str, Any]) -> dict[str, Any] | None:
    """The verified token's claims, where API Gateway's JWT authorizer puts them."""
    claims = ((event.get("requestContext") or {}).get("authorizer") or {}).get("jwt", {}).get("claims")
    return claims if isinstance(claims, dict) else None


def _body(event: dict[str, Any]) -> dict[str, Any]:
    raw = event.get("body") or ""
    try:
        if event.get("isBase64Encoded"):
            raw = base64.b64decode(raw).decode("utf-8")
        data = json.loads(raw or "{}")
    except (ValueError, RecursionError) as exc:  # bad base64 or UTF-8, not JSON, nested too deep
        raise BadInput(Reason.BAD_REQUEST, "body must be a JSON object in UTF-8") from exc
    if not isinstance(data, dict):
        raise BadInput(Reason.BAD_REQUEST, "body must be a JSON object")
    return data


def _same_facility(who: Principal, named: Any) -> None:
    """A request may name the caller's own facility (older clients do); never another one."""
    if named is None:
        return
    if not isinstance(named, str):
        raise BadInput(Reason.BAD_REQUEST, "facility must be a string")
    if named != who.facility:
        raise Forbidden(Reason.FACILITY_MISMATCH, "the facility comes from your account; it names another")


def _own(record: dict[str, Any] | None, who: Principal) -> dict[str, Any] | None:
    """The record if it belongs to the caller's facility; another facility's is as good as absent."""
    return record if record is not None and record.get("facility") == who.facility else None


# -- uploads -------------------------------------------------------------------------


def create_upload(api: HandlerDeps, event: dict[str, Any], who: Principal) -> Response:
    body = _body(event)
    _same_facility(who, body.get("facility"))
    facility = who.facility
    priority = body.get("priority", Priority.URGENT if who.may(Right.URGENT) else Priority.BACKFILL)
    if priority not in Priority.ALL:
        raise BadInput(Reason.BAD_REQUEST, "priority must be urgent or backfill")
    if priority == Priority.URGENT:
        who.require(Right.URGENT)
    files = body.get("files")
    if not isinstance(files, list):
        raise BadInput(Reason.BAD_REQUEST, "files must be a list of {name, size, sha256?}")
    if not files:
        # Still recorded: every upload attempt ends in a state with a reason code.
        upload_id = new_upload_id()
        api.uploads.create_rejected(upload_id, facility, priority, Reason.EMPTY_UPLOAD, actor=who.actor)
        log.info("upload rejected", extra={"upload_id": upload_id, "reason": Reason.EMPTY_UPLOAD})
        return response(400, {"error": Reason.EMPTY_UPLOAD, "message": "an upload needs at least one file",
                              "upload_id": upload_id})
    s = api.settings
    promised = _promised_files(files, s.upload_max_files)
    declared = sum(f.size for f in promised)
    if declared > s.upload_max_bytes:
        raise BadInput(Reason.UPLOAD_TOO_LARGE, f"one upload may declare at most {s.upload_max_bytes} bytes")
    if api.uploads.open_count(facility, since=now() - s.upload_expiry_s) >= s.uploads_open_max:
        return error(429, Reason.TOO_MANY_OPEN_UPLOADS,
                     f"the facility has {s.uploads_open_max} uploads not yet completed; complete or wait for them")
    upload_id = new_upload_id()
    created = now()
    manifest = Manifest(upload_id=upload_id, facility=facility, priority=priority,
                        files=promised, created_at=created)
    # The record first: a raw object of an upload without one is a leftover, and is deleted.
    api.uploads.create(upload_id, facility, priority, files=len(promised), size_bytes=declared,
                       created=created, expires_at=int(created + s.upload_expiry_s), actor=who.actor)
    api.raw.put(promised_key(facility, upload_id), manifest.to_json().encode(), "application/json")
    urls = [{"name": f.name, **api.raw.presigned_post(raw_key(facility, upload_id, f.name), f.size,
                                                     s.upload_url_ttl_s)} for f in promised]
    log.info("upload created", extra={"upload_id": upload_id, "facility": facility, "files": len(promised)})
    return response(201, {"upload_id": upload_id, "files": urls, "complete_url": f"/uploads/{upload_id}/complete"})


def _promised_files(files: list[Any], max_files: int) -> tuple[ManifestFile, ...]:
    """The announced files, checked: safe unique names, sizes in range, a sha256 each; strict types."""
    if len(files) > max_files:
        raise BadInput(Reason.UPLOAD_TOO_LARGE, f"at most {max_files} files per upload")
    promised: list[ManifestFile] = []
    seen: set[str] = set()
    for f in files:
        if not isinstance(f, dict) or not isinstance(f.get("size"), int) or isinstance(f.get("size"), bool):
            raise BadInput(Reason.BAD_REQUEST, "each file is {name: string, size: integer, sha256: string}")
        name, size = check_file_name(f.get("name")), f["size"]
        if name.split("/", 1)[0] == ".ctfleet" or name in seen:
            raise BadInput(Reason.BAD_REQUEST, "file names must be unique and not start with .ctfleet")
        if not 0 <= size <= MAX_FILE_BYTES:
            raise BadInput(Reason.BAD_REQUEST, "file sizes must be between 0 bytes and 2 GiB")
        sha = check_sha256(f.get("sha256"))
        seen.add(name)
        promised.append(ManifestFile(name=name, size=size, sha256=sha))
    return tuple(promised)


def renew_urls(api: HandlerDeps, event: dict[str, Any], who: Principal, upload_id: str) -> Response:
    """New presigned POSTs for every promised file not yet in S3 at its promised size (a resumed or
    slow backfill whose URLs expired); the upload's own deadline does not move."""
    record = _own(api.uploads.get(check_upload_id(upload_id)), who)
    if record is None:
        return error(404, Reason.NOT_FOUND, "no such upload")
    if record["status"] != UploadStatus.RECEIVED:
        return error(409, Reason.CONFLICT, f"the upload is {record['status']}: nothing more can be sent to it")
    s, facility = api.settings, record["facility"]
    promised = Manifest.from_json(api.raw.get(promised_key(facility, upload_id)))
    present = api.raw.sizes(raw_prefix(facility, upload_id))
    remaining = int(float(record.get("expires_at", 0)) - now())
    if remaining <= 0:
        return error(409, Reason.UPLOAD_INCOMPLETE, "the upload's deadline has passed; create a new upload")
    ttl = min(s.upload_url_ttl_s, remaining)
    urls = [{"name": f.name, **api.raw.presigned_post(raw_key(facility, upload_id, f.name), f.size, ttl)}
            for f in promised.files if present.get(f.name) != f.size]
    return response(200, {"upload_id": upload_id, "files": urls, "promised": len(promised.files),
                          "complete_url": f"/uploads/{upload_id}/complete"})


def complete_upload(api: HandlerDeps, event: dict[str, Any], who: Principal, upload_id: str) -> Response:
    record = _own(api.uploads.get(check_upload_id(upload_id)), who)
    if record is None:
        return error(404, Reason.NOT_FOUND, "no such upload")
    if record["status"] != UploadStatus.RECEIVED:
        # Completing twice is harmless: the manifest exists, ingest is idempotent.
        return response(202, upload_view(record, who))
    s = api.settings
    facility = record["facility"]
    promised = Manifest.from_json(api.raw.get(promised_key(facility, upload_id)))
    present = api.raw.sizes(raw_prefix(facility, upload_id))
    missing = [f for f in promised.files if present.get(f.name) != f.size]
    if missing:
        return error(409, Reason.UPLOAD_INCOMPLETE,
                     f"{len(missing)} of {len(promised.files)} files are missing or of the wrong size")
    updated = api.uploads.complete(upload_id, actor=who.actor)
    if updated is None:
        return response(202, upload_view(api.uploads.get(upload_id) or record, who))
    # The manifest's arrival is the S3 event that starts ingest; it is written last.
    api.raw.put(raw_key(facility, upload_id, s.manifest_name), promised.to_json().encode(), "application/json")
    log.info("upload complete", extra={"upload_id": upload_id, "facility": facility})
    return response(202, upload_view(updated, who))


def get_upload(api: HandlerDeps, event: dict[str, Any], who: Principal, upload_id: str) -> Response:
    record = _own(api.uploads.get(upload_id), who)
    if record is None:
        return error(404, Reason.NOT_FOUND, "no such upload")
    return response(200, upload_view(record, who))


# -- studies -------------------------------------------------------------------------


def list_studies(api: HandlerDeps, event: dict[str, Any], who: Principal) -> Response:
    _same_facility(who, (event.get("queryStringParameters") or {}).get("facility"))
    items = api.studies.for_facility(who.facility, limit=200)
    return response(200, {"studies": [study_view(i, who) for i in items]})


def get_study(api: HandlerDeps, event: dict[str, Any], who: Principal, study_key: str) -> Response:
    record = _own(api.studies.get(study_key), who)
    if record is None:
        return error(404, Reason.NOT_FOUND, "no such study")
    out = study_view(record, who)
    if who.may(Right.FINDINGS) and record.get("status") == Status.DONE:
        out["result_urls"] = {_result_name(key): api.results.presigned_get(key, RESULT_URL_TTL_S)
                              for key in record.get("result_keys", [])}
        # Handing out the result URLs is the read: on record before they leave.
        api.audit.append(subject("study", study_key), "read", facility=who.facility, actor=who.actor,
                         model_version=record.get("model_version"))
    return response(200, out)


SIGNOFF_DECISIONS = ("agree", "disagree")
MAX_COMMENT_CHARS = 2000


def sign_off(api: HandlerDeps, event: dict[str, Any], who: Principal, study_key: str) -> Response:
    """A radiologist agrees or disagrees with the triage (optionally naming the level they would give)."""
    record = _own(api.studies.get(study_key), who)
    if record is None:
        return error(404, Reason.NOT_FOUND, "no such study")
    body = _body(event)
    decision, comment, level = body.get("decision"), body.get("comment", ""), body.get("triage_level")
    if decision not in SIGNOFF_DECISIONS:
        raise BadInput(Reason.BAD_REQUEST, "decision must be agree or disagree")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS:
        raise BadInput(Reason.BAD_REQUEST, f"comment must be text of at most {MAX_COMMENT_CHARS} characters")
    if level is not None and level not in TriageLevel.ALL:
        raise BadInput(Reason.BAD_REQUEST, f"triage_level must be one of {', '.join(TriageLevel.ALL)}")
    signoff = {"decision": decision, "comment": "".join(c for c in comment if c.isprintable() or c == "\n"),
               "triage_level": level, "user": who.user, "at": now(),
               "model_version": record.get("model_version")}
    updated = api.studies.sign_off(study_key, {k: v for k, v in signoff.items() if v is not None})
    if updated is None:
        return error(409, Reason.CONFLICT, "only a DONE study can be signed off")
    return response(201, study_view(updated, who))


def get_audit(api: HandlerDeps, event: dict[str, Any], who: Principal, study_key: str) -> Response:
    """Every event of the study, and of the uploads behind it, oldest first."""
    record = _own(api.studies.get(study_key), who)
    if record is None:
        return error(404, Reason.NOT_FOUND, "no such study")
    events = api.audit.history(subject("study", study_key))
    uploads = {str(record["upload_id"])} | {str(e["upload_id"]) for e in events if e.get("upload_id")}
    for upload_id in uploads:
        events += api.audit.history(subject("upload", upload_id))
    events.sort(key=lambda e: str(e["seq"]))
    keep = ("seq", "at", "subject", "kind", "from", "to", "reason", "actor", "attempt")
    return response(200, {"study_key": study_key, "events": [
        {k: (e[k] if k != "subject" else str(e[k]).split(":", 1)[0]) for k in keep if k in e} for e in events]})




def get_cost(api: HandlerDeps, event: dict[str, Any], who: Principal) -> Response:
    """Finance's figures: the caller's facility only (the overhead is shared over every facility's
    studies of the month, but no facility sees another's)."""
    query = event.get("queryStringParameters") or {}
    _same_facility(who, query.get("facility"))
    month, by = query.get("month", ""), query.get("by", "facility")
    report = read_report(api.ledger, api.studies.table, month)
    return response(200, report.to_json(by, facility=who.facility))


def _result_name(key: str) -> str:
    """``labels.nii.gz``, ``report.json``, ``overlay/axial_028.png``: a result's name in its prefix."""
    name = key.rsplit("/", 1)[-1]
    return "overlay/" + name if "/overlay/" in key else name


Route = Callable[..., Response]
# Method, path pattern (its named groups become keyword arguments), the right it needs, function.
ROUTES: tuple[tuple[str, re.Pattern[str], str, Route], ...] = (
    ("POST", re.compile(r"^/uploads$"), Right.UPLOAD, create_upload),
    ("POST", re.compile(r"^/uploads/(?P<upload_id>[0-9a-f]{32})/urls$"), Right.UPLOAD, renew_urls),
    ("POST", re.compile(r"^/uploads/(?P<upload_id>[0-9a-f]{32})/complete$"), Right.UPLOAD, complete_upload),
    ("GET", re.compile(r"^/uploads/(?P<upload_id>[0-9a-f]{32})$"), Right.STATUS, get_upload),
    ("GET", re.compile(r"^/studies$"), Right.STATUS, list_studies),
    ("GET", re.compile(r"^/studies/(?P<study_key>[0-9a-f]{8,64})$"), Right.STATUS, get_study),
    ("POST", re.compile(r"^/studies/(?P<study_key>[0-9a-f]{8,64})/signoff$"), Right.SIGNOFF, sign_off),
    ("GET", re.compile(r"^/studies/(?P<study_key>[0-9a-f]{8,64})/audit$"), Right.AUDIT, get_audit),
    ("GET", re.compile(r"^/cost$"), Right.COST, get_cost),
)

__all__ = ["ROUTES", "handle", "lambda_handler"]
