"""Alarms on the operator topic and the operations dashboard."""

from __future__ import annotations

from infra.preview import PLACEHOLDER_CODE

import json

import pytest
from pulumi_mocks import ACCOUNT, Program, run_program

from ctfleet.settings import Settings

pytestmark = pytest.mark.filterwarnings(r"ignore:.*deprecated in favor of:DeprecationWarning:pulumi_aws\..*")

ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
SETTINGS = Settings(stack="ctfleet-m1", region="ap-south-1")


@pytest.fixture(scope="module")
def program() -> Program:
    from infra.__main__ import build

    return run_program(lambda: build(SETTINGS, code=PLACEHOLDER_CODE, ami_id="ami-0123456789abcdef0", zones=("ap-south-1a", "ap-south-1b")))


def _alarms(program: Program) -> dict[str, dict]:
    return {r.inputs["name"]: r.inputs for r in program.mocks.of_type(ALARM)}


def test_every_dead_letter_queue_alarms_on_its_first_message(program: Program) -> None:
    alarms = _alarms(program)
    dlqs = {q.dlq_name for q in SETTINGS.queues}
    watched = {a["dimensions"]["QueueName"] for a in alarms.values() if a["metricName"] == "ApproximateNumberOfMessagesVisible"}
    assert watched == dlqs
    for a in alarms.values():
        if a["metricName"] == "ApproximateNumberOfMessagesVisible":
            assert (a["threshold"], a["comparisonOperator"], a["evaluationPeriods"]) == (0, "GreaterThanThreshold", 1)


def test_urgent_waiting_worker_errors_and_spot_interruptions_alarm(program: Program) -> None:
    alarms = _alarms(program)
    urgent = alarms["ctfleet-m1-urgent-waiting"]
    assert urgent["metricName"] == "ApproximateAgeOfOldestMessage"
    assert urgent["dimensions"] == {"QueueName": SETTINGS.urgent_queue.name} and urgent["threshold"] == 300
    errors = alarms["ctfleet-m1-worker-errors"]
    [flt] = program.mocks.of_type("aws:cloudwatch/logMetricFilter:LogMetricFilter")
    assert flt.inputs["logGroupName"] == SETTINGS.log_group and flt.inputs["pattern"] == '{ $.level = "ERROR" }'
    assert errors["metricName"] == flt.inputs["metricTransformation"]["name"]
    [rule] = [r for r in program.mocks.of_type("aws:cloudwatch/eventRule:EventRule") if r.name == "monitoring-spot-warnings"]
    assert json.loads(rule.inputs["eventPattern"])["detail-type"] == ["EC2 Spot Instance Interruption Warning"]
    assert alarms["ctfleet-m1-spot-interruptions"]["dimensions"] == {"RuleName": rule.inputs["name"]}


def test_alarms_go_to_the_operator_topic_not_the_clinicians(program: Program) -> None:
    m = program.mocks
    topics = {r.inputs["name"]: r for r in m.of_type("aws:sns/topic:Topic")}
    ops = topics[SETTINGS.operations_topic]
    assert SETTINGS.alerts_topic in topics and ops.inputs.get("kmsMasterKeyId")
    for a in _alarms(program).values():
        assert a["alarmActions"] == [ops.state["arn"]] and a["treatMissingData"] == "notBreaching"
    [target] = [t for t in m.of_type("aws:cloudwatch/eventTarget:EventTarget") if t.name == "monitoring-spot-warnings"]
    assert target.inputs["arn"] == ops.state["arn"]
    [policy] = m.of_type("aws:sns/topicPolicy:TopicPolicy")
    [stmt] = json.loads(policy.inputs["policy"])["Statement"]
    assert stmt["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


def test_dashboard_shows_queues_dead_letters_fleet_errors_and_spot(program: Program) -> None:
    [dash] = program.mocks.of_type("aws:cloudwatch/dashboard:Dashboard")
    titles = [w["properties"]["title"] for w in json.loads(dash.inputs["dashboardBody"])["widgets"]]
    assert titles == ["Messages waiting", "Oldest urgent message (s)", "Dead letters", "GPU fleet", "Worker errors",
                      "Spot interruption warnings"]
    [group] = program.mocks.of_type("aws:autoscaling/group:Group")
    assert {"GroupDesiredCapacity", "GroupInServiceInstances"} <= set(group.inputs["enabledMetrics"])


def test_without_a_fleet_there_is_no_worker_alarm() -> None:
    from infra.__main__ import build

    ran = run_program(lambda: build(SETTINGS, code=PLACEHOLDER_CODE, zones=("ap-south-1a", "ap-south-1b")))
    names = {r.inputs["name"] for r in ran.mocks.of_type(ALARM)}
    assert "ctfleet-m1-worker-errors" not in names and "ctfleet-m1-urgent-waiting" in names
