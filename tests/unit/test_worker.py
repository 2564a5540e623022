"""The worker loop and one job, handler-level: real queues and tables in a moto server, the built-in model."""

from __future__ import annotations

import json

import pytest

from aws_server import moto_stack
from ctfleet.aws.imds import Imds
from ctfleet.contracts import JobMessage, Reason, Status, study_prefix
from ctfleet.dev.phantom import from_preset
from ctfleet.dev.synthetic import series_to_datasets
from ctfleet.intake import dataset_to_bytes
from ctfleet.local.imds_server import LocalImds
from ctfleet.settings import Settings
from worker.main import build_worker


@pytest.fixture(scope="module")
def stack():
    with moto_stack(Settings(stack="ctfwork", heartbeat_s=2, job_visibility_s=30, device="cpu")) as s:
        yield s


@pytest.fixture(scope="module")
def worker(stack):
    imds = LocalImds("i-0feedc0de0000001", "g5.xlarge").start()
    try:
        yield build_worker(stack.settings, stack.clients, Imds(imds.url))
    finally:
        imds.stop()


@pytest.fixture(scope="module")
def slices() -> list[bytes]:
    p = from_preset("clean")
    return [dataset_to_bytes(ds) for ds in series_to_datasets(p.hu[::2], (p.spacing_mm[0] * 2, *p.spacing_mm[1:]))]


def queue_job(stack, key: str, slices: list[bytes]) -> JobMessage:
    """What ingest leaves behind: the de-identified series, a QUEUED record and the job in the urgent queue."""
    prefix = study_prefix("demo", key, "s" * 16)
    keys = tuple(f"{prefix}{i:04d}.dcm" for i in range(len(slices)))
    stack.deps.studies_objects.put_many(zip(keys, slices))
    job = JobMessage.new(facility="demo", study_key=key, series="s" * 16, object_keys=keys, slice_count=len(keys),
                         size_bytes=sum(map(len, slices)), priority="urgent", model="default")
    stack.deps.studies.register(job, {"study_key": key, "facility": "demo", "status": Status.QUEUED,
                                      "upload_id": "u", "job_id": job.job_id, "job": job.to_json(),
                                      "created_at": "2026-01-01T00:00:00.000Z", "attempts": 0,
                                      "timings_s": {"ingest_read": 0.5}})
    stack.deps.queue(stack.settings.urgent_queue.name).send(job.to_json())
    return job


def visible(stack) -> int:
    url = stack.clients.queue_url(stack.settings.urgent_queue.name)
    attrs = stack.clients.sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in attrs["Attributes"].values())


def test_a_job_runs_to_done_with_results_cost_and_timings_then_its_message_is_deleted(stack, worker, slices):
    job = queue_job(stack, "b1" * 12, slices)
    assert worker.run(max_jobs=1) == 1
    record = stack.deps.studies.get(job.study_key)
    assert record["status"] == Status.DONE and record["attempts"] == 1
    assert record["worker_instance"] == "i-0feedc0de0000001" and record["instance_type"] == "g5.xlarge"
    assert record["triage_level"] == "LOW" and record["model_version"] == worker.runner.model_version
    assert record["cost_usd"] == pytest.approx(record["gpu_seconds"] / 3600 * stack.settings.gpu_price_per_hour,
                                               abs=1e-6)
    assert record["timings_s"]["ingest_read"] == 0.5 and record["timings_s"]["worker_total"] > 0
    names = {k.rsplit("/", 1)[-1] for k in record["result_keys"]}
    assert {"labels.nii.gz", "report.json"} <= names
    report = json.loads(stack.deps.results.get(record["result_prefix"] + "report.json"))
    assert report["triage_level"] == record["triage_level"]
    assert visible(stack) == 0


def test_a_duplicate_of_a_settled_job_is_dropped_without_computing(stack, worker, slices):
    job = queue_job(stack, "b2" * 12, slices)
    worker.run(max_jobs=1)
    done = stack.deps.studies.get(job.study_key)
    stack.deps.queue(stack.settings.urgent_queue.name).send(job.to_json())
    queue = worker.urgent
    [message] = queue.receive(max_messages=1, wait_s=1)
    outcome = worker.handle(queue, message)
    assert outcome is not None and outcome.reason == Reason.DUPLICATE_JOB and outcome.status == Status.DONE
    assert stack.deps.studies.get(job.study_key) == done, "the record is untouched"
    assert visible(stack) == 0


def test_a_malformed_message_is_dropped(stack, worker):
    worker.urgent.send("{not json")
    [message] = worker.urgent.receive(max_messages=1, wait_s=1)
    assert worker.handle(worker.urgent, message) is None
    assert visible(stack) == 0


def test_a_crash_is_left_for_sqs_and_recorded_failed_on_the_last_delivery(stack, worker, slices):
    job = queue_job(stack, "b3" * 12, slices)
    stack.clients.s3.delete_object(Bucket=stack.settings.studies_bucket, Key=job.object_keys[0])  # input lost
    [message] = worker.urgent.receive(max_messages=1, wait_s=1)
    assert worker.handle(worker.urgent, message) is None
    assert stack.deps.studies.get(job.study_key)["status"] == Status.PROCESSING
    assert visible(stack) == 1, "left for SQS to redeliver"
    worker.urgent.set_visibility(message["ReceiptHandle"], 0)
    [again] = worker.urgent.receive(max_messages=1, wait_s=1)
    again["Attributes"]["ApproximateReceiveCount"] = str(stack.settings.urgent_queue.max_receive_count)
    outcome = worker.handle(worker.urgent, again)
    assert outcome is not None and outcome.status == Status.FAILED
    record = stack.deps.studies.get(job.study_key)
    assert record["status"] == Status.FAILED and record["reason"] == Reason.ANALYSIS_FAILED
    assert visible(stack) == 0
