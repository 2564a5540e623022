"""Local stand-ins for Lambda's event sources: an SQS queue, a DynamoDB stream, a schedule.

Each calls a handler exactly as its AWS event source would (batches in, partial
batch failures out), so the handlers run unchanged.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from ctfleet.aws.clients import Clients

log = logging.getLogger(__name__)


class QueuePoller:
    """Drives a Lambda-style SQS handler: batches in, partial batch failures out."""

    def __init__(self, clients: Clients, queue_name: str, handler: Callable[[dict[str, Any]], dict[str, Any]],
                 stop: threading.Event) -> None:
        self._clients, self._queue, self._handler, self._stop = clients, queue_name, handler, stop
        self.thread = threading.Thread(target=self._run, name=f"poll-{queue_name}", daemon=True)

    def _run(self) -> None:
        sqs = self._clients.sqs
        url = self._clients.queue_url(self._queue)
        while not self._stop.is_set():
            try:
                out = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                          AttributeNames=["All"])
                messages = out.get("Messages", [])
                if not messages:
                    continue
                event = {"Records": [
                    {"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                     "attributes": m.get("Attributes", {}), "eventSource": "aws:sqs"} for m in messages
                ]}
                failed = {f["itemIdentifier"] for f in self._handler(event).get("batchItemFailures", [])}
                done = [m for m in messages if m["MessageId"] not in failed]
                if done:
                    sqs.delete_message_batch(QueueUrl=url, Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)])
            except Exception:  # noqa: BLE001 - keep polling, like the event source mapping
                log.exception("queue poller error", extra={"queue": self._queue})
                self._stop.wait(1.0)


class StreamPoller:
    """Drives a Lambda-style DynamoDB stream handler over every shard of a table's stream."""

    def __init__(self, clients: Clients, stream_arn: str, handler: Callable[[dict[str, Any]], dict[str, Any]],
                 stop: threading.Event, retries: int = 3) -> None:
        self._clients, self._arn, self._handler, self._stop = clients, stream_arn, handler, stop
        self._retries = retries
        self.thread = threading.Thread(target=self._run, name="poll-stream", daemon=True)

    def _run(self) -> None:
        streams = self._clients.dynamodbstreams
        iterators: dict[str, str | None] = {}
        while not self._stop.is_set():
            try:
                shards = streams.describe_stream(StreamArn=self._arn)["StreamDescription"]["Shards"]
                for shard in shards:
                    sid = shard["ShardId"]
                    if sid not in iterators:
                        iterators[sid] = streams.get_shard_iterator(
                            StreamArn=self._arn, ShardId=sid, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
                busy = False
                for sid, it in list(iterators.items()):
                    if it is None:
                        continue
                    out = streams.get_records(ShardIterator=it, Limit=100)
                    iterators[sid] = out.get("NextShardIterator")
                    records = out.get("Records", [])
                    if records:
                        busy = True
                        self._deliver(records)
                if not busy:
                    self._stop.wait(0.3)
            except Exception:  # noqa: BLE001
                log.exception("stream poller error")
                self._stop.wait(1.0)

    def _deliver(self, records: list[dict[str, Any]]) -> None:
        # As Lambda's event source mapping does: each record names the stream it came from.
        pending = [{**r, "eventSourceARN": self._arn} for r in records]
        for attempt in range(self._retries + 1):
            failed = {f["itemIdentifier"] for f in self._handler({"Records": pending}).get("batchItemFailures", [])}
            if not failed:
                return
            # Like Lambda with ReportBatchItemFailures: retry from the first failed record.
            first = next(i for i, r in enumerate(pending) if r["dynamodb"].get("SequenceNumber") in failed)
            pending = pending[first:]
            self._stop.wait(0.5 * (attempt + 1))
        log.error("stream records dropped after retries", extra={"count": len(pending)})


class Every:
    """Calls ``action`` every ``interval_s`` seconds: the local stand-in for a scheduled Lambda."""

    def __init__(self, interval_s: float, action: Callable[[], Any], stop: threading.Event, *, name: str) -> None:
        self._interval, self._action, self._stop = interval_s, action, stop
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._action()
            except Exception:  # noqa: BLE001 - the next tick retries
                log.exception("scheduled task failed", extra={"task": self.thread.name})
