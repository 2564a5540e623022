"""Shared fixtures.

The real chest CT lives in ``../shared/data/ct00.tar.xz`` (provenance: the
ITKElastix repository, InsightSoftwareConsortium/ITKElastix, Apache-2.0, commit
787db6d, ``examples/data/00``; one phase of a public 4D lung CT set). It is
unpacked once into a cache directory outside the repository, never copied in.
"""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Test helper modules beside this file (e.g. phi.py, the planted-PHI corpus) import as top-level modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))
SHARED_CT = REPO.parent / "shared" / "data" / "ct00.tar.xz"


def _cache_dir() -> Path:
    base = os.environ.get("CTFLEET_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ctfleet-test"
    )
    return Path(base)


@pytest.fixture(scope="session")
def real_ct_dir() -> Path:
    """Folder of the 141 real CT slices (``00-slice000.dcm`` ...), unpacked once."""
    if not SHARED_CT.exists():
        pytest.skip(f"real CT not found at {SHARED_CT}")
    dest = _cache_dir() / "ct00"
    series = dest / "00"
    if len(list(series.glob("*.dcm"))) != 141:
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED_CT) as tar:
            tar.extractall(dest, filter="data")
    files = sorted(series.glob("*.dcm"))
    assert len(files) == 141, f"expected 141 slices in {series}, found {len(files)}"
    return series
