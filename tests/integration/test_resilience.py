"""A spot reclaim or a kill -9 in the middle of a job loses nothing and alerts once.

Its own local stack: short job visibility (so a killed worker's job returns in
seconds) and a near-zero HIGH threshold (so the real CT, with its mass, triages HIGH and the alert
path is exercised). The real CT is used because its analysis lasts long enough
to interrupt it reliably.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from ctfleet.local.stack import LocalStack
from ctfleet.settings import Settings
from ctfleet.cli.client import ApiClient
from stack_helpers import alerts_for, wait_processing

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


def test_spot_notice_hands_the_job_back_and_another_instance_finishes_it(res_stack, real_ct_files):
    api = ApiClient(res_stack.api_url + "/api", token=res_stack.token("spot", "clinician"))
    up = api.upload("spot", real_ct_files)
    key = wait_processing(api, up.upload_id, poll_s=0.1)["study_key"]
    first = res_stack.workers[0]
    res_stack.imds[0].interrupt()
    assert first.wait(timeout=60) == 0, "the reclaimed worker stops by itself"
    assert api.get_study(key)["status"] == "PROCESSING"  # handed back, not finished by the dying worker
    res_stack.start_worker(0)  # the Auto Scaling group's replacement instance
    state = api.wait(up.upload_id, timeout_s=180)
    record = res_stack.record(state["study"]["study_key"])
    assert record["status"] == "DONE" and record["attempts"] == 2
    assert record["worker_instance"] != "" and record["triage_level"] == "HIGH"
    # The reclaimed instance's time on the study is charged to it, for finance's fully loaded cost.
    assert record["interrupted_s"] > 0 and record["interrupted_nano_usd"] >= 0
    assert alerts_for(res_stack, key, seconds=6.0) == 1


def test_kill_9_mid_job_loses_nothing_and_alerts_once(res_stack, real_ct_files):
    api = ApiClient(res_stack.api_url + "/api", token=res_stack.token("crash", "clinician"))
    up = api.upload("crash", real_ct_files)
    key = wait_processing(api, up.upload_id, poll_s=0.1)["study_key"]
    victim = res_stack.workers[0]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    res_stack.start_worker(0)
    state = api.wait(up.upload_id, timeout_s=240)
    record = state["study"]
    assert record["status"] == "DONE" and record["attempts"] == 2
    assert alerts_for(res_stack, key, seconds=6.0) == 1
