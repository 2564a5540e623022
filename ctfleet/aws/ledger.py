"""The cost ledger: what each GPU instance did with its time, and what it cost per hour.

One item per instance, written by its worker: opened when the worker starts (boot
seconds: launch to first readiness), added to after every busy period (busy seconds, or
interrupted seconds when every job in it was handed back), and closed when the worker stops
(the idle seconds between and after jobs, the end time). Fully loaded cost per
study is the instance's total cost (boot + busy + idle + interrupted, at its
price) spread over the studies it finished.
"""

from __future__ import annotations

import threading
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
    """Splits one instance's wall-clock time into busy, interrupted and idle seconds, and books it.

    A worker holds up to three jobs at once (one being read, one on the GPU, one being written),
    so the clock follows busy periods, not jobs: the instance is busy from the moment it holds a
    job until it holds none. A busy period in which no job finished (every one was handed back)
    is booked as interrupted. One ledger write per busy period: its seconds, the idle seconds
    before it, and the jobs that finished in it.
    """

    ledger: Ledger
    instance_id: str
    _since: float = field(default_factory=time.monotonic)  # start of the current busy or idle period
    _idle_s: float = 0.0  # idle before the current busy period, booked with it
    _holding: int = 0
    _finished: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def started(self) -> None:
        """The instance took a job."""
        with self._lock:
            if self._holding == 0:
                t = time.monotonic()
                self._idle_s, self._since, self._finished = t - self._since, t, 0
            self._holding += 1

    def ended(self, *, finished: bool) -> None:
        """A job left the instance: ``finished`` (settled here) or not (handed back, or held elsewhere)."""
        with self._lock:
            self._holding -= 1
            self._finished += int(finished)
            if self._holding > 0:
                return
            t = time.monotonic()
            busy, idle, jobs = t - self._since, self._idle_s, self._finished
            self._since, self._idle_s = t, 0.0
        if jobs:
            self.ledger.add(self.instance_id, busy_s=busy, idle_s=idle, jobs=jobs)
        else:
            self.ledger.add(self.instance_id, interrupted_s=busy, idle_s=idle)

    def close(self, reason: str) -> None:
        self.ledger.close(self.instance_id, idle_s=max(0.0, time.monotonic() - self._since), reason=reason)
