"""Triage per facility on the local stack: each facility's threshold and topic, a signed webhook that
is retried and recorded when it fails without holding up the next alert, and one alert per study
however often its stream records arrive."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from ctfleet.aws.facilities import FacilityConfig, FacilityConfigs
from ctfleet.aws.records import Table
from ctfleet.cli.client import ApiClient
from ctfleet.local.demo import phantom_studies
from ctfleet.local.httpd import LoopbackServer
from ctfleet.local.stack import LocalStack
from ctfleet.settings import Settings
from stack_helpers import another_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WEBHOOK_KEY = b"north-webhook-key-0123456789abcdef"


class Receiver:
    """The hospital's webhook endpoint: answers ``status`` and keeps what it was sent."""

    def __init__(self) -> None:
        self.status = 500
        self.calls: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append({"headers": dict(self.headers), "body": body, "answered": receiver.status})
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = LoopbackServer(Handler, name="webhook").start()


@pytest.fixture(scope="module")
def triage_stack(tmp_path_factory):
    receiver = Receiver()
    settings = Settings(stack="ctftriage", facilities=("north", "south"), facility_config_cache_s=1.0)
    with LocalStack(settings, workers=1, worker_log=tmp_path_factory.mktemp("triage") / "workers.log") as stack:
        s = stack.settings
        stack.clients.secrets.create_secret(Name=f"{s.stack}/webhook/north", SecretBinary=WEBHOOK_KEY)
        configs = FacilityConfigs(Table(stack.clients.dynamodb, s.facilities_table), default_threshold=s.high_threshold)
        topics = stack.resources["facility_topics"]
        configs.put(FacilityConfig("north", high_threshold=s.high_threshold, topic_arn=topics["north"],
                                   webhook_url=receiver.server.url + "/ctfleet", webhook_secret_name=f"{s.stack}/webhook/north"))
        configs.put(FacilityConfig("south", high_threshold=0.999, topic_arn=topics["south"]))
        yield stack, receiver
    receiver.server.stop()


def send_high(stack, facility: str) -> dict:
    high = next(s for s in phantom_studies() if s.label == "phantom-high")
    api = ApiClient(stack.api_url + "/api", token=stack.token(facility, "clinician"))
    up = api.upload(facility, another_study(high.files))
    state = api.wait(up.upload_id, timeout_s=240)
    assert state["study"]["status"] == "DONE", state
    return state["study"]


def wait_alert_sent(stack, key: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = stack.record(key)
        if record.get("alert_state") == "SENT":
            return record
        time.sleep(0.5)
    raise AssertionError(f"no alert for {key}")


def alert_record(stack, record: dict) -> dict:
    table = Table(stack.clients.dynamodb, stack.settings.alerts_table)
    return table.get(f"{record['study_key']}:{record['model_version']}")


def test_a_failing_webhook_is_retried_recorded_and_does_not_hold_up_the_next_alert(triage_stack):
    stack, receiver = triage_stack
    stack.drain_alerts(wait_s=0)
    first = wait_alert_sent(stack, send_high(stack, "north")["study_key"])
    failed = alert_record(stack, first)
    assert failed["state"] == "SENT" and failed["webhook_state"] == "FAILED", "published; the webhook's failure on record"
    assert failed["webhook_attempts"] == 4 and "HTTP 500" in failed["webhook_error"]
    assert len(receiver.calls) == 4 and len({c["headers"]["Idempotency-Key"] for c in receiver.calls}) == 1
    assert first["alert_latency_s"] >= 0
    receiver.status = 200
    second = wait_alert_sent(stack, send_high(stack, "north")["study_key"])
    assert alert_record(stack, second)["webhook_state"] == "SENT"
    call = receiver.calls[-1]
    ts, body = call["headers"]["X-Ctfleet-Timestamp"], call["body"]
    expected = hmac.new(WEBHOOK_KEY, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert call["headers"]["X-Ctfleet-Signature"] == f"sha256={expected}", "signed with the facility's key"
    payload = json.loads(body)
    assert payload["study_key"] == second["study_key"] and payload["facility"] == "north"
    delivered = [a for a in stack.drain_alerts(wait_s=2) if a["facility"] == "north"]
    assert sorted(a["study_key"] for a in delivered) == sorted([first["study_key"], second["study_key"]])


def test_each_facility_s_threshold_is_honoured(triage_stack):
    stack, _ = triage_stack
    south = send_high(stack, "south")
    assert south["triage_level"] != "HIGH", "south triages HIGH only from 0.999"
    time.sleep(3)
    assert stack.record(south["study_key"]).get("alert_state") is None
    assert not [a for a in stack.drain_alerts(wait_s=1) if a["study_key"] == south["study_key"]]


def test_duplicated_and_replayed_stream_records_give_one_alert(triage_stack):
    from dispatcher import triage
    from dispatcher.deps import HandlerDeps

    stack, receiver = triage_stack
    stack.drain_alerts(wait_s=0)
    record = wait_alert_sent(stack, send_high(stack, "north")["study_key"])
    calls = len(receiver.calls)
    streams = stack.clients.dynamodbstreams
    arn = stack.resources["stream_arn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    mine = [r for r in streams.get_records(ShardIterator=it, Limit=1000)["Records"]
            if r["dynamodb"]["Keys"]["study_key"]["S"] == record["study_key"]]
    deps = HandlerDeps(stack.clients)
    # Every record of the study, twice, and from two senders at once.
    batch = {"Records": mine + mine}
    threads = [threading.Thread(target=triage.handle, args=(batch, deps)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alerts = [a for a in stack.drain_alerts(wait_s=2) if a["study_key"] == record["study_key"]]
    assert len(alerts) == 1, alerts
    assert len(receiver.calls) == calls + 0, "the webhook was not called again"
