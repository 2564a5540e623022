"""Recorded events (captured from the moto server in tests/events/) through the handlers' pure parts."""

import json
from pathlib import Path

from ctfleet.contracts import needs_alert, parse_raw_key, s3_event_keys
from ctfleet.aws.records import deserialize

EVENTS = Path(__file__).resolve().parents[1] / "events"


def load(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


def test_s3_notifications_yield_the_manifest_and_skip_the_test_event():
    event = load("sqs_s3_manifest_created.json")
    keys = [k for record in event["Records"] for k in s3_event_keys(record["body"])]
    assert keys == [("ctfleet-raw", "raw/demo/0123456789abcdef0123456789abcdef/manifest.json")]
    assert parse_raw_key(keys[0][1]) == ("demo", "0123456789abcdef0123456789abcdef", "manifest.json")


def test_url_encoded_keys_are_decoded():
    body = json.dumps({"Records": [{"s3": {"bucket": {"name": "b"}, "object": {"key": "raw/demo/x/a+b%2Fc.json"}}}]})
    assert s3_event_keys(body) == [("b", "raw/demo/x/a b/c.json")]


def test_only_the_done_high_stream_record_needs_an_alert():
    records = load("dynamodb_stream_study_done_high.json")["Records"]
    images = [(r["eventName"], deserialize(r["dynamodb"]["NewImage"])) for r in records]
    assert [name for name, _ in images] == ["INSERT", "MODIFY"]
    assert [needs_alert(image) for _, image in images] == [False, True]
    assert images[1][1]["score"] == 0.91
