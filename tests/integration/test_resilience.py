"""A spot reclaim or a kill -9 in the middle of a job loses nothing and alerts once.

Its own local stack: short job visibility (so a killed worker's job returns in
seconds) and a near-zero HIGH threshold (so the real CT, with its mass, triages HIGH and the alert
path is exercised). The real CT is used because its analysis lasts long enough
to interrupt it reliably.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from ctfleet.local.stack import LocalStack
from ctfleet.settings import Settings
from ctfleet.cli.client import ApiClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def res_stack(tmp_path_factory):
    settings = Settings(stack="ctfres", facilities=("spot", "crash"), job_visibility_s=10, heartbeat_s=3,
                        high_threshold=1e-4)  # any finding (the real mass) triages HIGH
    log = tmp_path_factory.mktemp("res") / "workers.log"
    with LocalStack(settings, workers=1, worker_log=log) as stack:
        yield stack


@pytest.fixture(scope="module")
def real_ct_files(real_ct_dir: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(real_ct_dir.glob("*.dcm"))]


def _wait_processing(api: ApiClient, upload_id: str, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        up = api.get_upload(upload_id)
        if up.get("study_key"):
            study = api.get_study(up["study_key"])
            if study["status"] == "PROCESSING":
                return str(up["study_key"])
            assert study["status"] == "QUEUED", f"finished before it could be interrupted: {study['status']}"
        time.sleep(0.1)
    raise AssertionError("the study never started processing")


def _alerts_for(stack: LocalStack, key: str, seconds: float = 6.0) -> int:
    alerts, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        alerts += stack.drain_alerts(wait_s=1)
    return sum(1 for a in alerts if a["study_key"] == key)


def test_spot_notice_hands_the_job_back_and_another_instance_finishes_it(res_stack, real_ct_files):
    api = ApiClient(res_stack.api_url + "/api")
    up = api.upload("spot", real_ct_files)
    key = _wait_processing(api, up.upload_id)
    first = res_stack.workers[0]
    res_stack.imds[0].interrupt()
    assert first.wait(timeout=60) == 0, "the reclaimed worker stops by itself"
    assert api.get_study(key)["status"] == "PROCESSING"  # handed back, not finished by the dying worker
    res_stack.start_worker(0)  # the Auto Scaling group's replacement instance
    state = api.wait(up.upload_id, timeout_s=180)
    record = state["study"]
    assert record["status"] == "DONE" and record["attempts"] == 2
    assert record["worker_instance"] != "" and record["triage_level"] == "HIGH"
    assert _alerts_for(res_stack, key) == 1


def test_kill_9_mid_job_loses_nothing_and_alerts_once(res_stack, real_ct_files):
    api = ApiClient(res_stack.api_url + "/api")
    up = api.upload("crash", real_ct_files)
    key = _wait_processing(api, up.upload_id)
    victim = res_stack.workers[0]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    res_stack.start_worker(0)
    state = api.wait(up.upload_id, timeout_s=240)
    record = state["study"]
    assert record["status"] == "DONE" and record["attempts"] == 2
    assert _alerts_for(res_stack, key) == 1
