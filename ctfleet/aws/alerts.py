"""Send a HIGH study's triage alert at most once: claim, publish, mark.

- the claim is a conditional write (:meth:`~ctfleet.aws.repositories.Studies.claim_alert`):
  no alert yet, or a SENDING claim older than the lease (its holder died);
- a stream record replayed after the mark finds ``alert_state = SENT`` and stops.
The only window for a second alert is a crash between publish and mark, longer
than the lease; the alert carries the study key so receivers can de-duplicate.

Used by the triage function (on the stream) and by the scheduled sweep (claims
whose holder died).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from ctfleet.contracts import TriageLevel, alert_message, needs_alert

from .failures import sorted_errors
from .repositories import Studies

log = logging.getLogger(__name__)

CLAIM_LEASE_S = 60.0


class Alerts:
    """The alert sender of one stack.

    Parameters
    ----------
    studies : Studies
    sns : boto3 SNS client
    topic_arn : callable
        Returns the alerts topic's ARN (looked up once, on first use).
    api_url : str or None
        Base of the viewer link in the alert.
    """

    def __init__(self, studies: Studies, sns: Any, topic_arn: Callable[[], str], api_url: str | None) -> None:
        self.studies = studies
        self.sns = sns
        self.topic_arn = topic_arn
        self.api_url = api_url

    def maybe_send(self, record: dict[str, Any], *, at: float) -> bool:
        """Send the study's alert if it is due and nobody else holds the claim; True if sent."""
        if not needs_alert(record):
            return False
        key = record["study_key"]
        if not self.studies.claim_alert(key, at=at, lease_s=CLAIM_LEASE_S):
            return False
        self._publish(record)
        self.studies.mark_alert_sent(key)
        log.info("alert sent", extra={"study_key": key, "facility": record["facility"]})
        return True

    def retry_stale_claims(self, *, at: float) -> int:
        """Send the alerts whose claim is older than the lease (its holder died before publishing).

        Run on the schedule; without it such a study would wait for its next
        stream record, which may never come.
        """
        sent = 0
        for record in self.studies.alert_claims(limit=1000):
            stale = float(record.get("alert_claimed_at", at)) < at - CLAIM_LEASE_S
            if stale and self.maybe_send(record, at=at):
                sent += 1
        return sent

    def _publish(self, record: dict[str, Any]) -> None:
        # Not retried here: SNS publish is not idempotent, and a publish that timed
        # out may have gone through. The claim's lease retries it instead (once).
        with sorted_errors("sns:alerts"):
            self.sns.publish(
                TopicArn=self.topic_arn(),
                Subject=f"ctfleet HIGH triage: study {record['study_key']}",
                Message=json.dumps(alert_message(record, self.api_url), sort_keys=True),
                MessageAttributes={
                    "facility": {"DataType": "String", "StringValue": record["facility"]},
                    "triage_level": {"DataType": "String", "StringValue": TriageLevel.HIGH},
                },
            )
