"""The local API Gateway: ``/api/*`` as API Gateway v2 events to the API handler, the rest from ``web/``."""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

from .httpd import LoopbackServer

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).resolve().parents[2] / "web"


class ApiServer(LoopbackServer):
    """HTTP front door: ``/api/*`` -> ``dispatcher.api.handle`` (API Gateway v2 events); the rest -> ``web/``."""

    def __init__(self, handler: Callable[[dict[str, Any]], dict[str, Any]], port: int = 0,
                 web_root: Path = WEB_ROOT) -> None:
        api_handler = handler

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _api(self, method: str) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                event = {
                    "version": "2.0",
                    "rawPath": parts.path[len("/api"):] or "/",
                    "rawQueryString": parts.query,
                    "queryStringParameters": dict(parse_qsl(parts.query)) or None,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "requestContext": {"http": {"method": method, "path": parts.path[len("/api"):]}},
                    "body": base64.b64encode(body).decode() if body else None,
                    "isBase64Encoded": bool(body),
                }
                try:
                    out = api_handler(event)
                except Exception:  # noqa: BLE001 - API Gateway answers 500 for a crashed Lambda
                    log.exception("api handler crashed")
                    out = {"statusCode": 500, "headers": {"content-type": "application/json"},
                           "body": json.dumps({"error": "internal", "message": "internal error"})}
                self._reply(out["statusCode"], out.get("headers", {}), (out.get("body") or "").encode())

            def _static(self) -> None:
                path = urlsplit(self.path).path
                rel = "index.html" if path in ("", "/") else path.lstrip("/")
                target = (web_root / rel).resolve()
                if web_root.resolve() not in target.parents or not target.is_file():
                    self._reply(404, {"Content-Type": "text/plain"}, b"not found")
                    return
                ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                self._reply(200, {"Content-Type": ctype, "Cache-Control": "no-cache"}, target.read_bytes())

            def do_GET(self) -> None:  # noqa: N802
                self._api("GET") if self.path.startswith("/api/") else self._static()

            def do_POST(self) -> None:  # noqa: N802
                self._api("POST") if self.path.startswith("/api/") else self._reply(405, {}, b"")

        super().__init__(Handler, port=port, name="api")
