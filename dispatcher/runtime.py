"""Cold-start wiring for the Lambda entry points: settings, clients and adapters, built once.

Every handler module's ``lambda_handler`` is ``handle(event, deps())``: the
first invocation of a cold function builds the dependencies, the warm ones reuse them.
"""

from __future__ import annotations

import functools
import logging

from ctfleet.aws.clients import Clients
from ctfleet.logs import configure_logging
from ctfleet.settings import Settings

from .deps import HandlerDeps


@functools.cache
def deps() -> HandlerDeps:
    """The process's handler dependencies, from the environment (once per cold start)."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    logging.getLogger(__name__).info("cold start", extra={"stack": settings.stack})
    return HandlerDeps(Clients(settings))
