"""The fleet under fire: a spot notice, a termination, a kill -9, a poison message and a duplicate
delivery, each mid-job on a real worker of the local fleet; nothing is lost and one alert goes out.

The real CT is used because its analysis lasts long enough to interrupt reliably; a near-zero
HIGH threshold makes its mass alert, so "alerts once" is checked too.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from ctfleet.cli.client import ApiClient
from ctfleet.contracts import Reason
from ctfleet.local.stack import LocalStack
from ctfleet.settings import Settings
from stack_helpers import alerts_for, another_study, wait_processing

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def fire(tmp_path_factory):
    """A fleet of up to two, booting in a second, and its API client."""
    settings = Settings(stack="ctffire", facilities=("demo",), high_threshold=1e-4, fleet_idle_grace_s=60.0)
    log = tmp_path_factory.mktemp("fire") / "workers.log"
    with LocalStack(settings, fleet_max=2, boot_s=1.0, scaler_interval_s=2.0, worker_log=log) as s:
        yield s, ApiClient(s.api_url + "/api", token=s.token("demo", "clinician"))


@pytest.fixture(scope="module")
def real_ct_files(real_ct_dir: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(real_ct_dir.glob("*.dcm"))]


def visible_within(stack: LocalStack, seconds: float, running: dict) -> float:
    """Seconds until the interrupted job is visible again (fails after ``seconds``).

    Visible means the urgent queue shows the message, or another worker has taken the job
    already (an idle worker's long poll receives it the moment it reappears, before a poll of
    the queue's count can see it): the study's attempts go up.
    """
    url = stack.clients.queue_url(stack.settings.urgent_queue.name)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        attrs = stack.clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        if int(attrs["Attributes"]["ApproximateNumberOfMessages"]):
            return time.monotonic() - start
        if (stack.record(running["study_key"]) or {}).get("attempts", 0) > running["attempts"]:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"the job was not visible again within {seconds} s")


def interrupted_mid_job(fire, files, act, *, visible_s: float) -> tuple[dict, object, dict, float]:
    """Send a new study, do ``act(instance)`` to the instance running it, and follow it to DONE.

    Checks what holds for every interruption: the job returns to the queue within
    ``visible_s``, another attempt finishes it, the interruption is not a failure, one alert.
    Returns the record while it ran, the interrupted instance, the final record and the wait.
    """
    stack, api = fire
    stack.drain_alerts(wait_s=0)
    up = api.upload("demo", another_study(files)).upload_id
    running = stack.record(wait_processing(api, up)["study_key"])
    instance = stack.fleet.instances[running["worker_instance"]]
    act(instance)
    waited = visible_within(stack, visible_s, running)
    record = stack.record(api.wait(up, timeout_s=240)["study"]["study_key"])
    assert record["status"] == "DONE" and record["attempts"] == 2 and record.get("failures", 0) == 0
    assert alerts_for(stack, record["study_key"]) == 1
    return running, instance, record, waited


def test_a_spot_notice_hands_the_job_back_at_once_and_it_is_no_failure(fire, real_ct_files):
    running, _, record, waited = interrupted_mid_job(fire, real_ct_files, lambda i: i.imds.interrupt(), visible_s=5.0)
    assert waited < 5.0
    assert record["worker_instance"] != running["worker_instance"], "a replacement instance finished it"


def test_a_termination_mid_job_hands_a_long_job_back_and_the_instance_leaves(fire, real_ct_files):
    # What the termination lifecycle hook tells the instance. The job (about 24 s on a g5 by the
    # throughput table) would not end within half the 30 s hook: it is handed back at once.
    _, instance, _, waited = interrupted_mid_job(fire, real_ct_files, lambda i: i.imds.terminate(), visible_s=5.0)
    assert waited < 5.0
    assert instance.proc.wait(timeout=30) == 0, "the worker left by itself, within the hook"


def test_kill_9_mid_job_makes_the_job_visible_within_30_s(fire, real_ct_files):
    stack, _ = fire
    limit = stack.settings.job_visibility_s + 2.0
    _, _, _, waited = interrupted_mid_job(fire, real_ct_files, lambda i: os.killpg(i.proc.pid, signal.SIGKILL),
                                          visible_s=limit)
    assert waited <= limit


def test_a_poison_message_goes_to_the_dead_letter_queue_and_other_work_goes_on(fire, real_ct_files):
    stack, api = fire
    queue = stack.clients.queue_url(stack.settings.urgent_queue.name)
    stack.clients.sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"version": 99, "study_key": "x"}))
    up = api.upload("demo", another_study(real_ct_files)).upload_id
    assert api.wait(up, timeout_s=240)["study"]["status"] == "DONE"
    dlq = stack.clients.queue_url(stack.settings.urgent_queue.dlq_name)
    # The scheduled sweep looks at the dead-letter queue too (and leaves unreadable messages there),
    # so the message may be invisible for the queue's visibility timeout: look for it that long.
    reasons: list[str] = []
    deadline = time.monotonic() + 45
    while Reason.MALFORMED_JOB not in reasons and time.monotonic() < deadline:
        got = stack.clients.sqs.receive_message(QueueUrl=dlq, MessageAttributeNames=["All"], WaitTimeSeconds=2,
                                                MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", [])
        reasons += [m.get("MessageAttributes", {}).get("reason", {}).get("StringValue", "") for m in got]
    assert Reason.MALFORMED_JOB in reasons


def test_a_duplicate_delivery_while_the_job_runs_is_computed_once_and_alerts_once(fire, real_ct_files):
    stack, api = fire
    stack.drain_alerts(wait_s=0)
    up = api.upload("demo", another_study(real_ct_files)).upload_id
    running = stack.record(wait_processing(api, up)["study_key"])
    # SQS delivers at least once: the same job again, while the first delivery runs. The urgent
    # message waiting brings a second instance, whose worker finds the job held and backs off.
    stack.clients.sqs.send_message(QueueUrl=stack.clients.queue_url(stack.settings.urgent_queue.name),
                                   MessageBody=running["job"])
    record = api.wait(up, timeout_s=240)["study"]
    assert record["status"] == "DONE" and record["attempts"] == 1, "computed once"
    assert alerts_for(stack, record["study_key"]) == 1
