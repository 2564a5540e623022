"""Structured logs: one JSON object per line, never PHI.

Log records carry study keys, upload ids, reason codes and timings only;
nothing read from a DICOM header is ever passed to a logger.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            # Exception text is ours (reason codes); headers never reach it.
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: str = "INFO", stream: object = None) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    silence_header_values()


def silence_header_values() -> None:
    """Keep DICOM header values out of logs and stderr.

    pydicom's validation warnings quote the offending value (a malformed birth
    date, a name), so they are PHI. Validation problems that matter surface as
    our own reason codes instead.
    """
    import warnings

    try:
        import pydicom.config
    except ImportError:  # the model-only install has no pydicom
        return
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    logging.Formatter.converter = time.gmtime
