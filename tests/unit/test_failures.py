"""Every ClientError is sorted once into the error tree, and only transient ones are retried."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from ctfleet.aws.failures import retrying, sorted_errors, translate
from ctfleet.contracts import Reason
from ctfleet.errors import BadInput, Conflict, CtfleetError, Fault, Interrupted, NotFound, Transient


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize("code, status, family", [
    ("ConditionalCheckFailedException", 400, Conflict),
    ("ThrottlingException", 400, Transient),
    ("ProvisionedThroughputExceededException", 400, Transient),
    ("SlowDown", 503, Transient),
    ("Whatever", 500, Transient),
    ("NoSuchKey", 404, NotFound),
    ("ResourceNotFoundException", 400, NotFound),
    ("AccessDenied", 403, Fault),
    ("ValidationException", 400, Fault),
])
def test_client_errors_are_sorted_by_code_and_status(code, status, family):
    err = translate(client_error(code, status), "dynamodb:t")
    assert type(err) is family and err.detail == f"dynamodb:t: {code}"
    assert err.reason in vars(Reason).values()


def test_connection_trouble_is_transient():
    assert isinstance(translate(EndpointConnectionError(endpoint_url="http://x"), "s3:get"), Transient)


def test_an_unreadable_response_is_a_fault():
    from botocore.parsers import ResponseParserError

    with pytest.raises(Fault), sorted_errors("autoscaling:lifecycle"):
        raise ResponseParserError("not XML")


def test_every_family_is_one_tree():
    for family in (BadInput, Transient, Interrupted, Conflict, Fault, NotFound):
        assert issubclass(family, CtfleetError)
    assert issubclass(NotFound, Fault)


def test_sorted_errors_raises_the_tree_member_from_the_client_error():
    with pytest.raises(Conflict) as caught, sorted_errors("dynamodb:t"):
        raise client_error("ConditionalCheckFailedException")
    assert isinstance(caught.value.__cause__, ClientError)


def test_only_transient_errors_are_retried():
    calls = {"transient": 0, "fault": 0}

    @retrying
    def flaky() -> str:
        calls["transient"] += 1
        if calls["transient"] < 3:
            raise Transient(Reason.SERVICE_BUSY, "s3:get: SlowDown")
        return "ok"

    @retrying
    def broken() -> None:
        calls["fault"] += 1
        raise Fault(Reason.SERVICE_ERROR, "s3:get: AccessDenied")

    assert flaky() == "ok" and calls["transient"] == 3
    with pytest.raises(Fault):
        broken()
    assert calls["fault"] == 1


def test_retries_are_bounded_then_the_transient_error_propagates():
    calls = []

    @retrying
    def down() -> None:
        calls.append(1)
        raise Transient(Reason.SERVICE_BUSY, "sqs:q: ServiceUnavailable")

    with pytest.raises(Transient):
        down()
    assert len(calls) == 3
