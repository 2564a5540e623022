"""Cold-start wiring for the Lambda entry points: settings and clients, built once."""

from __future__ import annotations

import functools
import logging

from ctfleet.aws.clients import Clients
from ctfleet.logs import configure_logging
from ctfleet.settings import Settings


@functools.cache
def clients() -> Clients:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    logging.getLogger(__name__).info("cold start", extra={"stack": settings.stack})
    return Clients(settings)
