import hashlib
import hmac
import json
import re

import pytest

from ctfleet.contracts import (
    MESSAGE_VERSION,
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
        size_bytes=10,
        priority="urgent",
        model="default",
    )
    fields.update(over)
    return JobMessage.new(**fields)


def test_study_key_is_deterministic_per_facility_secret():
    uid = "1.2.826.0.1.3680043.2.1143.4293425517178216192998562308743984271"
    a = study_key(b"secret-a", "north", uid)
    assert a == study_key(b"secret-a", "north", uid)
    assert a != study_key(b"secret-b", "north", uid)
    assert re.fullmatch(r"[0-9a-f]{24}", a)
    # Surrounding blanks (DICOM pads UIDs to even length) do not change the key.
    assert study_key(b"secret-a", "north", uid + " ") == a


def test_pseudonyms_are_separated_by_facility_and_purpose():
    """Two facilities sharing a secret never share a pseudonym; a study key is no UID's hash."""
    from ctfleet.contracts import pseudonym, series_id
    from ctfleet.intake.deid import uid_for

    uid = "1.2.826.0.1.3680043.2.1143.42"
    secret = b"one secret for both"
    assert study_key(secret, "north", uid) != study_key(secret, "south", uid)
    assert series_id(secret, "north", uid) != series_id(secret, "south", uid)
    assert uid_for(secret, "north", uid) != uid_for(secret, "south", uid)
    key = study_key(secret, "north", uid)
    as_uid = int(uid_for(secret, "north", uid).removeprefix("2.25.")).to_bytes(16, "big").hex()
    assert not as_uid.startswith(key) and not series_id(secret, "north", uid).startswith(key[:16])
    assert not hmac.new(secret, uid.encode(), hashlib.sha256).hexdigest().startswith(key), "not a bare HMAC of the UID"
    # The facility and the purpose are length-delimited (NUL), so "ab"+"c" is not "a"+"bc".
    assert pseudonym(secret, "uid", "ab", "c") != pseudonym(secret, "uid", "a", "bc")


def test_job_message_round_trips_and_is_versioned():
    j = job()
    back = JobMessage.from_json(j.to_json())
    assert back == j
    data = json.loads(j.to_json())
    assert data["version"] == MESSAGE_VERSION == 2
    data["version"] = 99
    with pytest.raises(BadInput, match="version"):
        JobMessage.from_json(json.dumps(data))


def test_version_1_messages_still_in_a_queue_are_read():
    j = job()
    v1 = json.loads(j.to_json())
    v1["bytes"], v1["model_version"], v1["version"] = v1.pop("size_bytes"), v1.pop("model"), 1
    assert JobMessage.from_json(json.dumps(v1)) == j


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


@pytest.mark.parametrize("name", ["", "/etc/passwd", "a/../b", "a//b", "manifest.json", "a\nb", "./a",
                                  "a\\b.dcm", "evil\u202egnp.dcm", "zero\u200bwidth", "tab\there", " lead", "trail /x",
                                  "x" * 513, "\u00e9" * 257, "a:b", "a;b", None, 7, ["a"]])
def test_unsafe_file_names_are_refused(name):
    with pytest.raises(BadInput) as caught:
        check_file_name(name)
    assert caught.value.reason == "bad_file_name"


@pytest.mark.parametrize("name", ["IM0001.dcm", "DICOM/PA000000/ST000000/SE000000/IM000000", "Series 1/IM 0001.dcm",
                                  "1.2.840.113619.2.55.3.dcm", "Thorax (2)/img-01_a+b~c@d,e.dcm",
                                  "胸部/画像0001.dcm", "Ünterordner/ß.dcm", "x" * 512])
def test_ordinary_file_names_are_accepted(name):
    assert check_file_name(name) == name


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
