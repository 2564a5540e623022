"""Send a HIGH study's triage alert exactly once per study and model version: claim, publish, mark.

- The claim is a conditional put of the alert's record (``{study_key}:{model_version}`` in the
  alerts table): no record yet, or a SENDING claim older than the lease (its holder died).
  The study shows the claim too (``alert_state`` SENDING, then SENT), for the worklist and the
  audit trail.
- Each step is recorded as it succeeds (``published_at``, the webhook's state), so a retry after
  a crash repeats only what had not happened. The window left is a crash right after SNS took
  the message and before ``published_at`` was written: then, after the lease, the alert is
  published again with the same ``alert_id``. An SQS or HTTPS subscriber can drop the second
  copy by that id, the webhook gets the same ``Idempotency-Key``, and a FIFO topic drops it by
  its deduplication id; a plain e-mail subscriber of a standard topic may receive the same
  alert twice (same subject, same alert id) in that case, never a different one.
- The webhook (optional, per facility) is signed (HMAC-SHA256 of ``{timestamp}.{body}`` with the
  facility's webhook key) and retried with backoff; when it still fails, the failure is
  recorded on the alert and the alert is otherwise complete: it never blocks another alert.

Used by the triage function (on the stream) and by the scheduled sweep (claims whose holder died).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from tenacity import RetryError, retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from ctfleet.contracts import AlertState, TriageLevel, alert_message, needs_alert
from ctfleet.errors import Conflict

from .facilities import FacilityConfig, FacilityConfigs
from .failures import sorted_errors
from .records import Table, now
from .repositories import Studies

log = logging.getLogger(__name__)

CLAIM_LEASE_S = 60.0
WEBHOOK_ATTEMPTS = 4
WEBHOOK_TIMEOUT_S = 10.0


def alert_id(record: dict[str, Any]) -> str:
    """One alert per study and model version."""
    return f"{record['study_key']}:{record.get('model_version') or 'unknown'}"


class AlertRecords:
    """The alerts table (``Settings.alerts_table``): one record per alert, no PHI."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def claim(self, record: dict[str, Any], *, at: float, lease_s: float) -> dict[str, Any] | None:
        """The alert's record if this caller now holds it (new, or a stale SENDING claim); else None."""
        aid = alert_id(record)
        try:
            self.table.put_new({"alert_id": aid, "study_key": record["study_key"], "facility": record["facility"],
                                "model_version": record.get("model_version"), "state": AlertState.SENDING,
                                "claimed_at": at})
            return self.table.get(aid)
        except Conflict:
            pass
        try:
            return self.table.update(aid, {"claimed_at": at},
                                     condition="#state = :sending AND #claimed_at < :stale",
                                     values={":sending": AlertState.SENDING, ":stale": at - lease_s})
        except Conflict:
            return None

    def note(self, aid: str, fields: dict[str, Any]) -> None:
        """Record a step that succeeded (or a webhook's failure)."""
        self.table.update(aid, fields)

    def mark_sent(self, aid: str) -> None:
        self.table.update(aid, {"state": AlertState.SENT, "sent_at": now()})


@dataclass(frozen=True)
class WebhookResult:
    ok: bool
    attempts: int
    detail: str = ""


class _Retry(Exception):
    """A webhook answer worth another try (5xx, 429, no answer)."""


