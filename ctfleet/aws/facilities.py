"""Per-facility settings, from the facility config table, read through a short cache.

One item per facility: its HIGH threshold, the SNS topic its alerts go to, and an optional
webhook (an HTTPS URL, and the name of the Secrets Manager secret holding its HMAC key: the
key itself never sits in the table). A facility without an item gets the stack's defaults.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from .records import Table


@dataclass(frozen=True)
class FacilityConfig:
    facility: str
    high_threshold: float
    topic_arn: str | None = None  # None: the stack's alerts topic
    webhook_url: str | None = None
    webhook_secret_name: str | None = None

    def to_item(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class FacilityConfigs:
    """The facility config table (``Settings.facilities_table``), cached for ``cache_s`` per facility."""

    def __init__(self, table: Table, *, default_threshold: float, cache_s: float = 60.0) -> None:
        self.table = table
        self.default_threshold = default_threshold
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, FacilityConfig]] = {}
        self._lock = threading.Lock()

    def get(self, facility: str) -> FacilityConfig:
        with self._lock:
            hit = self._cache.get(facility)
        if hit is not None and time.monotonic() - hit[0] < self.cache_s:
            return hit[1]
        item = self.table.get(facility, consistent=False) or {}
        config = FacilityConfig(
            facility=facility,
            high_threshold=float(item.get("high_threshold", self.default_threshold)),
            topic_arn=item.get("topic_arn") or None,
            webhook_url=item.get("webhook_url") or None,
            webhook_secret_name=item.get("webhook_secret_name") or None,
        )
        with self._lock:
            self._cache[facility] = (time.monotonic(), config)
        return config

    def put(self, config: FacilityConfig) -> None:
        """Set a facility's settings (operators and the local stack; the cache of other processes
        catches up within ``cache_s``)."""
        self.table.put(config.to_item())
        with self._lock:
            self._cache.pop(config.facility, None)
