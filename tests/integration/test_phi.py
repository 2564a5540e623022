"""No PHI past ingest: a corpus with planted identities in every Annex E class goes through
the whole stack, and not one byte of any planted value appears outside raw/ — in S3, the
records, the queues, the alerts, the logs (stderr and CloudWatch) or the error texts."""

from __future__ import annotations

import json
import logging

import pytest

pytestmark = pytest.mark.integration


class Capture(logging.Handler):
    """Every log record of this process (ingest and triage run here, on pollers), formatted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + json.dumps(vars(record), default=str))


def _peek_all_queues(stack) -> list[bytes]:
    out = []
    sqs = stack.clients.sqs
    for url in sqs.list_queues().get("QueueUrls", []):
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0)
        out += [json.dumps(m).encode() for m in got.get("Messages", [])]
    return out


def test_planted_phi_never_leaves_raw(stack, api, worker_log):
    from phi import phi_corpus

    files, planted = phi_corpus(shape=(24, 160, 160), spacing_mm=(5.0, 2.0, 2.0))
    assert len(planted) >= 40
    capture = Capture()
    logging.getLogger().addHandler(capture)
    try:
        up = api.upload("demo", files)
        state = api.wait(up.upload_id, timeout_s=180)
    finally:
        logging.getLogger().removeHandler(capture)
    assert state["final"], state
    assert state["upload"]["status"] == "QUEUED", state["upload"]
    assert state["study"]["status"] == "DONE", state["study"]

    s3 = stack.clients.s3
    s = stack.settings
    raw_left = s3.list_objects_v2(Bucket=s.raw_bucket, Prefix=f"raw/demo/{up.upload_id}/")
    assert raw_left.get("KeyCount", 0) == 0
    blobs: list[bytes] = []
    for bucket in (s.studies_bucket, s.results_bucket):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                blobs.append(obj["Key"].encode())
                blobs.append(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
    for spec in s.tables:
        blobs.append(json.dumps(stack.clients.dynamodb.scan(TableName=spec.name)["Items"]).encode())
    blobs += _peek_all_queues(stack)
    blobs.append(json.dumps(stack.drain_alerts(wait_s=1)).encode())
    blobs.append("\n".join(capture.lines).encode())
    blobs.append(worker_log.read_bytes())
    logs = stack.clients.logs
    for group in logs.describe_log_groups().get("logGroups", []):
        events = logs.filter_log_events(logGroupName=group["logGroupName"]).get("events", [])
        blobs.append(json.dumps(events).encode())
    blobs.append(json.dumps(api.get_upload(up.upload_id)).encode())
    blobs.append(json.dumps(api.get_study(state["study"]["study_key"])).encode())

    everything = b"\n".join(blobs)
    assert len(everything) > 1_000_000, "the scan must cover the de-identified series and results"
    leaked = [value for value in planted if value in everything]
    assert not leaked, f"{len(leaked)} planted values leaked, e.g. {leaked[0][:6]!r}..."
