import json

from ctfleet.contracts import AlertState, alert_message, needs_alert

DONE_HIGH = {"study_key": "ab" * 12, "facility": "demo", "status": "DONE", "triage_level": "HIGH",
             "score": 0.93, "severity_score": 17, "model_version": "m-1"}


def test_only_done_high_studies_not_yet_alerted_need_an_alert():
    assert needs_alert(DONE_HIGH)
    assert not needs_alert({**DONE_HIGH, "triage_level": "MEDIUM"})
    assert not needs_alert({**DONE_HIGH, "status": "PROCESSING"})
    assert not needs_alert({**DONE_HIGH, "alert_state": AlertState.SENT})
    # A SENDING claim may be stale (its holder died): the conditional claim decides.
    assert needs_alert({**DONE_HIGH, "alert_state": AlertState.SENDING})


def test_alert_carries_a_link_and_nothing_but_the_study_key_for_identity():
    msg = alert_message({**DONE_HIGH, "upload_id": "u" * 32, "job": "{...}"}, "https://ctfleet.example")
    assert msg["link"] == f"https://ctfleet.example/#/studies/{DONE_HIGH['study_key']}"
    assert set(msg) == {"kind", "study_key", "facility", "triage_level", "score", "severity_score",
                        "model_version", "link"}
    assert json.loads(json.dumps(msg)) == msg
