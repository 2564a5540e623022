"""The words every part shares: keys, messages, states and reason codes.

- :mod:`.keys`: facility and upload ids, study keys (HMAC), S3 keys;
- :mod:`.messages`: the job message and the upload manifest (frozen, valid once built);
- :mod:`.states`: upload, study and alert states; label values and triage levels;
- :mod:`.reasons`: every reason code, in one namespace.

May import: the standard library, :mod:`ctfleet.errors` and :mod:`model.labels`
(pure Python). Never boto3, pydicom or torch.
"""

from .keys import (
    STUDY_KEY_HEX,
    check_facility,
    check_file_name,
    check_sha256,
    check_upload_id,
    new_upload_id,
    parse_raw_key,
    promised_key,
    raw_key,
    raw_prefix,
    results_prefix,
    s3_event_keys,
    pseudonym,
    series_id,
    study_key,
    study_prefix,
)
from .messages import MESSAGE_VERSION, JobMessage, Manifest, ManifestFile, Priority, alert_message, needs_alert
from .reasons import Reason
from .states import AlertState, Label, Status, TriageLevel, UploadStatus

__all__ = [
    "MESSAGE_VERSION", "STUDY_KEY_HEX", "AlertState", "JobMessage", "Label", "Manifest", "ManifestFile", "Priority",
    "Reason", "Status", "alert_message", "needs_alert", "TriageLevel", "UploadStatus", "check_facility", "check_file_name", "check_sha256",
    "check_upload_id", "new_upload_id", "parse_raw_key", "promised_key", "raw_key", "raw_prefix", "results_prefix",
    "pseudonym", "s3_event_keys", "series_id", "study_key", "study_prefix",
]
