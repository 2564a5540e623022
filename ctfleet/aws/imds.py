"""A small EC2 instance metadata (IMDSv2) client: identity and spot interruption notices.

No IMDS answering (a laptop, a test) is not an error: identity falls back to
the host name and no notice is ever seen.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

TOKEN_TTL_S = 21600


class Imds:
    def __init__(self, endpoint: str, timeout_s: float = 0.5) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout_s = timeout_s
        self._token: str | None = None

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
        req = urllib.request.Request(self.endpoint + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - fixed endpoint
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except (urllib.error.URLError, OSError, TimeoutError):
            return 0, ""

    def get(self, path: str) -> str | None:
        """GET a metadata path; None when absent (404) or when no IMDS answers."""
        if self._token is None:
            status, token = self._request("PUT", "/latest/api/token",
                                          {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)})
            if status != 200:
                return None
            self._token = token
        status, body = self._request("GET", path, {"X-aws-ec2-metadata-token": self._token})
        if status == 401:  # token expired: fetch a new one next time
            self._token = None
        return body if status == 200 else None

    def instance_id(self) -> str:
        return self.get("/latest/meta-data/instance-id") or f"local-{socket.gethostname()}"

    def instance_type(self, default: str) -> str:
        return self.get("/latest/meta-data/instance-type") or default

    def spot_action(self) -> str | None:
        """The pending spot interruption (JSON text), or None."""
        return self.get("/latest/meta-data/spot/instance-action")

    def market(self) -> str:
        """``spot`` or ``on-demand`` (``on-demand`` when no IMDS answers)."""
        return self.get("/latest/meta-data/instance-life-cycle") or "on-demand"

    def zone(self) -> str:
        return self.get("/latest/meta-data/placement/availability-zone") or ""

    def rebalance_recommended(self) -> bool:
        """True once EC2 recommends moving work off this spot instance."""
        return self.get("/latest/meta-data/events/recommendations/rebalance") is not None

    def terminating(self) -> bool:
        """True when the Auto Scaling group is terminating this instance (scale-in, replacement)."""
        return self.get("/latest/meta-data/autoscaling/target-lifecycle-state") == "Terminated"
