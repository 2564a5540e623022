"""Watch the instance metadata for the notices that end an instance's work.

- a spot interruption (``spot/instance-action``, two minutes ahead): hand the current job back now;
- a rebalance recommendation (``events/recommendations/rebalance``, earlier): take no new work,
  finish the current job;
- the Auto Scaling group terminating this instance (``autoscaling/target-lifecycle-state``
  ``Terminated``; a termination lifecycle hook holds it meanwhile): take no new work, finish
  the current job if it ends well within the hook's timeout, otherwise hand it back.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Protocol

from ctfleet.aws.imds import Imds

log = logging.getLogger(__name__)

SPOT_POLL_S = 1.0  # EC2 posts the spot notice two minutes ahead; polling is cheap


@dataclass
class Notices:
    """What the watcher has seen (read by the worker's main when the loop ends)."""

    spot: bool = False
    rebalance: bool = False
    terminating: bool = False


class Member(Protocol):
    """What the watcher asks of the worker (:class:`worker.loop.Worker`)."""

    stop: threading.Event
    finished: threading.Event

    def interrupt(self) -> None: ...

    def drain(self, *, within_s: float) -> None: ...


def watch(imds: Imds, worker: Member, *, hook_timeout_s: float,
          poll_s: float = SPOT_POLL_S) -> tuple[threading.Thread, Notices]:
    """Poll IMDS until the worker's loop has finished, acting on each notice once.

    Returns
    -------
    (threading.Thread, Notices)
        The started daemon thread, and what it saw.
    """
    seen = Notices()

    def loop() -> None:
        while not worker.finished.wait(poll_s):
            if imds.spot_action():
                log.warning("spot interruption notice: handing the current job back")
                seen.spot = True
                worker.interrupt()
                return
            if not seen.rebalance and imds.rebalance_recommended():
                log.warning("rebalance recommendation: taking no new work")
                seen.rebalance = True
                worker.stop.set()
            if not seen.terminating and imds.terminating():
                log.warning("the group is terminating this instance: finish the job or hand it back")
                seen.terminating = True
                worker.drain(within_s=hook_timeout_s * 0.5)

    thread = threading.Thread(target=loop, name="spot-watch", daemon=True)
    thread.start()
    return thread, seen
