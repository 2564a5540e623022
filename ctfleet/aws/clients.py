"""boto3 clients built from settings, once per process, and the look-ups cached with them.

Nothing here builds a client at import time. Endpoints come from settings
(read once from ``AWS_ENDPOINT_URL``), so the same code talks to AWS and to the
local moto server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config

from ctfleet.contracts import Reason
from ctfleet.errors import NotFound
from ctfleet.settings import Settings

from .failures import sorted_errors


class _Service:
    """``clients.s3`` and friends: the shared client of one AWS service."""

    def __init__(self, service: str) -> None:
        self.service = service

    def __get__(self, clients: "Clients", owner: type) -> Any:
        return clients.client(self.service)


class Clients:
    """boto3 clients for one settings object, created on first use and shared.

    boto3 clients are thread-safe; sessions are not, so one session is
    created here and guarded while clients are built.
    """

    s3 = _Service("s3")
    sqs = _Service("sqs")
    dynamodb = _Service("dynamodb")
    dynamodbstreams = _Service("dynamodbstreams")
    sns = _Service("sns")
    secrets = _Service("secretsmanager")
    logs = _Service("logs")
    autoscaling = _Service("autoscaling")
    ec2 = _Service("ec2")
    cloudwatch = _Service("cloudwatch")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session = boto3.session.Session(region_name=settings.region)
        self._lock = threading.Lock()
        self._cache: dict[str, Any] = {}
        self._config = Config(
            retries={"mode": "standard", "max_attempts": 5},
            # Path-style addressing works with every endpoint (AWS, or an IP on loopback).
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=70,  # longer than the longest SQS long poll
            max_pool_connections=32,
        )

    def client(self, service: str) -> Any:
        """The shared boto3 client of ``service``, built on first use."""
        with self._lock:
            if service not in self._cache:
                self._cache[service] = self._session.client(
                    service, endpoint_url=self.settings.endpoint_url, config=self._config
                )
            return self._cache[service]

    def _cached(self, key: str, look_up: Callable[[], str]) -> str:
        with self._lock:
            cached = self._cache.get(key)
        if cached:
            return str(cached)
        value = look_up()
        with self._lock:
            self._cache[key] = value
        return value

    def queue_url(self, name: str) -> str:
        """The URL of queue ``name``, looked up once per process."""

        def look_up() -> str:
            with sorted_errors(f"sqs:{name}"):
                return str(self.sqs.get_queue_url(QueueName=name)["QueueUrl"])

        return self._cached(f"queue-url:{name}", look_up)

    def topic_arn(self, name: str) -> str:
        """The ARN of SNS topic ``name``, looked up once per process."""
        return self._cached(f"topic-arn:{name}", lambda: self._find_topic(name))

    def _find_topic(self, name: str) -> str:
        with sorted_errors(f"sns:{name}"):
            for page in self.sns.get_paginator("list_topics").paginate():
                for topic in page.get("Topics", []):
                    if topic["TopicArn"].rsplit(":", 1)[-1] == name:
                        return str(topic["TopicArn"])
        raise NotFound(Reason.NOT_FOUND, f"SNS topic {name} does not exist")
