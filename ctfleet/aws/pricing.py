"""What an instance costs per hour: the spot price actually paid, or the on-demand list price.

Spot prices come from the EC2 API's spot price history for the instance's type and
zone, looked up once per hour per (type, zone). On-demand instances, and spot ones
whose history cannot be read, are priced from :data:`ON_DEMAND_USD_PER_HOUR`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ctfleet.errors import CtfleetError

from .failures import retrying, sorted_errors

log = logging.getLogger(__name__)

# us-east-1 Linux on-demand list prices (USD per hour), as published by AWS on this date.
ON_DEMAND_AS_OF = "2025-01-01"
ON_DEMAND_USD_PER_HOUR = {
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g6.xlarge": 0.8048,
}
CACHE_S = 3600.0


@dataclass(frozen=True)
class Price:
    """USD per hour and where the figure came from (``spot_history`` or ``on_demand_table@<date>``)."""

    usd_per_hour: float
    source: str


class Prices:
    """Hourly prices of instances, spot from the EC2 API (cached per hour), on demand from the table.

    Parameters
    ----------
    ec2 : boto3 EC2 client
    fallback_usd_per_hour : float
        The price of a type the table does not list.
    clock : callable
        Epoch seconds (tests pass their own).
    """

    def __init__(self, ec2: Any, *, fallback_usd_per_hour: float, clock: Callable[[], float] = time.time) -> None:
        self.ec2 = ec2
        self.fallback = fallback_usd_per_hour
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, Price]] = {}
        self._lock = threading.Lock()

    def on_demand(self, instance_type: str) -> Price:
        return Price(ON_DEMAND_USD_PER_HOUR.get(instance_type, self.fallback), f"on_demand_table@{ON_DEMAND_AS_OF}")

    def per_hour(self, instance_type: str, zone: str, market: str) -> Price:
        """The hourly price of one instance (``market``: ``spot`` or ``on-demand``, as IMDS names it)."""
        if market != "spot":
            return self.on_demand(instance_type)
        now = self.clock()
        with self._lock:
            cached = self._cache.get((instance_type, zone))
        if cached and now - cached[0] < CACHE_S:
            return cached[1]
        try:
            price = Price(self._spot(instance_type, zone, now), "spot_history")
        except (CtfleetError, LookupError, ValueError) as exc:
            log.warning("spot price history unavailable; on-demand price used",
                        extra={"instance_type": instance_type, "zone": zone, "error": type(exc).__name__})
            price = self.on_demand(instance_type)
        with self._lock:
            self._cache[(instance_type, zone)] = (now, price)
        return price

    @retrying
    def _spot(self, instance_type: str, zone: str, now: float) -> float:
        with sorted_errors("ec2:spot-price-history"):
            out = self.ec2.describe_spot_price_history(
                InstanceTypes=[instance_type], ProductDescriptions=["Linux/UNIX"], StartTime=now - CACHE_S,
                EndTime=now, **({"AvailabilityZone": zone} if zone else {}))
        history = out["SpotPriceHistory"]
        latest = max(history, key=lambda h: str(h.get("Timestamp", "")))  # ValueError when empty
        return float(latest["SpotPrice"])
