"""The local stack for integration tests: a real moto server over HTTP, the real
handlers on pollers, and a real ``ctfleet worker`` subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctfleet.local.stack import LocalStack
from ctfleet.settings import Settings
from ctfleet.cli.client import ApiClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def worker_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs") / "workers.log"


@pytest.fixture(scope="session")
def stack(worker_log):
    with LocalStack(Settings(stack="ctftest", facilities=("demo", "other")), workers=1,
                    worker_log=worker_log) as s:
        yield s


@pytest.fixture(scope="session")
def api(stack) -> ApiClient:
    return ApiClient(stack.api_url + "/api", token=stack.token("demo", "clinician"))
