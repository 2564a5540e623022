"""One error tree; the family says what to do with the work that raised it.

=================  ===========================================================
family             what the caller does
=================  ===========================================================
:class:`BadInput`  permanent: record the reason code, drop the message
:class:`Transient` back off and retry (:data:`ctfleet.aws.failures.retrying`);
                   when the retries are spent, let SQS redeliver
:class:`Interrupted` hand the message back now (spot notice, shutdown)
:class:`Conflict`  someone else settled it (a conditional write lost): stop quietly
:class:`Fault`     permanent, and not the input's fault (access denied, a missing
                   resource, a model that cannot run): alarm; SQS redelivers and
                   dead-letters, the record ends FAILED
:class:`Refused`   the caller may not do this: answer 401 (:class:`Unauthenticated`,
                   no valid token) or 403 (:class:`Forbidden`, a role or facility
                   without the right) and change nothing
=================  ===========================================================

Every error ctfleet raises on purpose is one of these; anything else reaching
the outermost loop is a bug. ``ClientError`` is sorted into them once, in
:mod:`ctfleet.aws.failures`. The model (which imports nothing of ours) raises
its own ``VolumeError`` and ``ModelError``, each with a reason code; they enter
the tree where the kernel calls the model: a volume that cannot be built is
:class:`BadInput` (:func:`ctfleet.intake.volume.checked_volume`, the worker's
analysis step), a model that cannot run is a :class:`Fault` in the worker and
bad input to ``ctfleet analyze``. Messages never carry PHI: they name reason codes,
counts and keys, never header values.
"""

from __future__ import annotations


class CtfleetError(Exception):
    """Base of every error ctfleet raises on purpose.

    Parameters
    ----------
    reason : str
        A reason code (:class:`ctfleet.contracts.Reason` for what is recorded).
    message : str
        What happened and what to do, without PHI.
    """

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


class Conflict(CtfleetError):
    """A conditional write found the record in another state: someone else settled it."""


class Fault(CtfleetError):
    """Permanent, and not the input's fault: a misconfiguration, a missing resource, a broken model."""


class NotFound(Fault):
    """A resource or object that should exist does not (a queue, a topic, an S3 object)."""


class Refused(CtfleetError):
    """The caller may not do this; nothing was changed."""


class Unauthenticated(Refused):
    """No token, or one that does not verify (HTTP 401)."""


class Forbidden(Refused):
    """A verified caller whose role or facility lacks the right (HTTP 403)."""
