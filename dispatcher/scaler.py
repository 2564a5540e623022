"""The scaler: how many spot GPU instances the fleet should have, from the queues and the group.

:func:`desired_capacity` is the policy, a pure function of a :class:`FleetState`;
:func:`handle` is the shell: it reads the queues and the Auto Scaling group,
decides, logs the :class:`Decision` as one JSON line and sets the group's desired
capacity. It runs on a one-minute schedule and on a nudge that ingest sends
right after it queues urgent work.

The rules, in order:

1. malformed or missing metrics: hold the current capacity (never guess);
2. urgent work: one machine per urgent study waiting or running, so the first
   urgent message on a fleet at zero gives capacity 1 in the same pass;
3. backfill: enough machines to drain the backlog within the horizon (less the
   age of its oldest message), never more than the maximum less the urgent
   machines and the urgent reserve (``floor(max * urgent_reserve_fraction)``),
   so urgent work finds a machine free or booting while a backfill runs;
4. work in flight counts: never fewer than the busy (scale-in protected)
   instances, nor than the jobs in flight; and no scale-in while messages wait
   (an idle machine may be receiving one before its protection is on);
5. no work: keep the machines through the idle grace after the last work, then zero;
6. at most the group's maximum;
7. spot capacity short (the group reports unfulfilled capacity, an
   ``InsufficientInstanceCapacity`` activity) while urgent work waits: the
   decision asks for on-demand base capacity for the urgent machines; the group's
   mixed-instances policy then launches those on demand, and spot again once the
   shortage is over (the base goes back to 0 when no urgent work is short).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ctfleet.aws.fleet import GroupView, oldest_message_age_s
from ctfleet.settings import QueueSpec

from .deps import HandlerDeps
from .runtime import deps as runtime_deps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueState:
    """One job queue's backlog: messages waiting, messages being worked on, the oldest's age."""

    visible: int
    in_flight: int
    oldest_age_s: float = 0.0

    @property
    def total(self) -> int:
        return self.visible + self.in_flight


@dataclass(frozen=True)
class GroupState:
    """The Auto Scaling group as the scaler sees it."""

    desired: int
    in_service: int
    protected: int  # instances running a job (scale-in protection on)
    booting: int  # launched, not yet InService
    max_size: int
    spot_short: bool = False  # the last launch failed for want of spot capacity
    instance_type: str = ""


@dataclass(frozen=True)
class FleetState:
    """Everything the policy decides from; times are epoch seconds."""

    urgent: QueueState
    backfill: QueueState
    group: GroupState
    throughput_per_min: float  # studies per minute per instance
    boot_s: float
    idle_grace_s: float
    backfill_horizon_s: float
    urgent_reserve_fraction: float
    last_work_at: float | None  # when a queue last held work (None: never seen)
    now: float


@dataclass(frozen=True)
class Decision:
    """The capacity to set, why, with the inputs; ``on_demand_base`` > 0 asks for on-demand machines."""

    capacity: int
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)
    on_demand_base: int = 0
    hold: bool = False  # the inputs were not trusted: capacity is the current one

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)


def _problems(state: FleetState) -> list[str]:
    """What makes the inputs untrustworthy; empty when they are fine."""
    numbers = {
        "urgent.visible": state.urgent.visible, "urgent.in_flight": state.urgent.in_flight,
        "backfill.visible": state.backfill.visible, "backfill.in_flight": state.backfill.in_flight,
        "urgent.oldest_age_s": state.urgent.oldest_age_s, "backfill.oldest_age_s": state.backfill.oldest_age_s,
        "group.desired": state.group.desired, "group.in_service": state.group.in_service,
        "group.protected": state.group.protected, "group.booting": state.group.booting,
        "group.max_size": state.group.max_size, "boot_s": state.boot_s, "idle_grace_s": state.idle_grace_s,
    }
    bad = [k for k, v in numbers.items()
           if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0]
    if not (isinstance(state.throughput_per_min, (int, float)) and state.throughput_per_min > 0):
        bad.append("throughput_per_min")
    if not state.backfill_horizon_s > 0:
        bad.append("backfill_horizon_s")
    return bad


def backfill_machines(state: FleetState) -> int:
    """Machines that drain the backfill backlog within what is left of the horizon."""
    backlog = state.backfill.total
    if backlog == 0:
        return 0
    horizon_min = max(state.backfill_horizon_s - state.backfill.oldest_age_s, 60.0) / 60.0
    return max(1, math.ceil(backlog / (state.throughput_per_min * horizon_min)))


def desired_capacity(state: FleetState) -> Decision:
    """The fleet's desired capacity for ``state`` (the rules are in the module docstring)."""
    group = state.group
    inputs = asdict(state)
    bad = _problems(state)
    if bad:
        return Decision(group.desired if isinstance(group.desired, int) and group.desired >= 0 else 0,
                        f"hold: malformed or missing metrics ({', '.join(bad)})", inputs, hold=True)
    urgent = state.urgent.total
    reserve = math.floor(group.max_size * state.urgent_reserve_fraction)
    backfill_cap = max(0, group.max_size - urgent - reserve)
    backfill = min(backfill_machines(state), backfill_cap)
    want, reason = urgent + backfill, f"urgent {urgent} + backfill {backfill} (cap {backfill_cap})"
    floor = max(group.protected, state.urgent.in_flight + state.backfill.in_flight)
    if want < floor:
        want, reason = floor, f"{reason}; held at {floor} busy or in flight"
    waiting = state.urgent.visible + state.backfill.visible
    if want < group.desired and waiting:
        # An idle machine is about to receive one of them: scaling in now could stop it mid-receive.
        want, reason = group.desired, f"{reason}; no scale-in while {waiting} message(s) wait"
    if want == 0 and group.desired > 0:
        idle_for = state.now - state.last_work_at if state.last_work_at is not None else math.inf
        if idle_for < state.idle_grace_s:
            want, reason = group.desired, f"idle {idle_for:.0f} s of a {state.idle_grace_s:.0f} s grace: keep"
        else:
            reason = f"idle {idle_for:.0f} s: back to zero"
    capacity = min(want, group.max_size)
    if capacity < want:
        reason += f"; capped at the maximum {group.max_size}"
    on_demand = min(urgent, capacity) if group.spot_short and urgent > 0 else 0
    if on_demand:
        reason += f"; spot capacity short: {on_demand} on demand for urgent work"
    return Decision(capacity, reason, inputs, on_demand_base=on_demand)


