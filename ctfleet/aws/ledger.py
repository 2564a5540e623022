"""The cost ledger: what each GPU instance did with its time, and what it cost per hour.

One item per instance, written by its worker: opened when the worker starts (boot
seconds: launch to first readiness), added to after every job (busy seconds, or
interrupted seconds for a job handed back), and closed when the worker stops
(the idle seconds between and after jobs, the end time). Fully loaded cost per
study is the instance's total cost (boot + busy + idle + interrupted, at its
price) spread over the studies it finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .records import iso, now
from .repositories import Repository


class Ledger(Repository):
    """The ledger table (``Settings.ledger_table``), one item per instance."""

    def open(self, instance_id: str, *, instance_type: str, market: str, zone: str, launched_at: float,
             ready_at: float, price_per_hour_usd: float, price_source: str) -> None:
        """The instance is ready for work; its boot took ``ready_at - launched_at`` seconds."""
        self.table.put({
            "instance_id": instance_id, "instance_type": instance_type, "market": market, "zone": zone,
            "month": time.strftime("%Y-%m", time.gmtime(launched_at)), "launched_at": iso(launched_at),
            "ready_at": ready_at, "boot_s": max(0.0, ready_at - launched_at), "busy_s": 0.0, "idle_s": 0.0,
            "interrupted_s": 0.0, "jobs": 0, "price_per_hour_usd": price_per_hour_usd, "price_source": price_source,
        })

    def add(self, instance_id: str, *, busy_s: float = 0.0, idle_s: float = 0.0, interrupted_s: float = 0.0,
            jobs: int = 0) -> None:
        """Seconds (and finished jobs) since the last entry."""
        self.table.update(instance_id, {}, add={"busy_s": busy_s, "idle_s": idle_s, "interrupted_s": interrupted_s,
                                                "jobs": jobs})

    def close(self, instance_id: str, *, idle_s: float, reason: str) -> None:
        """The worker stopped (``reason``: ``stopped``, ``spot_interruption``, ``terminated`` ...)."""
        self.table.update(instance_id, {"closed_at": now(), "closed_because": reason},
                          add={"idle_s": idle_s})


@dataclass
class InstanceClock:
    """Splits one instance's time into busy, interrupted and idle seconds, and books it in the ledger."""

    ledger: Ledger
    instance_id: str
    _since: float = field(default_factory=time.monotonic)  # end of the last job (or readiness)

    def job(self, seconds: float, *, handed_back: bool) -> None:
        """A job took ``seconds``: busy if it ended, interrupted if it was handed back."""
        idle = max(0.0, time.monotonic() - self._since - seconds)
        if handed_back:
            self.ledger.add(self.instance_id, interrupted_s=seconds, idle_s=idle)
        else:
            self.ledger.add(self.instance_id, busy_s=seconds, idle_s=idle, jobs=1)
        self._since = time.monotonic()

    def close(self, reason: str) -> None:
        self.ledger.close(self.instance_id, idle_s=max(0.0, time.monotonic() - self._since), reason=reason)