class Alerts:
    """The alert sender of one stack.

    Parameters
    ----------
    studies : Studies
    records : AlertRecords
    facilities : FacilityConfigs
        Each facility's topic and webhook.
    sns : boto3 SNS client
    topic_arn : callable
        The stack's alerts topic (for facilities that name none of their own).
    api_url : str or None
        Base of the viewer link in the alert.
    webhook_key : callable
        A secret's name -> its bytes (the webhook's HMAC key, from Secrets Manager).
    """

    def __init__(self, studies: Studies, records: AlertRecords, facilities: FacilityConfigs, sns: Any,
                 topic_arn: Callable[[], str], api_url: str | None, webhook_key: Callable[[str], bytes],
                 http: requests.Session | None = None) -> None:
        self.studies = studies
        self.records = records
        self.facilities = facilities
        self.sns = sns
        self.topic_arn = topic_arn
        self.api_url = api_url
        self.webhook_key = webhook_key
        self.http = http or requests.Session()

    def maybe_send(self, record: dict[str, Any], *, at: float) -> bool:
        """Send the study's alert if it is due and nobody else holds the claim; True if sent."""
        if not needs_alert(record):
            return False
        claim = self.records.claim(record, at=at, lease_s=CLAIM_LEASE_S)
        if claim is None:
            return False
        key, aid = record["study_key"], claim["alert_id"]
        self.studies.claim_alert(key, at=at, lease_s=CLAIM_LEASE_S)
        config = self.facilities.get(record["facility"])
        message = {**alert_message(record, self.api_url), "alert_id": aid}
        if not claim.get("published_at"):
            topic = config.topic_arn or self.topic_arn()
            self._publish(topic, aid, record, message)
            self.records.note(aid, {"published_at": now(), "topic_arn": topic})
        if config.webhook_url and claim.get("webhook_state") != AlertState.SENT:
            result = self._webhook(config, aid, message)
            self.records.note(aid, {"webhook_state": AlertState.SENT if result.ok else "FAILED",
                                    "webhook_attempts": result.attempts, "webhook_error": result.detail or None})
        self.records.mark_sent(aid)
        sent_at = now()
        self.studies.mark_alert_sent(key, latency_s=max(0.0, sent_at - float(record.get("done_at", sent_at))))
        log.info("alert sent", extra={"study_key": key, "facility": record["facility"], "alert_id": aid})
        return True

    def retry_stale_claims(self, *, at: float) -> int:
        """Send the alerts whose claim is older than the lease (its holder died before finishing).

        Run on the schedule; without it such a study would wait for its next
        stream record, which may never come.
        """
        sent = 0
        for record in self.studies.alert_claims(limit=1000):
            stale = float(record.get("alert_claimed_at", at)) < at - CLAIM_LEASE_S
            if stale and self.maybe_send(record, at=at):
                sent += 1
        return sent

    def _publish(self, topic: str, aid: str, record: dict[str, Any], message: dict[str, Any]) -> None:
        # Not retried here: SNS publish is not idempotent, and a publish that timed out may
        # have gone through. The claim's lease retries it instead, with the same alert id.
        extra: dict[str, Any] = {}
        if topic.endswith(".fifo"):
            extra = {"MessageDeduplicationId": hashlib.sha256(aid.encode()).hexdigest(),
                     "MessageGroupId": record["facility"]}
        with sorted_errors("sns:alerts"):
            self.sns.publish(
                TopicArn=topic,
                Subject=f"ctfleet HIGH triage: study {record['study_key']}",
                Message=json.dumps(message, sort_keys=True),
                MessageAttributes={
                    "facility": {"DataType": "String", "StringValue": record["facility"]},
                    "triage_level": {"DataType": "String", "StringValue": TriageLevel.HIGH},
                    "alert_id": {"DataType": "String", "StringValue": aid},
                },
                **extra,
            )

    def _webhook(self, config: FacilityConfig, aid: str, message: dict[str, Any]) -> WebhookResult:
        url = str(config.webhook_url)
        if not webhook_url_allowed(url):
            return WebhookResult(False, 0, "webhook_url must be https (http only to this machine)")
        try:
            key = self.webhook_key(str(config.webhook_secret_name)) if config.webhook_secret_name else b""
        except Exception as exc:  # noqa: BLE001 - recorded on the alert; never blocks it
            return WebhookResult(False, 0, f"webhook key unreadable: {type(exc).__name__}")
        body = json.dumps(message, sort_keys=True).encode()
        attempts = [0]

        @retry(retry=retry_if_exception_type(_Retry), stop=stop_after_attempt(WEBHOOK_ATTEMPTS),
               wait=wait_exponential(multiplier=0.5, max=8), reraise=False)
        def post() -> requests.Response:
            attempts[0] += 1
            ts = str(int(time.time()))
            signature = hmac.new(key, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            try:
                resp = self.http.post(url, data=body, timeout=WEBHOOK_TIMEOUT_S, headers={
                    "Content-Type": "application/json", "Idempotency-Key": aid,
                    "X-Ctfleet-Timestamp": ts, "X-Ctfleet-Signature": f"sha256={signature}"})
            except requests.RequestException as exc:
                raise _Retry(type(exc).__name__) from exc
            if resp.status_code >= 500 or resp.status_code == 429:
                raise _Retry(f"HTTP {resp.status_code}")
            return resp

        try:
            resp = post()
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            log.warning("webhook failed", extra={"alert_id": aid, "attempts": attempts[0]})
            return WebhookResult(False, attempts[0], f"{cause} after {attempts[0]} attempts")
        if resp.status_code >= 400:
            return WebhookResult(False, attempts[0], f"HTTP {resp.status_code}")
        return WebhookResult(True, attempts[0])


def webhook_url_allowed(url: str) -> bool:
    """HTTPS anywhere; plain HTTP only to this machine (the local stack's receivers)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost"))
