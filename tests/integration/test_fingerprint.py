"""``ctfleet deid`` on the real CT writes the very bytes it wrote before the kernel was re-layered.

De-identification is integer work on bytes, so its output is the same on every
machine: a digest recorded once guards it against any change that was meant to
change nothing. (Labels and overlays come from float arithmetic whose last bits
may differ across CPUs; ``python -m ctfleet.dev.fingerprint`` compares those
between two runs on one machine.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ctfleet.dev.fingerprint import deid_digests

pytestmark = pytest.mark.integration

# Recorded at commit 9facf00 (before the re-layering), ../shared/data/ct00.tar.xz, FIXED_SECRET.
DEID_DIGEST = "52770fc5dc58c20a0b5a819f27511f772494d3731cc09ff5f77dc01226f0d92f"


def test_deid_of_the_real_ct_is_byte_identical_to_the_recorded_digest(real_ct_dir: Path, tmp_path: Path):
    digests = deid_digests(real_ct_dir, tmp_path)
    assert digests["files"] == 141
    assert digests["stdout"]["accepted"] == [{"files": 141, "series": "c5dab70bcbefc777"}]
    assert digests["all"] == DEID_DIGEST
