"""The spot GPU Auto Scaling group: its state for the scaler, its capacity, an instance's protection."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ctfleet.contracts import Reason
from ctfleet.errors import CtfleetError, NotFound

from .failures import retrying, sorted_errors

log = logging.getLogger(__name__)

LAST_WORK_TAG = "ctfleet:last-work-at"  # epoch seconds: when a queue last held work (the idle clock)
BOOTING = frozenset({"Pending", "Pending:Wait", "Pending:Proceed"})
SPOT_SHORT = ("InsufficientInstanceCapacity", "Insufficient capacity", "no Spot capacity")


@dataclass(frozen=True)
class Instance:
    instance_id: str
    lifecycle_state: str
    protected: bool
    instance_type: str


@dataclass(frozen=True)
class GroupView:
    """What ``describe_auto_scaling_groups`` says of the group, and its recent launch failures."""

    desired: int
    max_size: int
    instances: tuple[Instance, ...]
    last_work_at: float | None
    spot_short: bool
    on_demand_base: int | None  # None: the group has no mixed-instances policy

    @property
    def in_service(self) -> tuple[Instance, ...]:
        return tuple(i for i in self.instances if i.lifecycle_state == "InService")

    @property
    def booting(self) -> tuple[Instance, ...]:
        return tuple(i for i in self.instances if i.lifecycle_state in BOOTING)


class FleetGroup:
    """One Auto Scaling group by name.

    Parameters
    ----------
    autoscaling : boto3 Auto Scaling client
    name : str
    """

    def __init__(self, autoscaling: Any, name: str) -> None:
        self.autoscaling = autoscaling
        self.name = name

    @retrying
    def view(self) -> GroupView:
        """The group now; :class:`~ctfleet.errors.NotFound` if it does not exist."""
        with sorted_errors("autoscaling:describe"):
            groups = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.name])
            activities = self.autoscaling.describe_scaling_activities(AutoScalingGroupName=self.name, MaxRecords=5)
        if not groups.get("AutoScalingGroups"):
            raise NotFound(Reason.NOT_FOUND, f"Auto Scaling group {self.name} does not exist")
        g = groups["AutoScalingGroups"][0]
        tags = {t["Key"]: t["Value"] for t in g.get("Tags", [])}
        distribution = (g.get("MixedInstancesPolicy") or {}).get("InstancesDistribution")
        return GroupView(
            desired=int(g["DesiredCapacity"]), max_size=int(g["MaxSize"]),
            instances=tuple(Instance(i["InstanceId"], i["LifecycleState"], bool(i.get("ProtectedFromScaleIn")),
                                     str(i.get("InstanceType", ""))) for i in g.get("Instances", [])),
            last_work_at=float(tags[LAST_WORK_TAG]) if LAST_WORK_TAG in tags else None,
            spot_short=_spot_short(activities.get("Activities", [])),
            on_demand_base=int(distribution.get("OnDemandBaseCapacity", 0)) if distribution is not None else None,
        )

    @retrying
    def set_capacity(self, capacity: int, *, honor_cooldown: bool) -> None:
        """Set the desired capacity; AWS scales in only unprotected instances."""
        with sorted_errors("autoscaling:set_desired_capacity"):
            self.autoscaling.set_desired_capacity(AutoScalingGroupName=self.name, DesiredCapacity=capacity,
                                                  HonorCooldown=honor_cooldown)

    @retrying
    def set_on_demand_base(self, base: int) -> None:
        """On-demand machines before any spot one (the fallback when spot capacity is short)."""
        with sorted_errors("autoscaling:update"):
            self.autoscaling.update_auto_scaling_group(
                AutoScalingGroupName=self.name,
                MixedInstancesPolicy={"InstancesDistribution": {"OnDemandBaseCapacity": base}})

    @retrying
    def mark_work(self, at: float) -> None:
        """Restart the idle clock: a queue held work at ``at``."""
        with sorted_errors("autoscaling:tags"):
            self.autoscaling.create_or_update_tags(Tags=[{
                "ResourceId": self.name, "ResourceType": "auto-scaling-group", "Key": LAST_WORK_TAG,
                "Value": f"{at:.3f}", "PropagateAtLaunch": False}])

    @retrying
    def replace_instance(self, instance_id: str) -> None:
        """Terminate an unhealthy instance; the group launches a replacement (desired stays)."""
        with sorted_errors("autoscaling:terminate"):
            self.autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=instance_id,
                                                                     ShouldDecrementDesiredCapacity=False)

    @retrying
    def complete_termination(self, instance_id: str, hook: str) -> None:
        """Let the termination go on: this instance's worker has finished or handed its job back."""
        with sorted_errors("autoscaling:lifecycle"):
            self.autoscaling.complete_lifecycle_action(LifecycleHookName=hook, AutoScalingGroupName=self.name,
                                                       LifecycleActionResult="CONTINUE", InstanceId=instance_id)

    @retrying
    def protect(self, instance_id: str, protected: bool) -> None:
        """Scale-in protection of one instance: on while it runs a job, off when idle."""
        with sorted_errors("autoscaling:protection"):
            self.autoscaling.set_instance_protection(InstanceIds=[instance_id], AutoScalingGroupName=self.name,
                                                     ProtectedFromScaleIn=protected)


def _spot_short(activities: Sequence[dict[str, Any]]) -> bool:
    """True when the latest launch activity failed for want of (spot) capacity."""
    for activity in sorted(activities, key=lambda a: str(a.get("StartTime", "")), reverse=True):
        if activity.get("StatusCode") in ("Successful", "InProgress", "PreInService"):
            return False
        if activity.get("StatusCode") in ("Failed", "Cancelled", "WaitingForSpotInstanceId"):
            return any(s in str(activity.get("StatusMessage", "")) for s in SPOT_SHORT)
    return False


class Protection:
    """An instance's own scale-in protection, switched only when it changes.

    Outside an Auto Scaling group (a laptop, a test) the first call fails; the
    worker logs it once and runs on without protection.
    """

    def __init__(self, group: FleetGroup | None, instance_id: str) -> None:
        self.group = group
        self.instance_id = instance_id
        self.state: bool | None = None

    def set(self, protected: bool) -> None:
        if self.group is None or self.state == protected:
            return
        try:
            self.group.protect(self.instance_id, protected)
            self.state = protected
        except CtfleetError as exc:
            log.warning("scale-in protection unavailable; running without it",
                        extra={"instance": self.instance_id, "reason": exc.reason, "detail": exc.detail})
            self.group = None


def launch_time(ec2: Any, instance_id: str) -> float | None:
    """When EC2 launched the instance (epoch seconds); None outside EC2 (a laptop, an always-on local worker)."""
    try:
        with sorted_errors("ec2:describe_instances"):
            reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return float(reservations[0]["Instances"][0]["LaunchTime"].timestamp())
    except (CtfleetError, LookupError):
        return None


@retrying
def oldest_message_age_s(cloudwatch: Any, queue_name: str, *, at: float) -> float:
    """The age of the queue's oldest message (CloudWatch ``ApproximateAgeOfOldestMessage``); 0 without data."""
    with sorted_errors("cloudwatch:sqs-age"):
        out = cloudwatch.get_metric_statistics(
            Namespace="AWS/SQS", MetricName="ApproximateAgeOfOldestMessage",
            Dimensions=[{"Name": "QueueName", "Value": queue_name}],
            StartTime=at - 300, EndTime=at, Period=60, Statistics=["Maximum"])
    points = sorted(out.get("Datapoints", []), key=lambda d: d["Timestamp"])
    return float(points[-1]["Maximum"]) if points else 0.0
