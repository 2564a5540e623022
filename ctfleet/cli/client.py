"""The uploader's side of the API, as a browser, the demo or the backfill CLI speaks it.

create the upload -> POST each file to its presigned URL, straight to S3 -> complete.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import requests

from ctfleet.contracts import Reason
from ctfleet.errors import BadInput, Conflict, Forbidden, NotFound, Transient, Unauthenticated


@dataclass(frozen=True)
class UploadResult:
    upload_id: str
    files: int
    size_bytes: int


class ApiClient:
    def __init__(self, base_url: str, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.base = base_url.rstrip("/")
        self.http = requests.Session()
        self.timeout_s = timeout_s
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def _json(self, resp: requests.Response) -> dict[str, Any]:
        try:
            data = resp.json()
        except ValueError as exc:
            raise Transient(Reason.SERVICE_BUSY, f"HTTP {resp.status_code} without JSON") from exc
        if resp.status_code >= 500 or resp.status_code == 429:
            raise Transient(str(data.get("error", Reason.SERVICE_BUSY)), str(data.get("message", "")))
        if resp.status_code == 401:
            raise Unauthenticated(str(data.get("error", Reason.NO_TOKEN)), str(data.get("message", "")))
        if resp.status_code == 403:
            raise Forbidden(str(data.get("error", Reason.ROLE_NOT_ALLOWED)), str(data.get("message", "")))
        if resp.status_code == 404:
            raise NotFound(str(data.get("error", Reason.NOT_FOUND)), str(data.get("message", "")))
        if resp.status_code == 409:
            raise Conflict(str(data.get("error", Reason.CONFLICT)), str(data.get("message", "")))
        if resp.status_code >= 400:
            raise BadInput(str(data.get("error", Reason.BAD_REQUEST)), str(data.get("message", "")))
        return data

    def upload(self, facility: str, files: list[tuple[str, bytes]], *, priority: str = "urgent") -> UploadResult:
        """Send one study; returns once the API has accepted the completed upload."""
        sent = self.send(facility, files, priority=priority)
        self.complete(sent.upload_id)
        return sent

    def send(self, facility: str, files: list[tuple[str, bytes]], *, priority: str = "urgent") -> UploadResult:
        """Create an upload and send its files, without completing it (nothing is ingested yet)."""
        listing: list[dict[str, Any]] = [{"name": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files]
        created = self.create_upload(listing, priority=priority, facility=facility)
        by_name = dict(files)
        for target in created["files"]:
            self.post_file(target, by_name[target["name"]])
        return UploadResult(created["upload_id"], len(files), sum(len(b) for _, b in files))

    def create_upload(self, listing: list[dict[str, Any]], *, priority: str, facility: str | None = None) -> dict[str, Any]:
        """``POST /uploads``: ``{upload_id, files: [{name, url, fields}]}`` for the announced files."""
        body: dict[str, Any] = {"priority": priority, "files": listing}
        if facility is not None:
            body["facility"] = facility
        return self._request("POST", "/uploads", json=body)

    def renew_urls(self, upload_id: str) -> dict[str, Any]:
        """Fresh presigned POSTs for the files of an open upload that S3 does not hold yet."""
        return self._request("POST", f"/uploads/{upload_id}/urls")

    def post_file(self, target: dict[str, Any], data: bytes) -> None:
        """One file straight to S3 through its presigned POST; an expired or refused one is Forbidden."""
        try:
            resp = self.http.post(target["url"], data=target["fields"],
                                  files={"file": (target["name"].rsplit("/", 1)[-1], data)}, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise Transient(Reason.SERVICE_BUSY, f"presigned POST failed ({type(exc).__name__})") from exc
        if resp.status_code in (400, 403):  # S3's answer to an expired policy or a signature it refuses
            raise Forbidden(Reason.UPLOAD_INCOMPLETE, f"S3 refused the presigned POST (HTTP {resp.status_code})")
        if resp.status_code not in (200, 201, 204):
            raise Transient(Reason.SERVICE_BUSY, f"presigned POST answered HTTP {resp.status_code}")

    def complete(self, upload_id: str) -> dict[str, Any]:
        """Tell the API every file is in; ingest starts."""
        return self._request("POST", f"/uploads/{upload_id}/complete")

    def get_upload(self, upload_id: str) -> dict[str, Any]:
        return self._request("GET", f"/uploads/{upload_id}")

    def get_study(self, study_key: str) -> dict[str, Any]:
        return self._request("GET", f"/studies/{study_key}")

    def list_studies(self, facility: str | None = None) -> dict[str, Any]:
        """The worklist; naming a ``facility`` other than the token's is refused (403 facility_mismatch)."""
        return self._request("GET", "/studies", params={"facility": facility} if facility else None)

    def get_cost(self, month: str, by: str) -> dict[str, Any]:
        return self._request("GET", "/cost", params={"month": month, "by": by})

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            resp = self.http.request(method, f"{self.base}{path}", timeout=self.timeout_s, **kwargs)
        except requests.RequestException as exc:  # refused, reset, timed out: the network, not the request
            raise Transient(Reason.SERVICE_BUSY, f"{method} {path.split('/')[1]} failed ({type(exc).__name__})") from exc
        return self._json(resp)

    def wait(self, upload_id: str, *, timeout_s: float, poll_s: float = 0.5) -> dict[str, Any]:
        """Poll until the upload and, if accepted, its study reach a final state.

        Returns ``{"upload": ..., "study": ... | None, "final": bool}``.
        """
        deadline = time.monotonic() + timeout_s
        upload: dict[str, Any] = {}
        study: dict[str, Any] | None = None
        while True:  # at least one look, even with timeout_s=0
            upload = self.get_upload(upload_id)
            if upload["status"] in ("REJECTED", "FAILED"):
                return {"upload": upload, "study": None, "final": True}
            if upload["status"] == "QUEUED":
                study = self.get_study(upload["study_key"])
                if study["status"] in ("DONE", "REJECTED", "FAILED"):
                    return {"upload": upload, "study": study, "final": True}
            if time.monotonic() + poll_s > deadline:
                break
            time.sleep(poll_s)
        return {"upload": upload, "study": study, "final": False}


def print_columns(header: list[str] | tuple[str, ...], cells: list[list[str]]) -> None:
    """A plain text table on stdout: the header, then one line per row, columns padded to fit."""
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
