"""The scaler's policy, case by case (issue 9's table), as a pure function."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from dispatcher.scaler import Decision, FleetState, GroupState, QueueState, desired_capacity

NOW = 1_800_000_000.0
EMPTY = QueueState(0, 0, 0.0)


def state(*, urgent=EMPTY, backfill=EMPTY, desired=0, in_service=None, protected=0, booting=0, max_size=10,
          spot_short=False, last_work_at=None, idle_grace_s=300.0, throughput=2.5) -> FleetState:
    return FleetState(
        urgent=urgent, backfill=backfill,
        group=GroupState(desired=desired, in_service=desired if in_service is None else in_service,
                         protected=protected, booting=booting, max_size=max_size, spot_short=spot_short),
        throughput_per_min=throughput, boot_s=60.0, idle_grace_s=idle_grace_s, backfill_horizon_s=3600.0,
        urgent_reserve_fraction=0.1, last_work_at=last_work_at, now=NOW)


def test_the_first_urgent_message_on_a_fleet_at_zero_gives_one_machine_in_the_same_pass():
    d = desired_capacity(state(urgent=QueueState(1, 0)))
    assert d.capacity == 1 and not d.hold and "urgent 1" in d.reason


def test_work_in_flight_is_never_scaled_in():
    # Two backfill jobs running, nothing waiting: the horizon alone would ask for 1 machine.
    d = desired_capacity(state(backfill=QueueState(0, 2), desired=2, protected=2, last_work_at=NOW))
    assert d.capacity == 2 and "held at 2" in d.reason


def test_no_scale_in_while_messages_wait_for_a_machine():
    # Two idle machines, one urgent study just queued: one of them is about to receive it.
    d = desired_capacity(state(urgent=QueueState(1, 0), desired=2, last_work_at=NOW))
    assert d.capacity == 2 and "wait" in d.reason
    # Once it runs and nothing waits, the spare machine may go.
    assert desired_capacity(state(urgent=QueueState(0, 1), desired=2, protected=1, last_work_at=NOW)).capacity == 1


def test_never_fewer_machines_than_busy_instances():
    d = desired_capacity(state(desired=3, protected=3, last_work_at=NOW - 10_000))
    assert d.capacity == 3


def test_backfill_is_sized_to_drain_within_the_horizon():
    # 600 studies at 2.5 per minute per machine within 60 minutes: 4 machines.
    assert desired_capacity(state(backfill=QueueState(600, 0))).capacity == 4
    # The same backlog, half an hour old: 30 minutes left, 8 machines.
    assert desired_capacity(state(backfill=QueueState(600, 0, 1800.0))).capacity == 8
    # A handful of studies still gets a machine.
    assert desired_capacity(state(backfill=QueueState(3, 0))).capacity == 1


def test_backfill_leaves_urgent_headroom_below_the_maximum():
    big = QueueState(100_000, 0)
    # Of 10 machines, backfill may take 9: one is always free (or booting) for urgent work.
    assert desired_capacity(state(backfill=big, max_size=10)).capacity == 9
    # An urgent study arrives: it gets its machine, and the reserve stays free for the next one.
    d = desired_capacity(state(backfill=big, urgent=QueueState(1, 0), desired=9, max_size=10))
    assert d.capacity == 9 and "urgent 1 + backfill 8" in d.reason
    # A group of 2 is too small for a reserve: backfill uses both.
    assert desired_capacity(state(backfill=QueueState(10, 0), max_size=2, throughput=0.1)).capacity == 2


def test_idle_machines_stay_through_the_grace_then_go_to_zero():
    within = desired_capacity(state(desired=2, last_work_at=NOW - 100))
    assert within.capacity == 2 and "grace" in within.reason
    after = desired_capacity(state(desired=2, last_work_at=NOW - 301))
    assert after.capacity == 0 and "zero" in after.reason
    never = desired_capacity(state(desired=1, last_work_at=None))
    assert never.capacity == 0


def test_capacity_never_exceeds_the_maximum():
    d = desired_capacity(state(urgent=QueueState(7, 0), max_size=5))
    assert d.capacity == 5 and "capped" in d.reason


def test_spot_shortage_asks_for_on_demand_machines_for_urgent_work_only():
    short = desired_capacity(state(urgent=QueueState(2, 0), backfill=QueueState(50, 0), spot_short=True))
    assert short.on_demand_base == 2 and "on demand" in short.reason
    assert desired_capacity(state(backfill=QueueState(50, 0), spot_short=True)).on_demand_base == 0
    assert desired_capacity(state(urgent=QueueState(2, 0))).on_demand_base == 0


@pytest.mark.parametrize("broken", [
    {"urgent": QueueState(-1, 0)},
    {"backfill": QueueState(1, 0, math.nan)},
    {"throughput": 0.0},
    {"urgent": QueueState(None, 0)},  # type: ignore[arg-type]  # a metric that did not arrive
])
def test_malformed_or_missing_metrics_hold_the_current_capacity(broken):
    d = desired_capacity(state(desired=3, **broken))
    assert d.hold and d.capacity == 3 and d.reason.startswith("hold")


def test_a_decision_is_one_json_line_with_its_inputs():
    d = desired_capacity(state(urgent=QueueState(1, 0)))
    line = d.to_json()
    assert "\n" not in line
    data = json.loads(line)
    assert data["capacity"] == 1 and data["inputs"]["urgent"]["visible"] == 1
    assert isinstance(d, Decision) and replace(d, capacity=2).capacity == 2
