"""One error tree; the family says how to retry.

- :class:`BadInput`: permanent. Record the reason code, delete the message.
- :class:`Transient`: let SQS redeliver (or back off with tenacity).
- :class:`Interrupted`: hand the message back now (spot notice, shutdown).

Messages never carry PHI: they name reason codes, counts and keys, never
header values.
"""

from __future__ import annotations


class CtfleetError(Exception):
    """Base of every error ctfleet raises on purpose."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.detail = message


class BadInput(CtfleetError):
    """The input can never succeed: record ``reason`` and stop retrying."""


class Transient(CtfleetError):
    """Worth retrying: a service was slow, throttled or briefly unavailable."""


class Interrupted(CtfleetError):
    """Stop now and give the work back (spot interruption, shutdown)."""
