"""One SQS queue: send, receive, delete, change visibility; errors sorted into the tree."""

from __future__ import annotations

from typing import Any

from .failures import retrying, sorted_errors


class Queue:
    """An SQS queue by URL.

    Parameters
    ----------
    sqs : boto3 SQS client
    url : str
    name : str
        For error messages and logs.
    """

    def __init__(self, sqs: Any, url: str, name: str = "") -> None:
        self.sqs = sqs
        self.url = url
        self.name = name or url.rsplit("/", 1)[-1]

    @retrying
    def send(self, body: str, attributes: dict[str, str] | None = None) -> None:
        """Send one message, with string message attributes."""
        extra: dict[str, Any] = {}
        if attributes:
            extra["MessageAttributes"] = {k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()}
        with sorted_errors(f"sqs:{self.name}"):
            self.sqs.send_message(QueueUrl=self.url, MessageBody=body, **extra)

    def receive(self, *, max_messages: int = 1, wait_s: int = 0) -> list[dict[str, Any]]:
        """Up to ``max_messages`` messages, each with its ``ApproximateReceiveCount``."""
        with sorted_errors(f"sqs:{self.name}"):
            out = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=max_messages,
                                           WaitTimeSeconds=wait_s, AttributeNames=["All"])
        return list(out.get("Messages", []))

    @retrying
    def delete(self, receipt: str) -> None:
        """Delete a received message: its work is settled."""
        with sorted_errors(f"sqs:{self.name}"):
            self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=receipt)

    @retrying
    def depth(self) -> tuple[int, int]:
        """``(visible, in flight)``: messages waiting, and messages received but not yet deleted."""
        with sorted_errors(f"sqs:{self.name}"):
            attrs = self.sqs.get_queue_attributes(
                QueueUrl=self.url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def set_visibility(self, receipt: str, seconds: int) -> None:
        """Keep a received message invisible for ``seconds`` more (0: visible again now)."""
        with sorted_errors(f"sqs:{self.name}"):
            self.sqs.change_message_visibility(QueueUrl=self.url, ReceiptHandle=receipt, VisibilityTimeout=seconds)


def receive_count(message: dict[str, Any]) -> int:
    """How many times SQS has delivered ``message`` (1 on the first delivery).

    Reads a received message (``Attributes``) or a Lambda SQS event record (``attributes``).
    """
    attributes = message.get("Attributes") or message.get("attributes") or {}
    return int(attributes.get("ApproximateReceiveCount", "1"))
