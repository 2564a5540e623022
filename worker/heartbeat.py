"""Keep an SQS message invisible while long work runs on it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ctfleet.aws.queues import Queue
from ctfleet.errors import CtfleetError

log = logging.getLogger(__name__)


class Heartbeat:
    """Extends a message's visibility (and, through ``renew``, the study's lease) every ``interval_s``.

    Use as a context manager around the work. ``handback()`` makes the message
    visible again at once (spot notice): another worker picks it up.

    Raises
    ------
    ValueError
        When ``interval_s`` is more than half the visibility timeout (a late
        beat would let the message reappear while the work still runs).
    """

    def __init__(self, queue: Queue, receipt: str, *, interval_s: float, visibility_s: int,
                 renew: Callable[[], object] | None = None) -> None:
        if interval_s * 2 > visibility_s:
            raise ValueError(f"heartbeat every {interval_s}s is too slow for a {visibility_s}s visibility timeout")
        self._queue, self._receipt, self._renew = queue, receipt, renew
        self._interval, self._visibility = interval_s, visibility_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self.handed_back = threading.Event()

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self.handed_back.is_set():
                return
            try:
                self._queue.set_visibility(self._receipt, self._visibility)
                if self._renew is not None:
                    self._renew()  # the study's lease: other deliveries of this job see it is held
            except CtfleetError:
                log.warning("visibility or lease extension failed; retrying on the next beat", exc_info=True)

    def handback(self) -> None:
        """Make the message visible to other workers now (once)."""
        if self.handed_back.is_set():
            return
        self.handed_back.set()
        try:
            self._queue.set_visibility(self._receipt, 0)
        except CtfleetError:
            log.warning("hand-back failed; the message returns when its visibility expires", exc_info=True)
