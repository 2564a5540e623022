"""Secrets from Secrets Manager: the per-facility HMAC secrets (cached per process), and any one by name."""

from __future__ import annotations

import threading
from typing import Any

from ctfleet.contracts import Reason
from ctfleet.errors import BadInput, NotFound

from .failures import retrying, sorted_errors


class FacilitySecrets:
    """Each facility's secret (study keys, UID pseudonyms, date shifts), read once.

    Parameters
    ----------
    secretsmanager : boto3 client
    name_of : callable
        Facility id -> secret name (``Settings.facility_secret_name``).
    """

    def __init__(self, secretsmanager: Any, name_of: Any) -> None:
        self._client = secretsmanager
        self._name_of = name_of
        self._cache: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, facility: str) -> bytes:
        """The facility's secret bytes.

        Raises
        ------
        BadInput
            ``unknown_facility`` when no secret is configured for it.
        """
        with self._lock:
            if facility in self._cache:
                return self._cache[facility]
        try:
            secret = read_secret(self._client, self._name_of(facility))
        except NotFound as exc:
            raise BadInput(Reason.UNKNOWN_FACILITY, f"no secret configured for facility {facility}") from exc
        with self._lock:
            self._cache[facility] = secret
        return secret



@retrying
def read_secret(secretsmanager: Any, name: str) -> bytes:
    """The bytes of secret ``name`` (binary, or its string as UTF-8); :class:`NotFound` if there is none."""
    with sorted_errors("secretsmanager"):
        value = secretsmanager.get_secret_value(SecretId=name)
    return bytes(value.get("SecretBinary") or str(value["SecretString"]).encode())
