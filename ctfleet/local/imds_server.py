"""A local stand-in for the EC2 instance metadata service (IMDSv2), one per local worker.

moto has no IMDS; the local stack runs one of these per worker so the worker's
real IMDS client and spot watcher run unchanged, and tests can flip a spot
interruption notice on.
"""

from __future__ import annotations

import json
import secrets
import time
from http.server import BaseHTTPRequestHandler

from .httpd import LoopbackServer


class LocalImds(LoopbackServer):
    """IMDSv2 for one local instance: identity, placement, market, and the notices tests can post."""

    def __init__(self, instance_id: str, instance_type: str, *, zone: str = "us-east-1a",
                 market: str = "spot") -> None:
        self.instance_id = instance_id
        self.instance_type = instance_type
        self.zone = zone
        self.market = market
        self._action: str | None = None
        self._rebalance: str | None = None
        self.target_lifecycle_state = "InService"
        self._tokens: set[str] = set()
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _send(self, status: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:  # noqa: N802
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    token = secrets.token_urlsafe(24)
                    imds._tokens.add(token)
                    self._send(200, token)
                else:
                    self._send(400)

            def do_GET(self) -> None:  # noqa: N802
                if self.headers.get("X-aws-ec2-metadata-token") not in imds._tokens:
                    self._send(401)
                    return
                routes = {
                    "/latest/meta-data/instance-id": imds.instance_id,
                    "/latest/meta-data/instance-type": imds.instance_type,
                    "/latest/meta-data/instance-life-cycle": imds.market,
                    "/latest/meta-data/placement/availability-zone": imds.zone,
                    "/latest/meta-data/spot/instance-action": imds._action,
                    "/latest/meta-data/events/recommendations/rebalance": imds._rebalance,
                    "/latest/meta-data/autoscaling/target-lifecycle-state": imds.target_lifecycle_state,
                }
                value = routes.get(self.path)
                self._send(200, value) if value is not None else self._send(404)

        super().__init__(Handler, name=f"imds-{instance_id}")

    def interrupt(self, in_seconds: float = 120.0) -> None:
        """Post a spot interruption notice, as EC2 does two minutes before reclaiming."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + in_seconds))
        self._action = json.dumps({"action": "terminate", "time": when})

    def recommend_rebalance(self) -> None:
        """Post a rebalance recommendation: EC2's early word that this spot instance is at risk."""
        self._rebalance = json.dumps({"noticeTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def terminate(self) -> None:
        """The Auto Scaling group is terminating this instance (a lifecycle hook holds it meanwhile)."""
        self.target_lifecycle_state = "Terminated"
