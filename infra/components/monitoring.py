"""What the operators watch: alarms on the operator topic, and one dashboard.

* **Dead letters**: any message in a dead-letter queue (a job, an upload notification or an alert
  that failed its retries) raises an alarm at once.
* **Urgent latency**: the oldest urgent message older than ``urgent_age_s`` for three minutes
  (the fleet is not keeping up, or cannot start).
* **Worker errors**: ``ERROR`` lines in the workers' JSON logs (a metric filter on their log
  group), any in five minutes.
* **Spot interruptions**: EC2's two-minute warnings go to the operator topic as they happen (an
  EventBridge rule), and an alarm fires when more than ``spot_interruptions_per_hour`` arrive in an
  hour (the group should move to other types or zones; the scaler falls back to on-demand for
  urgent work).

The operator topic is not the triage alerts topic: clinicians never receive operations noise. It
is encrypted with a customer key that CloudWatch alarms and EventBridge may use to publish.
Imports pulumi, pulumi_aws, ``infra.components.keys`` and ``infra.components.policies``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.components.keys import customer_key
from infra.components.policies import account_administers, policy_document, statement

SPOT_WARNING = "EC2 Spot Instance Interruption Warning"


@dataclass(frozen=True)
class MonitoringArgs:
    """What :class:`Monitoring` declares.

    Attributes
    ----------
    stack
        Name prefix (``Settings.stack``).
    topic_name
        The operator topic (``Settings.operations_topic``).
    region
        For the dashboard's widgets.
    job_queues
        Queue names whose depth the dashboard shows (urgent, backfill, ingest).
    urgent_queue
        The urgent queue's name.
    dead_letter_queues
        Every dead-letter queue's name.
    worker_log_group
        The workers' log group (declared by the fleet; ``None``: no fleet, no worker alarm).
    group_name
        The Auto Scaling group's name, for the dashboard.
    urgent_age_s, spot_interruptions_per_hour
        Alarm thresholds.
    account_id, partition
        For the topic key's policy.
    tags
        Tags on everything.
    """

    stack: str
    region: str
    topic_name: str
    job_queues: Sequence[str]
    urgent_queue: str
    dead_letter_queues: Sequence[str]
    group_name: str
    account_id: pulumi.Input[str]
    worker_log_group: pulumi.Input[str] | None = None
    partition: pulumi.Input[str] = "aws"
    urgent_age_s: int = 300
    spot_interruptions_per_hour: int = 3
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.urgent_age_s < 60:
            raise ValueError(f"urgent_age_s {self.urgent_age_s}: SQS reports the age once a minute")


class Monitoring(pulumi.ComponentResource):
    """The operator topic and its key, the alarms, the spot-warning rule and the dashboard.

    Attributes
    ----------
    topic
        The operator topic.
    alarms
        The alarms by short name.
    """

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ctfleet:infra:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        topic_name = args.topic_name
        key = customer_key(
            name, description=f"ctfleet operator topic {topic_name}", alias=f"alias/{topic_name}", tags=tags, opts=child,
            policy=policy_document(
                account_administers(args.partition, args.account_id),
                statement("AlarmsAndEventsPublish", "Allow",
                          {"Service": ["cloudwatch.amazonaws.com", "events.amazonaws.com"]},
                          ["kms:Decrypt", "kms:GenerateDataKey*"], "*",
                          {"StringEquals": {"aws:SourceAccount": args.account_id}}),
            ))
        self.topic = aws.sns.Topic(f"{name}-topic", name=topic_name, kms_master_key_id=key.arn, tags=tags, opts=child)
        aws.sns.TopicPolicy(f"{name}-topic-policy", arn=self.topic.arn, policy=policy_document(
            statement("AlarmsAndEventsPublish", "Allow",
                      {"Service": ["cloudwatch.amazonaws.com", "events.amazonaws.com"]}, "sns:Publish", self.topic.arn,
                      {"StringEquals": {"aws:SourceAccount": args.account_id}})), opts=child)
        actions = [self.topic.arn]
        self.alarms: dict[str, aws.cloudwatch.MetricAlarm] = {}

        def alarm(short: str, description: str, **kw: object) -> None:
            self.alarms[short] = aws.cloudwatch.MetricAlarm(
                f"{name}-{short}", name=f"{args.stack}-{short}", alarm_description=description,
                alarm_actions=actions, ok_actions=actions, treat_missing_data="notBreaching", tags=tags, opts=child,
                **kw)  # type: ignore[arg-type]

        for dlq in args.dead_letter_queues:
            alarm(f"dead-letters-{dlq.removeprefix(args.stack + '-')}", f"messages in {dlq}: work that failed its retries",
                  namespace="AWS/SQS", metric_name="ApproximateNumberOfMessagesVisible",
                  dimensions={"QueueName": dlq}, statistic="Maximum", period=60, evaluation_periods=1,
                  threshold=0, comparison_operator="GreaterThanThreshold")
        alarm("urgent-waiting", f"the oldest urgent study has waited over {args.urgent_age_s} s",
              namespace="AWS/SQS", metric_name="ApproximateAgeOfOldestMessage",
              dimensions={"QueueName": args.urgent_queue}, statistic="Maximum", period=60, evaluation_periods=3,
              threshold=args.urgent_age_s, comparison_operator="GreaterThanThreshold")
        metrics_ns = f"ctfleet/{args.stack}"
        if args.worker_log_group is not None:
            aws.cloudwatch.LogMetricFilter(
                f"{name}-worker-errors", name=f"{args.stack}-worker-errors", log_group_name=args.worker_log_group,
                pattern='{ $.level = "ERROR" }',
                metric_transformation=aws.cloudwatch.LogMetricFilterMetricTransformationArgs(
                    name="WorkerErrors", namespace=metrics_ns, value="1", default_value="0"),
                opts=child)
            alarm("worker-errors", "ERROR lines in the workers' logs", namespace=metrics_ns, metric_name="WorkerErrors",
                  statistic="Sum", period=300, evaluation_periods=1, threshold=0,
                  comparison_operator="GreaterThanThreshold")
        rule = aws.cloudwatch.EventRule(
            f"{name}-spot-warnings", name=f"{args.stack}-spot-warnings",
            description="EC2 spot interruption warnings, to the operator topic",
            event_pattern=json.dumps({"source": ["aws.ec2"], "detail-type": [SPOT_WARNING]}), tags=tags, opts=child)
        aws.cloudwatch.EventTarget(f"{name}-spot-warnings", rule=rule.name, arn=self.topic.arn, opts=child)
        alarm("spot-interruptions", f"more than {args.spot_interruptions_per_hour} spot interruptions in an hour",
              namespace="AWS/Events", metric_name="TriggeredRules", dimensions={"RuleName": rule.name},
              statistic="Sum", period=3600, evaluation_periods=1, threshold=args.spot_interruptions_per_hour,
              comparison_operator="GreaterThanThreshold")
        self.dashboard = aws.cloudwatch.Dashboard(
            f"{name}-dashboard", dashboard_name=f"{args.stack}-operations",
            dashboard_body=pulumi.Output.from_input(rule.name).apply(lambda r: json.dumps(_dashboard(args, r))),
            opts=child)
        self.register_outputs({"topic_arn": self.topic.arn})


def _dashboard(args: MonitoringArgs, spot_rule: str) -> dict[str, object]:
    """The operations dashboard: queues, dead letters, the fleet, worker errors, spot warnings."""
    def widget(title: str, metrics: list[list[object]], stat: str = "Maximum") -> dict[str, object]:
        return {"type": "metric", "width": 12, "height": 6,
                "properties": {"title": title, "region": args.region, "stat": stat, "period": 60,
                               "metrics": metrics}}

    return {"widgets": [
        widget("Messages waiting", [["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", q]
                                    for q in args.job_queues]),
        widget("Oldest urgent message (s)", [["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName",
                                              args.urgent_queue]]),
        widget("Dead letters", [["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", q]
                                for q in args.dead_letter_queues]),
        widget("GPU fleet", [["AWS/AutoScaling", m, "AutoScalingGroupName", args.group_name]
                             for m in ("GroupDesiredCapacity", "GroupInServiceInstances")]),
        widget("Worker errors", [[f"ctfleet/{args.stack}", "WorkerErrors"]], stat="Sum"),
        widget("Spot interruption warnings", [["AWS/Events", "TriggeredRules", "RuleName", spot_rule]], stat="Sum"),
    ]}
