"""The worker loop and one job, handler-level: real queues and tables in a moto server, the built-in model."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

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
    # A spot instance (the local IMDS says so) pays the spot price from EC2's history (moto's figure).
    assert record["market"] == "spot" and record["price_source"] == "spot_history"
    assert record["cost_usd"] == pytest.approx(record["gpu_seconds"] / 3600 * record["price_per_hour_usd"], abs=2e-9)
    timings = record["timings_s"]
    assert timings["ingest_read"] == 0.5
    stages = ("worker_queue_wait", "worker_download", "worker_decode", "worker_analyze", "worker_upload")
    assert all(timings[k] >= 0 for k in stages) and timings["worker_total"] >= sum(timings[k] for k in stages[1:])
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


def test_a_malformed_message_goes_to_the_dead_letter_queue_with_its_reason(stack, worker):
    worker.urgent.send("{not json")
    [message] = worker.urgent.receive(max_messages=1, wait_s=1)
    assert worker.handle(worker.urgent, message) is None
    assert visible(stack) == 0
    dlq = stack.deps.queue(stack.settings.urgent_queue.dlq_name)
    got = dlq.sqs.receive_message(QueueUrl=dlq.url, MessageAttributeNames=["All"], WaitTimeSeconds=1)["Messages"]
    assert [m["Body"] for m in got] == ["{not json"]
    assert got[0]["MessageAttributes"]["reason"]["StringValue"] == Reason.MALFORMED_JOB
    dlq.delete(got[0]["ReceiptHandle"])


def test_a_job_whose_input_is_gone_fails_at_once(stack, worker, slices):
    job = queue_job(stack, "b3" * 12, slices)
    stack.clients.s3.delete_object(Bucket=stack.settings.studies_bucket, Key=job.object_keys[0])
    [message] = worker.urgent.receive(max_messages=1, wait_s=1)
    outcome = worker.handle(worker.urgent, message)
    assert outcome is not None and outcome.status == Status.FAILED and outcome.reason == Reason.INPUT_MISSING
    record = stack.deps.studies.get(job.study_key)
    assert record["status"] == Status.FAILED and record["reason"] == Reason.INPUT_MISSING and record["attempts"] == 1
    assert visible(stack) == 0


def test_a_duplicate_delivery_of_a_job_a_live_worker_holds_waits_instead_of_computing(stack, worker, slices):
    job = queue_job(stack, "b4" * 12, slices)
    assert stack.deps.studies.claim(job, "i-0another0000001", {}, lease_s=60).record is not None
    [message] = worker.urgent.receive(max_messages=1, wait_s=1)
    outcome = worker.handle(worker.urgent, message)
    assert outcome is not None and outcome.held_by == "i-0another0000001"
    record = stack.deps.studies.get(job.study_key)
    assert record["status"] == Status.PROCESSING and record["attempts"] == 1, "not computed a second time"
    assert worker.urgent.receive(max_messages=1, wait_s=1) == [], "backed off: invisible for a while"
    assert visible(stack) == 1, "kept for when the holder finishes or dies"
    # The holder's lease runs out (it died): the next delivery takes the job over.
    stack.deps.studies.release(job, "i-0another0000001")
    worker.urgent.set_visibility(message["ReceiptHandle"], 0)
    assert worker.run(max_jobs=1) == 1
    assert stack.deps.studies.get(job.study_key)["status"] == Status.DONE


def test_a_crash_counts_a_failure_and_the_last_failure_records_failed(stack, worker, slices):
    from ctfleet.aws.objects import Objects
    from ctfleet.results.files import render
    from worker.results import ResultWriter

    # A results bucket that does not exist: every attempt crashes after the analysis.
    broken = replace(worker, runner=replace(worker.runner,
                                            writer=ResultWriter(Objects(stack.clients.s3, "no-such-bucket"), render)))
    job = queue_job(stack, "b5" * 12, slices)
    for attempt in range(1, stack.settings.job_max_failures + 1):
        [message] = broken.urgent.receive(max_messages=1, wait_s=1)
        outcome = broken.handle(broken.urgent, message)
        record = stack.deps.studies.get(job.study_key)
        assert record["failures"] == attempt and record["lease_until"] == 0
        if attempt < stack.settings.job_max_failures:
            assert outcome is None and record["status"] == Status.PROCESSING
            broken.urgent.set_visibility(message["ReceiptHandle"], 0)  # SQS would redeliver after the timeout
    assert outcome is not None and outcome.status == Status.FAILED
    record = stack.deps.studies.get(job.study_key)
    assert record["status"] == Status.FAILED and record["reason"] == Reason.ANALYSIS_FAILED
    assert visible(stack) == 0


def test_the_cost_ledger_books_boot_busy_idle_and_the_reason_the_instance_stopped(stack, worker, slices):
    from worker.main import close_ledger, open_ledger
    from worker.spot import Notices

    clock = open_ledger(stack.clients, stack.settings, worker)
    assert clock is not None
    ledger = clock.ledger
    entry = ledger.get(worker.runner.instance.instance_id)
    assert entry["boot_s"] == 0.0, "outside EC2 there is no launch time: no boot seconds"
    assert entry["price_source"] == "spot_history" and entry["month"] == entry["launched_at"][:7]
    queue_job(stack, "b6" * 12, slices)
    worker.clock = clock
    try:
        assert worker.run(max_jobs=1) == 1
    finally:
        worker.clock = None
    entry = ledger.get(worker.runner.instance.instance_id)
    assert entry["jobs"] == 1 and entry["busy_s"] > 0 and entry["interrupted_s"] == 0
    close_ledger(clock, Notices(spot=True))
    entry = ledger.get(worker.runner.instance.instance_id)
    assert entry["closed_because"] == "spot_interruption" and entry["closed_at"] > 0 and entry["idle_s"] >= 0


def test_the_cost_ledger_books_busy_periods_of_overlapping_jobs_once(stack):
    from ctfleet.aws.ledger import InstanceClock, Ledger
    from ctfleet.aws.records import Table

    ledger = Ledger(Table(stack.clients.dynamodb, stack.settings.ledger_table))
    ledger.open("i-clock", instance_type="g5.xlarge", market="spot", zone="", launched_at=0.0, ready_at=0.0,
                price_per_hour_usd=1.0, price_source="test")
    clock = InstanceClock(ledger, "i-clock")
    t0 = time.monotonic()
    clock.started()  # one job read, analyzed ...
    clock.started()  # ... while the next is read: one busy period, not two
    time.sleep(0.2)
    clock.ended(finished=True)
    time.sleep(0.1)
    entry = ledger.get("i-clock")
    assert entry["busy_s"] == 0 and entry["jobs"] == 0, "the period goes on while a job is held"
    clock.ended(finished=True)
    held = time.monotonic() - t0
    entry = ledger.get("i-clock")
    assert entry["jobs"] == 2 and 0.3 <= entry["busy_s"] <= held, "wall-clock seconds, not the sum of the jobs'"
    clock.started()
    clock.ended(finished=False)  # handed back: interrupted, no job
    entry = ledger.get("i-clock")
    assert entry["jobs"] == 2 and entry["interrupted_s"] > 0


@pytest.mark.parametrize("prefetch", [True, False])
def test_the_next_study_is_read_while_the_current_one_is_analyzed(stack, worker, slices, prefetch):
    first = queue_job(stack, ("c1" if prefetch else "c2") * 12, slices)
    second = queue_job(stack, ("d1" if prefetch else "d2") * 12, slices)
    assert replace(worker, prefetch=prefetch).run(max_jobs=2) == 2
    a, b = (stack.deps.studies.get(j.study_key) for j in (first, second))
    assert a["status"] == b["status"] == Status.DONE
    if prefetch:
        assert b["started_at"] < a["done_at"], "the second study was claimed and read during the first's analysis"
        # Its cost counts its own reading and analysis, not the wait for the GPU between them.
        assert b["gpu_seconds"] < b["done_at"] - b["started_at"]
    else:
        assert b["started_at"] >= a["done_at"]
    assert visible(stack) == 0


def test_a_job_that_arrives_while_a_stopping_worker_long_polls_goes_back_unclaimed(stack, worker, slices):
    # The termination hook (or a spot notice) stops the worker while its long poll is in flight; the job
    # that poll brings must not be claimed by a machine that is leaving: visible again at once, still QUEUED.
    stopping = replace(worker, stop=threading.Event())
    key = "c7" * 12

    def terminate_then_upload() -> None:
        time.sleep(1.0)
        stopping.stop.set()
        queue_job(stack, key, slices)

    sender = threading.Thread(target=terminate_then_upload)
    sender.start()
    assert stopping._next(5) is None
    sender.join()
    record = stack.deps.studies.get(key)
    assert record["status"] == Status.QUEUED and record["attempts"] == 0 and not record.get("worker_instance")
    [message] = worker.urgent.receive(max_messages=1, wait_s=1)  # visible now, not after its 30 s timeout
    assert json.loads(message["Body"])["study_key"] == key
    worker.urgent.delete(message["ReceiptHandle"])
