"""The local stack's facility secrets: one file each under ``{CTFLEET_HOME}/secrets/``.

On AWS the secrets live in Secrets Manager (:class:`ctfleet.aws.secrets.FacilitySecrets`);
here they are files, so ``ctfleet deid`` and ``ctfleet local up`` agree on study
keys across runs without starting anything.
"""

from __future__ import annotations

import os
import secrets as pysecrets
from pathlib import Path

from ctfleet.settings import Settings


def local_secret(settings: Settings, facility: str) -> bytes:
    """The local stack's secret for ``facility``: 64 hex characters in ``{home}/secrets/{facility}``.

    Created on first use (mode 0600) and kept, so study keys and pseudonyms stay
    the same across runs and match what ``ctfleet deid`` produces by default.
    """
    path = Path(settings.home).expanduser() / "secrets" / facility
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pysecrets.token_hex(32))
        os.replace(tmp, path)
    secret = path.read_bytes().strip()
    if not secret:
        raise ValueError(f"empty secret file {path}")
    return secret
