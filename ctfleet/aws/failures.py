"""Sort every ``ClientError`` once into the error tree, and the one retry policy for transient ones.

Adapters call AWS inside :func:`sorted_errors`; nothing above them sees a
botocore exception. boto3's own retries (standard mode) already absorb most
throttling; :data:`retrying` adds a short, jittered back-off for what is left,
after which the :class:`~ctfleet.errors.Transient` error propagates and SQS
redelivers the message.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from ctfleet.contracts import Reason
from ctfleet.errors import Conflict, CtfleetError, Fault, NotFound, Transient

# Retry these: throttling, capacity, AWS-side errors, and DynamoDB's transaction races.
TRANSIENT_CODES = frozenset({
    "ThrottlingException", "Throttling", "ThrottledException", "ProvisionedThroughputExceededException",
    "RequestLimitExceeded", "TooManyRequestsException", "InternalError", "InternalFailure",
    "InternalServerError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "TransactionConflictException",
})
CONFLICT_CODES = frozenset({"ConditionalCheckFailedException"})
MISSING_CODES = frozenset({
    "NoSuchKey", "NoSuchBucket", "404", "NotFound", "ResourceNotFoundException", "NotFoundException",
    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist",
})


def error_code(exc: ClientError) -> str:
    """The service's error code of ``exc`` (``""`` when it has none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def translate(exc: ClientError | BotoCoreError, what: str) -> CtfleetError:
    """The error-tree member for a botocore exception raised while doing ``what``.

    Parameters
    ----------
    exc : ClientError or BotoCoreError
    what : str
        A short name of the call (``"dynamodb:studies"``, ``"s3:get"``), without PHI.

    Returns
    -------
    CtfleetError
        :class:`Conflict`, :class:`Transient` (throttling, 5xx, connection
        trouble), :class:`NotFound` or :class:`Fault` (anything else permanent).
    """
    if isinstance(exc, BotoCoreError):
        return Transient(Reason.SERVICE_BUSY, f"{what}: {type(exc).__name__}")
    code = error_code(exc)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    detail = f"{what}: {code or f'HTTP {status}'}"
    if code in CONFLICT_CODES:
        return Conflict(Reason.CONFLICT, detail)
    if code in TRANSIENT_CODES or status >= 500:
        return Transient(Reason.SERVICE_BUSY, detail)
    if code in MISSING_CODES or status == 404:
        return NotFound(Reason.NOT_FOUND, detail)
    return Fault(Reason.SERVICE_ERROR, detail)


@contextmanager
def sorted_errors(what: str) -> Iterator[None]:
    """Run AWS calls whose botocore errors become members of the error tree."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, what) from exc
    except ResponseParserError as exc:  # an answer botocore cannot read (moto's unimplemented corners)
        raise Fault(Reason.SERVICE_ERROR, f"{what}: unreadable response") from exc


retrying = retry(
    retry=retry_if_exception_type(Transient),
    stop=stop_after_attempt(3),
    wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
    reraise=True,
)
"""Decorator: retry a call raising :class:`Transient` twice more with jittered back-off, then re-raise."""
