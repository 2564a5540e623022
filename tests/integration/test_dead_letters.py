"""Messages SQS gave up on end as FAILED records, not as studies stuck PROCESSING forever."""

from __future__ import annotations

import json

import pytest

from ctfleet.contracts import JobMessage
from ctfleet.aws.records import now
from dispatcher.deps import HandlerDeps
from dispatcher.sweeper import settle_dead_letters

pytestmark = pytest.mark.integration


def test_a_dead_job_marks_its_study_failed(stack):
    key = "dead" * 6
    job = JobMessage.new(facility="demo", study_key=key, series="s" * 16,
                         object_keys=(f"studies/demo/{key}/{'s' * 16}/0000.dcm",), slice_count=1, size_bytes=1,
                         priority="urgent", model="default")
    deps = HandlerDeps(stack.clients)
    deps.studies.table.put_new({"study_key": key, "facility": "demo", "status": "PROCESSING",
                                          "job_id": job.job_id, "created_at": "2026-01-01T00:00:00.000Z"})
    sqs = stack.clients.sqs
    sqs.send_message(QueueUrl=stack.clients.queue_url(stack.settings.urgent_queue.dlq_name), MessageBody=job.to_json())
    settle_dead_letters(deps)
    record = deps.studies.get(key)
    assert record["status"] == "FAILED" and record["reason"] == "too_many_attempts"


def test_a_dead_ingest_event_marks_its_upload_failed(stack):
    upload_id = "d" * 32
    deps = HandlerDeps(stack.clients)
    deps.uploads.table.put_new({"upload_id": upload_id, "facility": "demo", "status": "COMPLETE",
                                          "created_at": "2026-01-01T00:00:00.000Z", "received_at": now()})
    body = json.dumps({"Records": [{"s3": {"bucket": {"name": stack.settings.raw_bucket},
                                           "object": {"key": f"raw/demo/{upload_id}/manifest.json"}}}]})
    stack.clients.sqs.send_message(QueueUrl=stack.clients.queue_url(stack.settings.ingest_queue.dlq_name),
                                   MessageBody=body)
    settle_dead_letters(deps)
    record = deps.uploads.get(upload_id)
    assert record["status"] == "FAILED" and record["reason"] == "ingest_error"
