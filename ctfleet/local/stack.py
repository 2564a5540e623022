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

import json
import logging
import os
import secrets as pysecrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ctfleet.aws.clients import Clients
from ctfleet.settings import Settings

from .api_server import ApiServer
from .httpd import free_port
from .imds_server import LocalImds
from .pollers import Every, QueuePoller, StreamPoller
from .provision import provision
from .secrets import local_secret

log = logging.getLogger(__name__)

LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}


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
        from dispatcher.deps import HandlerDeps

        deps = HandlerDeps(self.clients)
        self._api = ApiServer(lambda e: api.handle(e, deps), port=api_port).start()
        pollers = [
            QueuePoller(self.clients, self.settings.ingest_queue.name, lambda e: ingest.handle(e, deps),
                        self.stop_event).thread,
            StreamPoller(self.clients, self.resources["stream_arn"], lambda e: triage.handle(e, deps),
                         self.stop_event).thread,
            Every(self.sweep_interval_s, lambda: sweeper.handle({}, deps), self.stop_event, name="sweeper").thread,
        ]
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
