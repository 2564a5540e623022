"""The worker's receive loop, and the one place that settles a message.

receive (urgent first) -> scale-in protection on -> parse -> heartbeat ->
prepare (claim, download, decode) -> analyze (the model) -> record (write results, DONE) ->
settle; protection off when the queues are empty. With prefetch the three stages overlap,
each job keeping its own heartbeat: while the GPU analyzes one study, the next message is
received and prepared in one thread and the previous study's results are written in
another, so the model waits neither for S3 and DICOM decoding nor for rendering and
uploads. A worker that stops hands a prefetched job back unrun. Deleting is the last
step, so a crash anywhere before it means the message comes back and the work is redone;
results are overwritten in place and the DONE write is conditional, so doing it twice is
harmless.

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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
from .job import Analyzed, JobOutcome, JobRunner, Prepared

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
class Ticket:
    """One received message on its way through a worker: prepared, then completed and settled."""

    queue: Queue
    message: dict[str, Any]
    job: JobMessage
    heartbeat: Heartbeat
    started: float
    prepared: Prepared | None = None
    analyzed: Analyzed | None = None
    outcome: JobOutcome | None = None
    action: Settle | None = None  # decided once the job has ended (held, settled, rejected, failed, handed back)


@dataclass
class Worker:
    """Pulls jobs, urgent before backfill, in three overlapping stages (with ``prefetch``): the next
    study is read while the GPU analyzes the current one and the previous one's results are written,
    so the model waits neither for S3 and DICOM decoding nor for rendering and uploads."""

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
    prefetch: bool = True  # read the next study while the GPU analyzes the current one
    _active: list[Ticket] = field(default_factory=list)  # jobs taken and not yet settled (at most three)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _reader: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="prefetch"))
    _writer: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="write"))

    def receive(self, wait_s: int) -> tuple[Queue, dict[str, Any]] | None:
        """One message, urgent before backfill; None if both queues are empty or the worker is stopping."""
        for queue, wait in ((self.urgent, 0), (self.backfill, 0), (self.urgent, wait_s)):
            if self.stop.is_set():
                return None
            messages = queue.receive(max_messages=1, wait_s=wait)
            if messages and self.stop.is_set():
                # A termination or spot notice came during the long poll: the message goes back untouched,
                # visible at once, before it is claimed; this machine takes no new work.
                try:
                    queue.set_visibility(messages[0]["ReceiptHandle"], 0)
                except CtfleetError:  # it comes back when its visibility timeout ends
                    log.warning("could not return a message received while stopping", exc_info=True)
                return None
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
        ticket: Ticket | None = None
        writing: Future[Any] | None = None  # the previous study's results, being written
        try:
            while ticket is not None or not self.stop.is_set():
                if ticket is None:
                    ticket = self._next(IDLE_WAIT_S)
                    if ticket is None:
                        writing = _done(writing)  # protection comes off only once the last result is written
                        self._protect(False)
                        if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                            break
                        continue
                last = max_jobs is not None and handled + 1 >= max_jobs
                # While the GPU analyzes this study, the next one is received, downloaded and decoded.
                upcoming = self._reader.submit(self._next, 0) if self.prefetch and not last and not self.stop.is_set() \
                    else None
                self._analyze(ticket)
                writing = _done(writing)  # one study is written at a time, in the order analyzed
                if self.prefetch:
                    writing = self._writer.submit(self._complete, ticket)
                else:
                    self._complete(ticket)
                handled += 1
                idle_since = time.monotonic()
                ticket = upcoming.result() if upcoming is not None else None
                if ticket is not None and self.stop.is_set():
                    self._give_back(ticket)  # stopping: the prefetched job goes back at once, not run
                    ticket = None
                if last:
                    break
        finally:
            _done(writing)
        return handled

    def _next(self, wait_s: int) -> Ticket | None:
        """Receive one message (urgent first) and prepare its job; None if the queues are empty."""
        try:
            got = self.receive(wait_s)
        except CtfleetError:
            log.warning("receive failed; retrying", exc_info=True)
            self.stop.wait(2.0)
            return None
        if got is None:
            return None
        self._protect(True)
        return self._take(*got)

    def _book(self, ticket: Ticket | None = None) -> None:
        """The cost ledger's clock: a job taken (no ticket yet) or a ticket settled."""
        if self.clock is None:
            return
        if ticket is None:
            self.clock.started()
            return
        try:
            self.clock.ended(finished=ticket.action is Settle.DELETE)
        except CtfleetError as exc:  # the ledger is for finance; the job itself is settled
            log.warning("could not book the job in the cost ledger", extra={"reason": exc.reason})

    def _protect(self, on: bool) -> None:
        if self.protection is not None:
            self.protection.set(on)

    def drain(self, *, within_s: float) -> None:
        """The instance is being terminated: take no new work; finish the current job if it should end
        within ``within_s``, otherwise hand it back now."""
        self.stop.set()
        with self._lock:
            started = min((t.started for t in self._active), default=None)
        if started is not None and self.expected_job_s - (time.monotonic() - started) > within_s:
            log.warning("the job would outlast the termination hook; handing it back")
            self.interrupt()

    def interrupt(self) -> None:
        """A spot notice: stop receiving, and hand the current job back at once."""
        self.runner.interrupted.set()
        self.stop.set()
        with self._lock:
            active = list(self._active)
        for ticket in active:
            ticket.heartbeat.handback()

    def handle(self, queue: Queue, message: dict[str, Any]) -> JobOutcome | None:
        """Run one received message's job and settle the message; the outcome, if the job ended."""
        ticket = self._take(queue, message)
        return self._complete(ticket) if ticket is not None else None

    def _take(self, queue: Queue, message: dict[str, Any]) -> Ticket | None:
        """Parse the message, start its heartbeat and prepare its job (claim, download, decode)."""
        try:
            job = JobMessage.from_json(message["Body"])
        except BadInput as exc:
            self._dead_letter(queue, message, exc)
            return None
        spec = self.settings.job_queue(job.priority)
        heartbeat = Heartbeat(queue, message["ReceiptHandle"], interval_s=self.settings.heartbeat_s,
                              visibility_s=spec.visibility_timeout_s, renew=lambda: self.runner.renew(job))
        ticket = Ticket(queue, message, job, heartbeat.__enter__(), time.monotonic())
        with self._lock:
            self._active.append(ticket)
        self._book()
        result, ticket.action = self._decide(ticket, lambda: self.runner.prepare(job))
        if isinstance(result, Prepared):
            ticket.prepared = result
        else:
            ticket.outcome = result
        return ticket

    def _analyze(self, ticket: Ticket) -> None:
        """The GPU's stage: run the model on a prepared job (unless its outcome is known already)."""
        prepared, ticket.prepared = ticket.prepared, None
        if prepared is None or ticket.action is not None:
            return
        result, ticket.action = self._decide(ticket, lambda: self.runner.infer(prepared))
        if isinstance(result, Analyzed):
            ticket.analyzed = result
        else:
            ticket.outcome = result

    def _complete(self, ticket: Ticket) -> JobOutcome | None:
        """Run what is left of the job (analysis, then writing its results) and settle its message."""
        self._analyze(ticket)
        analyzed, ticket.analyzed = ticket.analyzed, None
        if analyzed is not None and ticket.action is None:
            ticket.outcome, ticket.action = self._decide(ticket, lambda: self.runner.record(analyzed))
        ticket.heartbeat.__exit__(None, None, None)
        with self._lock:
            self._active.remove(ticket)
        self._settle(ticket)
        return ticket.outcome if isinstance(ticket.outcome, JobOutcome) else None

    def _decide(self, ticket: Ticket, step: Callable[[], Any]) -> tuple[Any, Settle | None]:
        """Run one step of a job; its result, and what to do with the message (None: go on)."""
        job = ticket.job
        try:
            result = step()
        except Interrupted:
            log.warning("job handed back", extra={"study_key": job.study_key, "job_id": job.job_id})
            self.runner.hand_back(job, time.monotonic() - ticket.started)
            return None, Settle.HAND_BACK
        except Exception:  # noqa: BLE001 - the outermost handler of a job: a bug, a fault, or retries spent
            log.exception("job failed", extra={"study_key": job.study_key})
            failed = self.runner.fail(job)
            return failed, Settle.LEAVE if failed is None else Settle.DELETE
        if isinstance(result, JobOutcome):
            return result, Settle.BACK_OFF if result.held_by else Settle.DELETE
        return result, None

    def _settle(self, ticket: Ticket) -> None:
        """The one place a message is settled, from how its job ended."""
        queue, receipt, action = ticket.queue, ticket.message["ReceiptHandle"], ticket.action
        self._book(ticket)
        if action is Settle.DELETE:
            queue.delete(receipt)
        elif action is Settle.HAND_BACK:
            ticket.heartbeat.handback()
        elif action is Settle.BACK_OFF:
            spec = self.settings.job_queue(ticket.job.priority)
            backoff = spec.visibility_timeout_s * 2 ** receive_count(ticket.message)
            queue.set_visibility(receipt, min(backoff, MAX_BACK_OFF_S))

    def _give_back(self, ticket: Ticket) -> None:
        """Hand a prepared job back unrun (the worker is stopping): lease released, visible again now."""
        self.runner.hand_back(ticket.job, time.monotonic() - ticket.started)
        ticket.prepared, ticket.action = None, Settle.HAND_BACK
        self._complete(ticket)

    def _dead_letter(self, queue: Queue, message: dict[str, Any], exc: BadInput) -> None:
        """A message no worker can read goes to the dead-letter queue, with why; never silently away."""
        log.error("malformed job message; sent to the dead-letter queue",
                  extra={"reason": Reason.MALFORMED_JOB, "detail": exc.detail, "queue": queue.name})
        dlq = self.dead_letters.get(queue.name)
        if dlq is None:
            return  # no dead-letter queue known: SQS's redrive moves it there after maxReceiveCount
        dlq.send(message["Body"], {"reason": Reason.MALFORMED_JOB, "detail": exc.detail[:200]})
        queue.delete(message["ReceiptHandle"])


def _done(future: Future[Any] | None) -> Future[Any] | None:
    """Wait for a stage running in another thread (its errors surface here); None: nothing is pending."""
    if future is not None:
        future.result()
    return None
