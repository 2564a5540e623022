import json

import pytest

from ctfleet.contracts import (
    JobMessage,
    Manifest,
    check_file_name,
    parse_raw_key,
    raw_key,
    study_key,
)
from ctfleet.errors import BadInput


def job(**over):
    fields = dict(
        facility="st-marys",
        study_key="ab" * 12,
        series="cd" * 8,
        object_keys=(f"studies/st-marys/{'ab' * 12}/{'cd' * 8}/0000.dcm",),
        slice_count=1,
        bytes=10,
        priority="urgent",
        model_version="default",
    )
    fields.update(over)
    return JobMessage.new(**fields)


def test_study_key_is_deterministic_per_facility_secret():
    uid = "1.2.826.0.1.3680043.2.1143.4293425517178216192998562308743984271"
    a = study_key(b"secret-a", uid)
    assert a == study_key(b"secret-a", uid)
    assert a != study_key(b"secret-b", uid)
    assert len(a) == 24 and int(a, 16) >= 0
    assert uid not in a


def test_job_message_round_trips_and_is_versioned():
    j = job()
    back = JobMessage.from_json(j.to_json())
    assert back == j
    data = json.loads(j.to_json())
    assert data["version"] == 1
    data["version"] = 99
    with pytest.raises(BadInput, match="version"):
        JobMessage.from_json(json.dumps(data))


@pytest.mark.parametrize(
    "over",
    [
        {"priority": "whenever"},
        {"slice_count": 2},
        {"object_keys": ("studies/other/x/y/0000.dcm",)},
        {"facility": "Bad Facility"},
    ],
)
def test_job_message_rejects_invalid_fields(over):
    with pytest.raises(BadInput):
        job(**over)


@pytest.mark.parametrize("body", ["not json", "[]", '{"version": 1}'])
def test_job_message_from_garbage_is_bad_input(body):
    with pytest.raises(BadInput):
        JobMessage.from_json(body)


def test_raw_keys_parse_back():
    key = raw_key("demo", "0" * 32, "series 1/IM 0001.dcm")
    assert parse_raw_key(key) == ("demo", "0" * 32, "series 1/IM 0001.dcm")
    with pytest.raises(BadInput):
        parse_raw_key("studies/demo/x/y")


@pytest.mark.parametrize("name", ["", "/etc/passwd", "a/../b", "a//b", "manifest.json", "a\nb", "./a"])
def test_unsafe_file_names_are_refused(name):
    with pytest.raises(BadInput):
        check_file_name(name)


def test_manifest_validates_its_fields():
    good = {"upload_id": "a" * 32, "facility": "demo", "priority": "backfill",
            "files": [{"name": "x.dcm", "size": 3, "sha256": "0" * 64}], "created_at": 1.0}
    m = Manifest.from_json(json.dumps(good))
    assert m.files[0].size == 3 and m.priority == "backfill"
    assert Manifest.from_json(m.to_json()) == m
    for bad in ({**good, "priority": "now"}, {**good, "files": [{"name": "../x", "size": 1}]},
                {**good, "upload_id": "XYZ"}, {k: v for k, v in good.items() if k != "files"},
                {**good, "files": [{"name": "x.dcm", "size": 3}]},
                {**good, "files": [{"name": "x.dcm", "size": 3, "sha256": "XY"}]}):
        with pytest.raises(BadInput):
            Manifest.from_json(json.dumps(bad))
