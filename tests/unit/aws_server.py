"""A real moto server over HTTP on 127.0.0.1 with one stack provisioned: what handler-level tests run against."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from ctfleet.aws.clients import Clients
from ctfleet.local.httpd import free_port
from ctfleet.local.provision import provision
from ctfleet.local.stack import LOCAL_CREDENTIALS
from ctfleet.settings import Settings
from dispatcher.deps import HandlerDeps

SECRET = b"ab" * 32


@dataclass
class Stack:
    settings: Settings
    clients: Clients
    deps: HandlerDeps
    resources: dict[str, Any]
    inbox_url: str

    def alerts(self) -> list[str]:
        """Alert bodies delivered to the inbox queue (subscribed to every alerts topic) since the last call."""
        out = []
        while True:
            got = self.clients.sqs.receive_message(QueueUrl=self.inbox_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            if not got.get("Messages"):
                return out
            for m in got["Messages"]:
                out.append(m["Body"])
                self.clients.sqs.delete_message(QueueUrl=self.inbox_url, ReceiptHandle=m["ReceiptHandle"])


@contextmanager
def moto_stack(settings: Settings) -> Iterator[Stack]:
    """Start a moto server, provision ``settings``' resources in it, and yield the handlers' dependencies."""
    from moto.server import ThreadedMotoServer

    for k, v in LOCAL_CREDENTIALS.items():
        os.environ.setdefault(k, v)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        settings = replace(settings, endpoint_url=f"http://127.0.0.1:{port}", api_url="https://ctfleet.example")
        clients = Clients(settings)
        resources = provision(clients, {f: SECRET for f in settings.facilities})
        sqs = clients.sqs
        inbox = sqs.create_queue(QueueName=f"{settings.stack}-inbox")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for topic in (resources["topic_arn"], *resources["facility_topics"].values()):
            clients.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
        yield Stack(settings, clients, HandlerDeps(clients), resources, inbox)
    finally:
        server.stop()
