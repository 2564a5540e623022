"""The buckets' CORS: only the web page's origin, only the methods the page uses."""

from __future__ import annotations

from infra.preview import PLACEHOLDER_CODE

import logging

import pytest
from pulumi_mocks import Program, run_program

from ctfleet.settings import Settings

pytestmark = pytest.mark.filterwarnings(r"ignore:.*deprecated in favor of:DeprecationWarning:pulumi_aws\..*")

CORS = "aws:s3/bucketCorsConfiguration:BucketCorsConfiguration"
SETTINGS = Settings(stack="ctfleet-c1", bucket_suffix="z3", region="eu-west-3")
ORIGIN = "https://ct.hospital.example"


def _build(**kw: object) -> Program:
    from infra.__main__ import build

    return run_program(lambda: build(SETTINGS, code=PLACEHOLDER_CODE, zones=("eu-west-3a", "eu-west-3b"), **kw))  # type: ignore[arg-type]


def test_raw_takes_posts_and_the_others_gets_from_the_web_origin_only() -> None:
    ran = _build(web_origins=(ORIGIN,))
    rules = {r.inputs["bucket"]: r.inputs["corsRules"] for r in ran.mocks.of_type(CORS)}
    assert set(rules) == set(SETTINGS.buckets)
    for bucket, [rule] in rules.items():
        assert rule["allowedOrigins"] == [ORIGIN]
        expected = ["POST"] if bucket == SETTINGS.raw_bucket else ["GET", "HEAD"]
        assert rule["allowedMethods"] == expected, bucket


def test_without_an_origin_no_browser_is_admitted_and_the_program_says_so() -> None:
    ran = _build()
    assert ran.mocks.of_type(CORS) == []
    warnings = [r.getMessage() for r in ran.logged if r.levelno >= logging.WARNING]
    assert any("ctfleet:webOrigin" in w for w in warnings), warnings


@pytest.mark.parametrize("origin", ["http://ct.hospital.example", "https://ct.hospital.example/app", "*"])
def test_storage_args_reject_an_origin_that_is_not_https_host(origin: str) -> None:
    from dataclasses import replace

    from infra.components.storage import StorageArgs

    args = StorageArgs.from_settings(SETTINGS, ingest_queue_arn="a", ingest_queue_url="u", account_id="1")
    with pytest.raises(ValueError, match="web origin"):
        replace(args, web_origins=(origin,))
