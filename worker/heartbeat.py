"""Keep an SQS message invisible while long work runs on it."""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class Heartbeat:
    """Extends a message's visibility every ``interval_s`` until stopped.

    Use as a context manager around the work. ``handback()`` makes the message
    visible again at once (spot notice): another worker picks it up.
    """

    def __init__(self, sqs: Any, queue_url: str, receipt: str, *, interval_s: float, visibility_s: int) -> None:
        if interval_s * 2 > visibility_s:
            raise ValueError(f"heartbeat every {interval_s}s is too slow for a {visibility_s}s visibility timeout")
        self._sqs, self._url, self._receipt = sqs, queue_url, receipt
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
                self._sqs.change_message_visibility(
                    QueueUrl=self._url, ReceiptHandle=self._receipt, VisibilityTimeout=self._visibility
                )
            except Exception:  # noqa: BLE001 - a missed beat is retried on the next tick
                log.warning("visibility extension failed", exc_info=True)

    def handback(self) -> None:
        if self.handed_back.is_set():
            return
        self.handed_back.set()
        try:
            self._sqs.change_message_visibility(QueueUrl=self._url, ReceiptHandle=self._receipt, VisibilityTimeout=0)
        except Exception:  # noqa: BLE001 - the visibility timeout returns it anyway
            log.warning("hand-back failed; the message returns when its visibility expires", exc_info=True)
