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
input gone (NoSuchKey)                 record FAILED input_missing, deleted
held by a live worker (a duplicate)    back off: invisible for longer each delivery
interrupted (spot notice)              lease released, handed back now (visibility 0)
crashed, failures left                 failure counted on the record, lease released;
                                       SQS redelivers it after the visibility timeout
crashed for the last time              record FAILED, deleted
malformed                              sent to the dead-letter queue with its reason
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
from ctfleet.aws.ledger import InstanceClock
from ctfleet.aws.queues import Queue, receive_count
from ctfleet.contracts import JobMessage, Reason
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
    BACK_OFF = "back_off"  # a live worker holds the job: come back later, longer each time


MAX_BACK_OFF_S = 900


@dataclass
class Worker:
    """Pulls jobs, urgent before backfill, and runs them one at a time."""

    settings: Settings
    urgent: Queue
    backfill: Queue
    runner: JobRunner
    dead_letters: dict[str, Queue] = field(default_factory=dict)  # queue name -> its dead-letter queue
    protection: Protection | None = None  # scale-in protection of this instance: on while a job runs
    clock: InstanceClock | None = None  # books busy, interrupted and idle seconds in the cost ledger
    stop: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)  # set when run() returns
    expected_job_s: float = 60.0  # how long a job takes, for the termination hook's finish-or-hand-back
    _current: Heartbeat | None = None
    _job_started: float | None = None

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
        try:
            return self._loop(max_jobs, idle_exit_s)
        finally:
            self._protect(False)
            self.finished.set()

    def _loop(self, max_jobs: int | None, idle_exit_s: float | None) -> int:
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

    def _book(self, seconds: float, *, handed_back: bool) -> None:
        if self.clock is None:
            return
        try:
            self.clock.job(seconds, handed_back=handed_back)
        except CtfleetError as exc:  # the ledger is for finance; the job itself is settled
            log.warning("could not book the job in the cost ledger", extra={"reason": exc.reason})

    def _protect(self, on: bool) -> None:
        if self.protection is not None:
            self.protection.set(on)

    def drain(self, *, within_s: float) -> None:
        """The instance is being terminated: take no new work; finish the current job if it should end
        within ``within_s``, otherwise hand it back now."""
        self.stop.set()
        started = self._job_started
        if started is not None and self.expected_job_s - (time.monotonic() - started) > within_s:
            log.warning("the job would outlast the termination hook; handing it back")
            self.interrupt()

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
            self._dead_letter(queue, message, exc)
            return None
        spec = self.settings.job_queue(job.priority)
        heartbeat = Heartbeat(queue, receipt, interval_s=self.settings.heartbeat_s,
                              visibility_s=spec.visibility_timeout_s, renew=lambda: self.runner.renew(job))
        started = time.monotonic()
        self._current, self._job_started = heartbeat, started
        try:
            with heartbeat:
                outcome, action = self._run(job)
        finally:
            self._current = self._job_started = None
        if action is not Settle.BACK_OFF:
            self._book(time.monotonic() - started, handed_back=action is Settle.HAND_BACK)
        if action is Settle.DELETE:
            queue.delete(receipt)
        elif action is Settle.HAND_BACK:
            heartbeat.handback()
        elif action is Settle.BACK_OFF:
            deliveries = receive_count(message)
            queue.set_visibility(receipt, min(spec.visibility_timeout_s * 2 ** deliveries, MAX_BACK_OFF_S))
        return outcome

    def _run(self, job: JobMessage) -> tuple[JobOutcome | None, Settle]:
        try:
            outcome = self.runner.run(job)
            return outcome, Settle.BACK_OFF if outcome.held_by else Settle.DELETE
        except Interrupted:
            log.warning("job handed back", extra={"study_key": job.study_key, "job_id": job.job_id})
            self.runner.hand_back(job)
            return None, Settle.HAND_BACK
        except Exception:  # noqa: BLE001 - the outermost handler of a job: a bug, a fault, or retries spent
            log.exception("job failed", extra={"study_key": job.study_key})
            failed = self.runner.fail(job)
            return failed, Settle.LEAVE if failed is None else Settle.DELETE

    def _dead_letter(self, queue: Queue, message: dict[str, Any], exc: BadInput) -> None:
        """A message no worker can read goes to the dead-letter queue, with why; never silently away."""
        log.error("malformed job message; sent to the dead-letter queue",
                  extra={"reason": Reason.MALFORMED_JOB, "detail": exc.detail, "queue": queue.name})
        dlq = self.dead_letters.get(queue.name)
        if dlq is None:
            return  # no dead-letter queue known: SQS's redrive moves it there after maxReceiveCount
        dlq.send(message["Body"], {"reason": Reason.MALFORMED_JOB, "detail": exc.detail[:200]})
        queue.delete(message["ReceiptHandle"])
