"""``ctfleet deid`` on the real CT writes the very bytes recorded for it.

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

# Recorded when pseudonyms became domain-separated by facility and purpose (issue 10), from
# ../shared/data/ct00.tar.xz under FIXED_SECRET. Against the digest recorded at 9facf00 before the
# re-layering (52770fc5...), only UIDs changed: SOP, Study, Series, FrameOfReference and
# referenced SOP Instance UIDs and MediaStorageSOPInstanceUID in all 141 files (compared element
# by element), and the folder name; every other byte is as it was.
# Re-recorded when the patient name pseudonym became a PN with a component delimiter,
# "<hex>^ANON" (issue 11): with the name written the old way the digest is 4e11133b... as before,
# so nothing else changed (the UID repairs and the empty frame of reference fix are no-ops here).
DEID_DIGEST = "d12d7b8eb5c47d9f8342dfade526a58120714e7f1b01d306c14b5defed7f2958"


def test_deid_of_the_real_ct_is_byte_identical_to_the_recorded_digest(real_ct_dir: Path, tmp_path: Path):
    digests = deid_digests(real_ct_dir, tmp_path)
    assert digests["files"] == 141
    assert digests["stdout"]["accepted"] == [{"files": 141, "series": "6839ffee5b2c308c"}]
    assert digests["all"] == DEID_DIGEST