# -- the shell ---------------------------------------------------------------------------


def read_state(deps: HandlerDeps, *, at: float) -> tuple[FleetState, GroupView]:
    """The queues and the group, as the policy needs them."""
    s = deps.settings
    spec = s.fleet
    view = deps.fleet.view()
    instance_type = next((i.instance_type for i in view.instances if i.instance_type), spec.instance_types[0])

    def queue(q: QueueSpec) -> QueueState:
        visible, in_flight = deps.queue(q.name).depth()
        return QueueState(visible, in_flight, oldest_message_age_s(deps.clients.cloudwatch, q.name, at=at))

    state = FleetState(
        urgent=queue(s.urgent_queue), backfill=queue(s.backfill_queue),
        group=GroupState(desired=view.desired, in_service=len(view.in_service),
                         protected=sum(1 for i in view.instances if i.protected), booting=len(view.booting),
                         max_size=view.max_size, spot_short=view.spot_short, instance_type=instance_type),
        throughput_per_min=spec.throughput_per_min(instance_type), boot_s=spec.boot_s,
        idle_grace_s=spec.idle_grace_s, backfill_horizon_s=spec.backfill_horizon_s,
        urgent_reserve_fraction=spec.urgent_reserve_fraction, last_work_at=view.last_work_at, now=at,
    )
    return state, view


def scale(deps: HandlerDeps, *, dry_run: bool = False, at: float | None = None) -> Decision:
    """One scaler pass: read, decide, log the decision as one JSON line, apply it (unless ``dry_run``)."""
    t = time.time() if at is None else at
    state, view = read_state(deps, at=t)
    decision = desired_capacity(state)
    log.info("scaler decision", extra={"decision": json.loads(decision.to_json()), "dry_run": dry_run})
    if dry_run or decision.hold:
        return decision
    if state.urgent.total or state.backfill.total:
        deps.fleet.mark_work(t)
    if decision.capacity != view.desired:
        # Scale out at once (urgent work waits on it); scale in honours the group's cooldown.
        deps.fleet.set_capacity(decision.capacity, honor_cooldown=decision.capacity < view.desired)
    if view.on_demand_base is not None and view.on_demand_base != decision.on_demand_base:
        deps.fleet.set_on_demand_base(decision.on_demand_base)
    return decision


def handle(event: dict[str, Any], deps: HandlerDeps) -> dict[str, Any]:
    """The schedule's tick or ingest's nudge (an SQS batch): one pass either way."""
    return json.loads(scale(deps).to_json())


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return handle(event, runtime_deps())
