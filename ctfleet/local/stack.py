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
import subprocess
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from ctfleet.access import TokenVerifier
from ctfleet.aws.clients import Clients
from ctfleet.aws.fleet import FleetGroup
from ctfleet.settings import Settings

from .api_server import ApiServer
from .httpd import free_port
from .fleet import LocalFleet, LocalInstance
from .identity import LocalPool, create_pool, state_path
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
    fleet_max : int, optional
        Run the fleet as on AWS: an Auto Scaling group in moto (min 0, this max),
        sized by the scaler on its schedule and on ingest's nudges, followed by a
        :class:`~ctfleet.local.fleet.LocalFleet` that boots one worker per instance
        after ``boot_s``.
    workers : int
        Without ``fleet_max``: this many always-on workers and no scaler (tests
        that need an instance up before they start).
    api_port : int
        0 picks a free port.
    worker_log : Path, optional
        Every worker's stdout/stderr appended to this file; by default one file
        per instance under ``{CTFLEET_HOME}/logs/``.
    """

    def __init__(self, settings: Settings, *, workers: int = 1, fleet_max: int | None = None, boot_s: float = 5.0,
                 scaler_interval_s: float = 5.0, api_port: int = 0, worker_log: Path | None = None,
                 sweep_interval_s: float = 60.0) -> None:
        if fleet_max is not None:
            # A short termination hook locally: tests and the demo wait for it.
            settings = replace(settings, fleet_max=fleet_max, fleet_boot_s=boot_s,
                               fleet_termination_hook_s=min(settings.fleet_termination_hook_s, 30.0))
        self.base_settings = settings
        self.fleet_mode = fleet_max is not None
        self.n_workers = 0 if self.fleet_mode else workers
        self.scaler_interval_s = scaler_interval_s
        self.api_port = api_port
        self.worker_log = worker_log
        self.sweep_interval_s = sweep_interval_s
        self.stop_event = threading.Event()
        self.instances: list[LocalInstance] = []
        self.fleet: LocalFleet | None = None
        self._moto: Any = None
        self._api: ApiServer | None = None
        self._pollers: list[threading.Thread] = []
        self.resources: dict[str, Any] = {}
        self.pool: LocalPool

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
        self.pool = create_pool(self.clients.client("cognito-idp"), self.settings, endpoint)
        self.settings = replace(self.settings, auth_issuer=self.pool.issuer, auth_client_id=self.pool.client_id,
                                auth_jwks_url=self.pool.jwks_url)
        self.clients = Clients(self.settings)
        self.alert_inbox_url = self._subscribe_inbox()
        self._start_handlers(api_port)
        for i in range(self.n_workers):
            self.start_worker(i)
        if self.fleet_mode:
            self.fleet = LocalFleet(FleetGroup(self.clients.autoscaling, self.settings.fleet.group_name),
                                    self.worker_env, boot_s=self.settings.fleet_boot_s,
                                    hook_s=self.settings.fleet_termination_hook_s,
                                    log_dir=self.log_dir, shared_log=self.worker_log).start()
        return self

    def _start_handlers(self, api_port: int) -> None:
        from dispatcher import api, audit, ingest, scaler, sweeper, triage
        from dispatcher.deps import HandlerDeps

        deps = HandlerDeps(self.clients)
        s = self.settings
        verifier = TokenVerifier(str(s.auth_issuer), str(s.auth_client_id), s.auth_jwks_url)
        web_config = {"cognito": {"endpoint": self.pool.endpoint, "region": s.region, "client_id": s.auth_client_id}}
        self._api = ApiServer(lambda e: api.handle(e, deps), verifier.verify, port=api_port,
                              web_config=web_config).start()
        self.pool.api, self.pool.web = self._api.url + "/api", self._api.url + "/"
        self.pool.save(state_path(s))
        pollers: list[QueuePoller | StreamPoller | Every] = [
            QueuePoller(self.clients, s.ingest_queue.name, lambda e: ingest.handle(e, deps), self.stop_event),
            StreamPoller(self.clients, self.resources["stream_arn"], lambda e: triage.handle(e, deps),
                         self.stop_event),
            *(StreamPoller(self.clients, arn, lambda e: audit.handle(e, deps), self.stop_event)
              for arn in self.resources["streams"].values()),
            Every(self.sweep_interval_s, lambda: sweeper.handle({}, deps), self.stop_event, name="sweeper"),
        ]
        if self.fleet_mode:
            one_pass = threading.Lock()  # the schedule and the nudges never run two passes at once

            def scale(event: dict[str, Any]) -> dict[str, Any]:
                with one_pass:
                    return scaler.handle(event, deps)

            pollers += [QueuePoller(self.clients, s.scaler_queue.name, scale, self.stop_event),
                        Every(self.scaler_interval_s, lambda: scale({}), self.stop_event, name="scaler")]
        for poller in pollers:
            poller.thread.start()
        self._pollers = [p.thread for p in pollers]

    @property
    def log_dir(self) -> Path:
        return Path(self.settings.home).expanduser() / "logs" / self.settings.stack

    def _subscribe_inbox(self) -> str:
        """An SQS queue subscribed to the alerts topic: the local stand-in for the on-call pager."""
        sqs = self.clients.sqs
        url = sqs.create_queue(QueueName=f"{self.settings.stack}-alert-inbox")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for topic in (self.resources["topic_arn"], *self.resources["facility_topics"].values()):
            self.clients.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn,
                                       Attributes={"RawMessageDelivery": "true"})
        return str(url)

    def worker_env(self, imds_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CTFLEET_", "AWS_ENDPOINT_URL"))}
        env.update(LOCAL_CREDENTIALS)
        env.update(replace(self.settings, imds_endpoint=imds_url).to_env())
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    # -- always-on workers (without a fleet) -----------------------------------------

    @property
    def workers(self) -> list[subprocess.Popen[bytes]]:
        return [i.proc for i in self.instances]

    @property
    def imds(self) -> list[LocalImds]:
        return [i.imds for i in self.instances]

    def start_worker(self, index: int) -> LocalInstance:
        """Start (or restart, closing the old one's IMDS) always-on worker ``index``."""
        instance_id = f"i-local{index:04d}{pysecrets.token_hex(4)}"
        path = self.worker_log or self.log_dir / f"worker-{instance_id}.log"
        instance = LocalInstance(instance_id, self.settings.instance_type, self.worker_env, path)
        if index < len(self.instances):
            old, self.instances[index] = self.instances[index], instance
            old.close(timeout_s=1.0)
        else:
            self.instances.append(instance)
        return instance

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stop_event.set()
        if self.fleet is not None:
            self.fleet.stop(timeout_s)
        for instance in self.instances:
            instance.terminate()
        for instance in self.instances:
            instance.close(timeout_s)
        for t in self._pollers:
            t.join(timeout=5)
        if self._api:
            self._api.stop()
            state_path(self.settings).unlink(missing_ok=True)
        if self._moto:
            self._moto.stop()

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        assert self._api is not None
        return self._api.url

    def urls(self) -> dict[str, str]:
        """Where everything is: ``api``, ``web``, ``endpoint`` (the moto server) and the user pool."""
        return {"api": self.api_url + "/api", "web": self.api_url + "/", "endpoint": str(self.settings.endpoint_url),
                "user_pool_id": self.pool.user_pool_id, "client_id": self.pool.client_id}

    def record(self, study_key: str) -> dict[str, Any] | None:
        """A study's whole record, as the table holds it (the API shows each role only some fields)."""
        from ctfleet.aws.records import Table
        from ctfleet.aws.repositories import Studies

        return Studies(Table(self.clients.dynamodb, self.settings.studies_table)).get(study_key)

    def token(self, facility: str, role: str = "clinician", user: str | None = None) -> str:
        """An access token of a local user of ``facility`` with ``role`` (created if needed)."""
        token = self.pool.token(facility, role, user)
        self.pool.save(state_path(self.settings))  # a new user's password, for `ctfleet local token`
        return token

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
