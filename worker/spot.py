"""Watch the instance metadata for a spot interruption notice."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ctfleet.aws.imds import Imds

log = logging.getLogger(__name__)

SPOT_POLL_S = 1.0  # EC2 posts the notice two minutes ahead; polling is cheap


def watch_spot(imds: Imds, stop: threading.Event, on_notice: Callable[[], None], *,
               poll_s: float = SPOT_POLL_S) -> threading.Thread:
    """Poll IMDS until ``stop`` is set; on a spot notice, call ``on_notice`` once and return.

    Returns
    -------
    threading.Thread
        The started daemon thread.
    """

    def loop() -> None:
        while not stop.wait(poll_s):
            if imds.spot_action():
                log.warning("spot interruption notice")
                on_notice()
                return

    thread = threading.Thread(target=loop, name="spot-watch", daemon=True)
    thread.start()
    return thread
