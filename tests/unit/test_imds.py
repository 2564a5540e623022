import json

import pytest

from ctfleet.aws.imds import Imds
from ctfleet.local.imds_server import LocalImds
from worker.heartbeat import Heartbeat


@pytest.fixture
def imds():
    server = LocalImds("i-0123456789abcdef0", "g5.xlarge").start()
    yield server
    server.stop()


def test_identity_and_spot_notice_over_imdsv2(imds):
    client = Imds(imds.url)
    assert client.instance_id() == "i-0123456789abcdef0"
    assert client.instance_type("unknown") == "g5.xlarge"
    assert client.spot_action() is None
    imds.interrupt(in_seconds=120)
    action = json.loads(client.spot_action())
    assert action["action"] == "terminate"


def test_no_imds_means_no_notice_and_a_local_identity():
    client = Imds("http://127.0.0.1:9", timeout_s=0.2)  # nothing listens on port 9
    assert client.spot_action() is None
    assert client.instance_id().startswith("local-")


def test_heartbeat_must_beat_well_within_the_visibility_timeout():
    with pytest.raises(ValueError, match="too slow"):
        Heartbeat(None, "receipt", interval_s=90, visibility_s=120)  # type: ignore[arg-type]
    beat = Heartbeat(None, "receipt", interval_s=30, visibility_s=120)  # type: ignore[arg-type]
    assert not beat.handed_back.is_set()
