"""The worker's receive loop, and the one place that settles a message.

receive (urgent first) -> scale-in protection on -> parse -> heartbeat ->
:class:`worker.job.JobRunner` -> settle; protection off when the queues are empty. Deleting is the last step, so a crash anywhere before it means the
message comes back and the work is redone; results are overwritten in place
and the DONE write is conditional, so doing it twice is harmless.

How a message is settled follows from how its job ended:

=====================================  ==========================================
the job                                the message
=====================================  ==========================================
DONE, REJECTED, or settled elsewhere   deleted
interrupted (spot notice)              handed back now (visibility 0)
crashed, deliveries left               left alone: SQS redelivers it
crashed on its last delivery           record FAILED, deleted
malformed                              deleted, logged (it can never run)
=====================================  ==========================================

One stop event: SIGTERM or a spot notice stops receiving; a second SIGTERM exits.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ctfleet.aws.fleet import Protection
from ctfleet.aws.queues import Queue, receive_count
from ctfleet.contracts import JobMessage
from ctfleet.errors import BadInput, CtfleetError, Interrupted
from ctfleet.settings import Settings

from .heartbeat import Heartbeat
from .job import JobOutcome, JobRunner

log = logging.getLogger(__name__)

IDLE_WAIT_S = 5  # long-poll wait on the urgent queue when both queues are empty


class Settle(Enum):
    """What to do with a received message."""

    DELETE = "delete"
    HAND_BACK = "hand_back"
    LEAVE = "leave"


@dataclass
class Worker:
    """Pulls jobs, urgent before backfill, and runs them one at a time."""

    settings: Settings
    urgent: Queue
    backfill: Queue
    runner: JobRunner
    protection: Protection | None = None  # scale-in protection of this instance: on while a job runs
    stop: threading.Event = field(default_factory=threading.Event)
    _current: Heartbeat | None = None

    def receive(self, wait_s: int) -> tuple[Queue, dict[str, Any]] | None:
        """One message, urgent before backfill; None if both queues are empty."""
        for queue, wait in ((self.urgent, 0), (self.backfill, 0), (self.urgent, wait_s)):
            if self.stop.is_set():
                return None
            messages = queue.receive(max_messages=1, wait_s=wait)
            if messages:
                return queue, messages[0]
        return None

    def run(self, *, max_jobs: int | None = None, idle_exit_s: float | None = None) -> int:
        """Process jobs until stopped; returns the number of jobs handled."""
        handled = 0
        idle_since = time.monotonic()
        while not self.stop.is_set():
            try:
                got = self.receive(IDLE_WAIT_S)
            except CtfleetError:
                log.warning("receive failed; retrying", exc_info=True)
                self.stop.wait(2.0)
                continue
            if got is None:
                self._protect(False)
                if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                    break
                continue
            self._protect(True)
            self.handle(*got)
            handled += 1
            idle_since = time.monotonic()
            if max_jobs is not None and handled >= max_jobs:
                break
        return handled

    def _protect(self, on: bool) -> None:
        if self.protection is not None:
            self.protection.set(on)

    def interrupt(self) -> None:
        """A spot notice: stop receiving, and hand the current job back at once."""
        self.runner.interrupted.set()
        self.stop.set()
        current = self._current
        if current is not None:
            current.handback()

    def handle(self, queue: Queue, message: dict[str, Any]) -> JobOutcome | None:
        """Run one received message's job and settle the message; the outcome, if the job ended."""
        receipt = message["ReceiptHandle"]
        try:
            job = JobMessage.from_json(message["Body"])
        except BadInput as exc:
            log.error("dropping a malformed job message", extra={"reason": exc.reason})
            queue.delete(receipt)
            return None
        spec = self.settings.job_queue(job.priority)
        heartbeat = Heartbeat(queue, receipt, interval_s=self.settings.heartbeat_s,
                              visibility_s=spec.visibility_timeout_s)
        self._current = heartbeat
        try:
            with heartbeat:
                outcome, action = self._run(job, last=receive_count(message) >= spec.max_receive_count)
        finally:
            self._current = None
        self._settle(queue, receipt, action, heartbeat)
        return outcome

    def _run(self, job: JobMessage, *, last: bool) -> tuple[JobOutcome | None, Settle]:
        try:
            return self.runner.run(job), Settle.DELETE
        except Interrupted:
            log.warning("job handed back", extra={"study_key": job.study_key, "job_id": job.job_id})
            return None, Settle.HAND_BACK
        except Exception:  # noqa: BLE001 - the outermost handler of a job: a bug, a fault, or retries spent
            if last:
                log.exception("job failed on its last attempt", extra={"study_key": job.study_key})
                return self.runner.fail(job), Settle.DELETE
            log.exception("job failed; SQS will redeliver", extra={"study_key": job.study_key})
            return None, Settle.LEAVE

    def _settle(self, queue: Queue, receipt: str, action: Settle, heartbeat: Heartbeat) -> None:
        if action is Settle.DELETE:
            queue.delete(receipt)
        elif action is Settle.HAND_BACK:
            heartbeat.handback()
