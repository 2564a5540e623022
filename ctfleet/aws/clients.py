"""AWS client factory and the small adapters the handlers share.

Nothing here builds a client at import time. Endpoints come from settings
(read once from ``AWS_ENDPOINT_URL``), so the same code talks to AWS and to the
local moto server.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ctfleet.errors import BadInput, Transient
from ctfleet.settings import Settings

# SQS/DynamoDB error codes worth retrying; anything else is a bug or bad input.
_TRANSIENT = {
    "ThrottlingException",
    "Throttling",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "TransactionConflictException",
}


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry can fix (throttling, 5xx, connection trouble)."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in _TRANSIENT or status >= 500
    return isinstance(exc, BotoCoreError)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class Clients:
    """boto3 clients for one settings object, created on first use and shared.

    boto3 clients are thread-safe; sessions are not, so one session is
    created here and guarded while clients are built.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session = boto3.session.Session(region_name=settings.region)
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
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
        with self._lock:
            if service not in self._clients:
                self._clients[service] = self._session.client(
                    service, endpoint_url=self.settings.endpoint_url, config=self._config
                )
            return self._clients[service]

    @property
    def s3(self) -> Any:
        return self.client("s3")

    @property
    def sqs(self) -> Any:
        return self.client("sqs")

    @property
    def dynamodb(self) -> Any:
        return self.client("dynamodb")

    @property
    def dynamodbstreams(self) -> Any:
        return self.client("dynamodbstreams")

    @property
    def sns(self) -> Any:
        return self.client("sns")

    @property
    def secrets(self) -> Any:
        return self.client("secretsmanager")

    @property
    def logs(self) -> Any:
        return self.client("logs")

    # -- look-ups cached for the life of the process --------------------------------

    def queue_url(self, name: str) -> str:
        key = f"queue-url:{name}"
        with self._lock:
            cached = self._clients.get(key)
        if cached:
            return str(cached)
        url = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
        with self._lock:
            self._clients[key] = url
        return str(url)

    def topic_arn(self, name: str) -> str:
        key = f"topic-arn:{name}"
        with self._lock:
            cached = self._clients.get(key)
        if cached:
            return str(cached)
        arn = self._find_topic(name)
        with self._lock:
            self._clients[key] = arn
        return str(arn)

    def _find_topic(self, name: str) -> str:
        paginator = self.sns.get_paginator("list_topics")
        for page in paginator.paginate():
            for topic in page.get("Topics", []):
                if topic["TopicArn"].rsplit(":", 1)[-1] == name:
                    return str(topic["TopicArn"])
        raise Transient("topic_missing", f"SNS topic {name} does not exist")


class FacilitySecrets:
    """The per-facility HMAC secrets, from Secrets Manager, cached per process."""

    def __init__(self, clients: Clients) -> None:
        self._clients = clients
        self._cache: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, facility: str) -> bytes:
        with self._lock:
            if facility in self._cache:
                return self._cache[facility]
        name = self._clients.settings.facility_secret_name(facility)
        try:
            value = self._clients.secrets.get_secret_value(SecretId=name)
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                raise BadInput("unknown_facility", f"no secret configured for facility {facility}") from exc
            raise Transient("secrets_unavailable", error_code(exc)) from exc
        secret = value.get("SecretBinary") or str(value["SecretString"]).encode()
        with self._lock:
            self._cache[facility] = bytes(secret)
        return bytes(secret)


def list_sizes(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    """Object sizes under ``prefix``, keyed by the name after the prefix."""
    sizes: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            sizes[obj["Key"][len(prefix):]] = int(obj["Size"])
    return sizes
