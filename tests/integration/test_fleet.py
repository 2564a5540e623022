"""The fleet from zero and back: the scaler sizes the Auto Scaling group in moto, the local fleet
boots one real worker process per instance, and scale-in never stops a running job."""

from __future__ import annotations

import functools
import time

import pytest

from ctfleet.cli.client import ApiClient
from ctfleet.dev.phantom import from_preset
from ctfleet.dev.synthetic import series_to_datasets
from ctfleet.intake import dataset_to_bytes
from ctfleet.local.stack import LocalStack
from ctfleet.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IDLE_GRACE_S = 8.0


@pytest.fixture(scope="module")
def fleet_stack(tmp_path_factory):
    # A two-minute backfill horizon: ten studies at 2.5 per minute per machine want both machines.
    settings = Settings(stack="ctffleet", facilities=("demo",), fleet_idle_grace_s=IDLE_GRACE_S,
                        fleet_backfill_horizon_s=120.0)
    # A long schedule: growing from zero within seconds can only be ingest's nudge.
    with LocalStack(settings, fleet_max=2, boot_s=2.0, scaler_interval_s=4.0,
                    worker_log=tmp_path_factory.mktemp("fleet") / "workers.log") as stack:
        yield stack


@pytest.fixture(scope="module")
def api(fleet_stack) -> ApiClient:
    return ApiClient(fleet_stack.api_url + "/api", token=fleet_stack.token("demo", "clinician"))


@functools.lru_cache(maxsize=4)
def phantom(seed: int):
    return from_preset("clean", seed=seed)


def study(n: int) -> list[tuple[str, bytes]]:
    """A small synthetic chest study of its own (new UIDs each call; one of four phantoms)."""
    p = phantom(n % 4)
    datasets = series_to_datasets(p.hu[::2], (p.spacing_mm[0] * 2, *p.spacing_mm[1:]), patient_id=f"FLEET-{n}")
    return [(f"IM{i:04d}.dcm", dataset_to_bytes(ds)) for i, ds in enumerate(datasets)]


def group(stack: LocalStack) -> dict:
    return stack.clients.autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[stack.settings.fleet.group_name])["AutoScalingGroups"][0]


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_one_urgent_study_grows_the_fleet_from_zero_and_it_shrinks_back_after_the_idle_grace(fleet_stack, api):
    assert group(fleet_stack)["DesiredCapacity"] == 0 and fleet_stack.fleet.size == 0
    up = api.upload("demo", study(0))
    wait_for(lambda: api.get_upload(up.upload_id)["status"] == "QUEUED", 60, "ingest")
    queued_at = time.monotonic()
    wait_for(lambda: group(fleet_stack)["DesiredCapacity"] == 1, 3.5, "the nudged scaler pass")
    assert time.monotonic() - queued_at < 3.5
    state = api.wait(up.upload_id, timeout_s=120)
    assert state["study"]["status"] == "DONE"
    instance = fleet_stack.record(state["study"]["study_key"])["worker_instance"]
    assert instance in {i["InstanceId"] for i in group(fleet_stack)["Instances"]}
    wait_for(lambda: group(fleet_stack)["DesiredCapacity"] == 0, IDLE_GRACE_S + 20, "scale-in to zero")
    wait_for(lambda: fleet_stack.fleet.size == 0, 40, "the last worker to stop")
    # The instance's cost ledger entry: booted (EC2's launch time to the worker's readiness), busy, closed.
    from ctfleet.aws.ledger import Ledger
    from ctfleet.aws.records import Table

    ledger = Ledger(Table(fleet_stack.clients.dynamodb, fleet_stack.settings.ledger_table))
    entry = wait_for(lambda: (e := ledger.get(instance)) and "closed_at" in e and e,
                     30, "the ledger entry to close")
    assert entry["boot_s"] >= 2.0 and entry["jobs"] == 1 and entry["busy_s"] > 0
    assert entry["closed_because"] == "terminated" and entry["idle_s"] > 0


def test_a_backfill_runs_on_two_workers_and_an_urgent_study_overtakes_it(fleet_stack, api):
    # The backlog must exist when the urgent job is queued, however fast the workers drain and
    # however slowly ingest runs beside them (on a 2-core CI machine two busy workers starved
    # ingest until they had emptied the queue). So the machines are held at boot until the whole
    # backlog is queued, then let up; the urgent study is completed once both are at work.
    backfill = [api.send("demo", study(10 + n), priority="backfill") for n in range(12)]
    urgent = api.send("demo", study(99))
    booting = fleet_stack.fleet.boot_s
    fleet_stack.fleet.boot_s = 600.0
    try:
        for sent in backfill:
            api.complete(sent.upload_id)
        wait_for(lambda: all(api.get_upload(b.upload_id)["status"] == "QUEUED" for b in backfill), 120,
                 "the backlog to be queued")
        assert fleet_stack.fleet.size == 0, "no machine was up while the backlog was queued"
    finally:
        fleet_stack.fleet.boot_s = booting
    wait_for(lambda: fleet_stack.fleet.size == 2, 60, "two workers for the backlog")
    keys = [api.get_upload(b.upload_id)["study_key"] for b in backfill]
    wait_for(lambda: sum(api.get_study(k)["status"] != "QUEUED" for k in keys) >= 2, 120,
             "both workers to be at work on the backlog")
    api.complete(urgent.upload_id)
    urgent_done = api.wait(urgent.upload_id, timeout_s=180)["study"]
    assert urgent_done["status"] == "DONE"
    finals = [fleet_stack.record(api.wait(b.upload_id, timeout_s=300)["study"]["study_key"]) for b in backfill]
    assert all(s["status"] == "DONE" for s in finals)
    assert len({s["worker_instance"] for s in finals}) == 2, "the backlog was shared by two instances"
    # Once the urgent job was queued, the next machine to ask for work took it: no backfill job
    # started between its queueing and its start, and backfill was still waiting behind it.
    overtaken = [s for s in finals if urgent_done["queued_at"] + 0.5 < s["started_at"] < urgent_done["started_at"]]
    assert not overtaken, "a backfill job started while the urgent one waited"
    assert any(s["started_at"] > urgent_done["started_at"] for s in finals), "no backfill was left behind it"


def test_lowering_the_desired_capacity_during_a_job_does_not_stop_it(fleet_stack, api):
    # From a fleet at rest: an idle machine of the test before could be scaled in just as it takes
    # the job, and an instance leaving its group cannot be protected (it drains instead).
    wait_for(lambda: group(fleet_stack)["DesiredCapacity"] == 0 and fleet_stack.fleet.size == 0,
             IDLE_GRACE_S + 60, "the fleet to come to rest")
    up = api.upload("demo", study(200))
    key = wait_for(lambda: api.get_upload(up.upload_id).get("study_key"), 60, "ingest")
    wait_for(lambda: api.get_study(key)["status"] == "PROCESSING", 120, "the job to start")
    instance = fleet_stack.record(key)["worker_instance"]
    wait_for(lambda: any(i["InstanceId"] == instance and i["ProtectedFromScaleIn"]
                         for i in group(fleet_stack)["Instances"]), 10, "scale-in protection")
    fleet_stack.clients.autoscaling.set_desired_capacity(AutoScalingGroupName=fleet_stack.settings.fleet.group_name,
                                                         DesiredCapacity=0)
    assert instance in {i["InstanceId"] for i in group(fleet_stack)["Instances"]}, "a protected instance stays"
    state = api.wait(up.upload_id, timeout_s=120)
    assert state["study"]["status"] == "DONE" and state["study"]["attempts"] == 1
