"""The whole stack on one machine: moto server, handlers driven by pollers, worker fleet, API.

Same code as on AWS; only endpoints differ:

==============================  =========================================================
on AWS                          here
==============================  =========================================================
S3, SQS, DynamoDB, SNS, ...     moto's ThreadedMotoServer on 127.0.0.1 (real HTTP)
SQS -> ingest Lambda            :class:`QueuePoller` calling ``dispatcher.ingest.handle``
DynamoDB stream -> triage       :class:`StreamPoller` calling ``dispatcher.triage.handle``
API Gateway -> api Lambda       :class:`ApiServer` calling ``dispatcher.api.handle``
spot GPU instances              ``ctfleet worker`` subprocesses, one per instance
IMDS                            :class:`~ctfleet.local.imds_server.LocalImds`, one per worker
==============================  =========================================================
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import os
import secrets as pysecrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

from ctfleet.aws.clients import Clients
from ctfleet.local.imds_server import LocalImds
from ctfleet.local.provision import provision
from ctfleet.local.secrets import local_secret
from ctfleet.settings import Settings

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).resolve().parents[2] / "web"
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        pending = records
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


class ApiServer:
    """HTTP front door: ``/api/*`` -> ``dispatcher.api.handle`` (API Gateway v2 events); the rest -> ``web/``."""

    def __init__(self, handler: Callable[[dict[str, Any]], dict[str, Any]], port: int = 0,
                 web_root: Path = WEB_ROOT) -> None:
        api_handler = handler

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _api(self, method: str) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                event = {
                    "version": "2.0",
                    "rawPath": parts.path[len("/api"):] or "/",
                    "rawQueryString": parts.query,
                    "queryStringParameters": dict(parse_qsl(parts.query)) or None,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "requestContext": {"http": {"method": method, "path": parts.path[len("/api"):]}},
                    "body": base64.b64encode(body).decode() if body else None,
                    "isBase64Encoded": bool(body),
                }
                try:
                    out = api_handler(event)
                except Exception:  # noqa: BLE001 - API Gateway answers 500 for a crashed Lambda
                    log.exception("api handler crashed")
                    out = {"statusCode": 500, "headers": {"content-type": "application/json"},
                           "body": json.dumps({"error": "internal", "message": "internal error"})}
                self._reply(out["statusCode"], out.get("headers", {}), (out.get("body") or "").encode())

            def _static(self) -> None:
                path = urlsplit(self.path).path
                rel = "index.html" if path in ("", "/") else path.lstrip("/")
                target = (web_root / rel).resolve()
                if web_root.resolve() not in target.parents or not target.is_file():
                    self._reply(404, {"Content-Type": "text/plain"}, b"not found")
                    return
                ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                self._reply(200, {"Content-Type": ctype, "Cache-Control": "no-cache"}, target.read_bytes())

            def do_GET(self) -> None:  # noqa: N802
                self._api("GET") if self.path.startswith("/api/") else self._static()

            def do_POST(self) -> None:  # noqa: N802
                self._api("POST") if self.path.startswith("/api/") else self._reply(405, {}, b"")

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> "ApiServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class LocalStack:
    """Start everything; ``stop()`` (or leaving the ``with`` block) stops everything.

    Parameters
    ----------
    settings : Settings
        Read once by the caller; endpoints are filled in here.
    workers : int
        ``ctfleet worker`` subprocesses to run (one per "instance").
    api_port : int
        0 picks a free port.
    """

    def __init__(self, settings: Settings, *, workers: int = 1, api_port: int = 0,
                 worker_log: Path | None = None, sweep_interval_s: float = 60.0) -> None:
        self.base_settings = settings
        self.n_workers = workers
        self.api_port = api_port
        self.worker_log = worker_log
        self.sweep_interval_s = sweep_interval_s
        self.stop_event = threading.Event()
        self.workers: list[subprocess.Popen[bytes]] = []
        self.imds: list[LocalImds] = []
        self._moto: Any = None
        self._api: ApiServer | None = None
        self._pollers: list[threading.Thread] = []
        self._log_files: list[Any] = []
        self.resources: dict[str, Any] = {}

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> "LocalStack":
        from moto.server import ThreadedMotoServer

        for k, v in LOCAL_CREDENTIALS.items():
            os.environ.setdefault(k, v)
        port = free_port()
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._moto.start()
        endpoint = f"http://127.0.0.1:{port}"
        # The API's port is chosen now so its URL can go into the settings (alert links).
        api_port = self.api_port or free_port()
        self.settings = replace(self.base_settings, endpoint_url=endpoint, api_url=f"http://127.0.0.1:{api_port}")
        self.clients = Clients(self.settings)
        self.resources = provision(self.clients, {f: local_secret(self.settings, f) for f in self.settings.facilities},
                                   web_origins=(str(self.settings.api_url),))
        self.alert_inbox_url = self._subscribe_inbox()

        from dispatcher import api, ingest, sweeper, triage

        ingest_deps = ingest.Ingest(self.clients)
        triage_deps = triage.Triage(self.clients)
        api_deps = api.Api(self.clients)
        self._api = ApiServer(lambda e: api.handle(e, api_deps), port=api_port).start()
        pollers = [
            QueuePoller(self.clients, self.settings.ingest_queue.name, lambda e: ingest.handle(e, ingest_deps),
                        self.stop_event).thread,
            StreamPoller(self.clients, self.resources["stream_arn"], lambda e: triage.handle(e, triage_deps),
                         self.stop_event).thread,
        ]
        sweeper_deps = sweeper.Sweeper(self.clients)
        pollers.append(Every(self.sweep_interval_s, lambda: sweeper.handle({}, sweeper_deps), self.stop_event,
                             name="sweeper").thread)
        for t in pollers:
            t.start()
        self._pollers = pollers
        for i in range(self.n_workers):
            self.start_worker(i)
        return self

    def _subscribe_inbox(self) -> str:
        """An SQS queue subscribed to the alerts topic: the local stand-in for the on-call pager."""
        sqs = self.clients.sqs
        url = sqs.create_queue(QueueName=f"{self.settings.stack}-alert-inbox")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.clients.sns.subscribe(TopicArn=self.resources["topic_arn"], Protocol="sqs", Endpoint=arn,
                                   Attributes={"RawMessageDelivery": "true"})
        return str(url)

    def worker_env(self, imds_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CTFLEET_", "AWS_ENDPOINT_URL"))}
        env.update(LOCAL_CREDENTIALS)
        env.update(replace(self.settings, imds_endpoint=imds_url).to_env())
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def start_worker(self, index: int) -> subprocess.Popen[bytes]:
        imds = LocalImds(instance_id=f"i-local{index:04d}{pysecrets.token_hex(4)}",
                         instance_type=self.settings.instance_type).start()
        out: Any = subprocess.DEVNULL
        if self.worker_log is not None:
            out = open(self.worker_log, "ab")  # noqa: SIM115 - closed in stop()
            self._log_files.append(out)
        proc = subprocess.Popen([sys.executable, "-m", "ctfleet", "worker"], env=self.worker_env(imds.url),
                                stdout=out, stderr=out, start_new_session=True)
        if index < len(self.workers):
            self.workers[index], self.imds[index] = proc, imds
        else:
            self.workers.append(proc)
            self.imds.append(imds)
        return proc

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stop_event.set()
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.workers:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for t in self._pollers:
            t.join(timeout=5)
        if self._api:
            self._api.stop()
        for imds in self.imds:
            imds.stop()
        if self._moto:
            self._moto.stop()
        for f in self._log_files:
            f.close()

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        assert self._api is not None
        return self._api.url

    def urls(self) -> dict[str, str]:
        return {"web": self.api_url + "/", "api": self.api_url + "/api", "aws": str(self.settings.endpoint_url)}

    def drain_alerts(self, wait_s: int = 1) -> list[dict[str, Any]]:
        """Alerts delivered to the local inbox since the last call."""
        out: list[dict[str, Any]] = []
        while True:
            got = self.clients.sqs.receive_message(QueueUrl=self.alert_inbox_url, MaxNumberOfMessages=10,
                                                   WaitTimeSeconds=wait_s)
            messages = got.get("Messages", [])
            if not messages:
                return out
            for m in messages:
                out.append(json.loads(m["Body"]))
                self.clients.sqs.delete_message(QueueUrl=self.alert_inbox_url, ReceiptHandle=m["ReceiptHandle"])
