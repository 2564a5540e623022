"""The local API Gateway: ``/api/*`` as API Gateway v2 events to the API handler, the rest from ``web/``.

It plays API Gateway's two parts in front of the function: the JWT authorizer (the same
:class:`ctfleet.access.TokenVerifier` checks the bearer token, and its claims go into
``requestContext.authorizer.jwt.claims`` as strings, lists rendered ``"[a b]"``, as API
Gateway passes them on) and the door's limits (a body of at most ``MAX_BODY_BYTES`` with
a valid ``Content-Length``, read within ``READ_TIMEOUT_S``).
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

from ctfleet.contracts import Reason
from ctfleet.errors import Transient, Unauthenticated

from .httpd import LoopbackServer

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).resolve().parents[2] / "web"
MAX_BODY_BYTES = 4 * 1024 * 1024  # API Gateway's own limit is 10 MB; an upload's listing needs far less
READ_TIMEOUT_S = 10.0  # a client that sends its headers but not its body is cut off

Verify = Callable[[str], dict[str, Any]]


def gateway_claims(claims: dict[str, Any]) -> dict[str, str]:
    """Claims as API Gateway's JWT authorizer hands them to the function: every value a string."""
    out = {}
    for k, v in claims.items():
        if isinstance(v, list):
            out[k] = "[" + " ".join(str(i) for i in v) + "]"
        elif isinstance(v, bool):
            out[k] = "true" if v else "false"
        else:
            out[k] = str(v)
    return out


class _Handler(BaseHTTPRequestHandler):
    """One request at the local front door; :class:`ApiServer` makes a subclass bound to its parts."""

    protocol_version = "HTTP/1.1"
    api_handler: Callable[[dict[str, Any]], dict[str, Any]]
    verify: Verify
    config: bytes = b"{}"
    web_root: Path = WEB_ROOT
    timeout = READ_TIMEOUT_S  # applied to the connection's socket: slow bodies time out

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, reason: str, message: str, *, close: bool = False) -> None:
        headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
        if close:  # the body was not read: the connection cannot carry another request
            headers["Connection"] = "close"
            self.close_connection = True
        self._reply(status, headers, json.dumps({"error": reason, "message": message}).encode())

    def _read_body(self) -> bytes | None:
        """The request body within the door's limits, or None (an error was answered)."""
        declared = self.headers.get("Content-Length")
        if declared is None:
            return b""
        if not declared.isdigit():
            self._error(400, Reason.BAD_REQUEST, "Content-Length must be a number of bytes", close=True)
            return None
        length = int(declared)
        if length > MAX_BODY_BYTES:
            self._error(413, Reason.BAD_REQUEST, f"a request body may have at most {MAX_BODY_BYTES} bytes",
                        close=True)
            return None
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            return None
        if len(body) != length:
            self.close_connection = True
            return None
        return body

    def _authorize(self) -> dict[str, str] | None:
        """API Gateway's JWT authorizer: the verified claims, or None (401 answered)."""
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self._error(401, Reason.NO_TOKEN, "sign in: this API needs a bearer token")
            return None
        try:
            return gateway_claims(type(self).verify(token.strip()))
        except Unauthenticated as exc:
            self._error(401, exc.reason, exc.detail)
        except Transient as exc:
            self._error(503, exc.reason, exc.detail)
        return None

    def _api(self, method: str) -> None:
        body = self._read_body()
        if body is None:
            return
        claims = self._authorize()
        if claims is None:
            return
        parts = urlsplit(self.path)
        event = {
            "version": "2.0",
            "rawPath": parts.path[len("/api"):] or "/",
            "rawQueryString": parts.query,
            "queryStringParameters": dict(parse_qsl(parts.query)) or None,
            "headers": {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"},
            "requestContext": {"http": {"method": method, "path": parts.path[len("/api"):]},
                               "authorizer": {"jwt": {"claims": claims, "scopes": None}}},
            "body": base64.b64encode(body).decode() if body else None,
            "isBase64Encoded": bool(body),
        }
        try:
            out = type(self).api_handler(event)
        except Exception:  # noqa: BLE001 - API Gateway answers 500 for a crashed Lambda
            log.exception("api handler crashed")
            out = {"statusCode": 500, "headers": {"content-type": "application/json"},
                   "body": json.dumps({"error": "internal", "message": "internal error"})}
        self._reply(out["statusCode"], out.get("headers", {}), (out.get("body") or "").encode())

    def _static(self) -> None:
        path = urlsplit(self.path).path
        if path == "/config.json":
            self._reply(200, {"Content-Type": "application/json", "Cache-Control": "no-cache"}, self.config)
            return
        rel = "index.html" if path in ("", "/") else path.lstrip("/")
        target = (self.web_root / rel).resolve()
        if self.web_root.resolve() not in target.parents or not target.is_file():
            self._reply(404, {"Content-Type": "text/plain"}, b"not found")
            return
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self._reply(200, {"Content-Type": ctype, "Cache-Control": "no-cache"}, target.read_bytes())

    def do_GET(self) -> None:  # noqa: N802
        self._api("GET") if self.path.startswith("/api/") else self._static()

    def do_POST(self) -> None:  # noqa: N802
        self._api("POST") if self.path.startswith("/api/") else self._reply(405, {}, b"")


class ApiServer(LoopbackServer):
    """HTTP front door: ``/api/*`` -> ``dispatcher.api.handle`` (API Gateway v2 events); the rest -> ``web/``.

    Parameters
    ----------
    handler : callable
        The API function (an API Gateway v2 event in, a response out).
    verify : callable
        A bearer token -> its verified claims (:meth:`ctfleet.access.TokenVerifier.verify`).
    web_config : dict
        Served as ``/config.json``: what the page needs to sign in (the user pool's endpoint and client).
    """

    def __init__(self, handler: Callable[[dict[str, Any]], dict[str, Any]], verify: Verify, port: int = 0,
                 web_root: Path = WEB_ROOT, web_config: dict[str, Any] | None = None) -> None:
        bound = type("Handler", (_Handler,), {
            "api_handler": staticmethod(handler), "verify": staticmethod(verify),
            "config": json.dumps(web_config or {}).encode(), "web_root": web_root})
        super().__init__(bound, port=port, name="api")
