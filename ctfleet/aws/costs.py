"""What each study cost: direct GPU cost and fully loaded cost, from the cost ledger and the studies.

For one month (UTC):

- the fleet's total is every ledger entry of an instance launched that month: its boot,
  busy, idle and interrupted seconds at the hourly price it paid;
- a study's **direct** cost is what its worker recorded when it finished it: the instance's
  seconds on the study (read, model, write) at that price (``cost_usd``);
- its **interrupted** cost is the work other instances did on it before a spot reclaim or a
  stop handed it back (``interrupted_nano_usd``, recorded by the hand-back): it is charged to the
  study it was for;
- the rest of the total (boot, idle, work interrupted on studies that have not finished yet,
  and the overlap of a worker's stages, which makes direct seconds add up to more than busy
  seconds) is **overhead**, shared out over the month's finished studies in proportion to
  their direct cost, so that every facility carries the overhead its use of the fleet causes.

So fully loaded = direct + interrupted + share of overhead, and the sum over the month's
studies equals the ledger's total for the month to the nano-dollar (the last study takes the
rounding remainder). A month with fleet time but no finished study reports the whole total
as ``unallocated``. The studies of a month are those DONE in it; instances belong to the
month they were launched in (an instance running across midnight at a month's end counts
wholly in the month it started).
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from ctfleet.contracts import Reason, Status
from ctfleet.errors import BadInput

NANO = Decimal("0.000000001")
BY = ("facility", "study", "day")


def check_month(month: object) -> str:
    if not isinstance(month, str) or not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise BadInput(Reason.BAD_REQUEST, "month must be YYYY-MM")
    return month


def month_bounds(month: str) -> tuple[float, float]:
    """Epoch seconds of the month's first instant and of the next month's (UTC)."""
    year, mon = int(month[:4]), int(month[5:])
    start = calendar.timegm((year, mon, 1, 0, 0, 0))
    end = calendar.timegm((year + mon // 12, mon % 12 + 1, 1, 0, 0, 0))
    return float(start), float(end)


def _usd(value: Any) -> Decimal:
    return Decimal(str(value or 0)).quantize(NANO, ROUND_HALF_EVEN)


def instance_cost(entry: dict[str, Any]) -> Decimal:
    """One ledger entry's cost: every second of the instance at its hourly price."""
    seconds = sum(Decimal(str(entry.get(k) or 0)) for k in ("boot_s", "busy_s", "idle_s", "interrupted_s"))
    return (seconds * Decimal(str(entry.get("price_per_hour_usd") or 0)) / 3600).quantize(NANO, ROUND_HALF_EVEN)


@dataclass(frozen=True)
class StudyCost:
    study_key: str
    facility: str
    day: str  # YYYY-MM-DD of done_at (UTC)
    gpu_seconds: float
    direct_usd: Decimal
    interrupted_usd: Decimal
    overhead_usd: Decimal
    loaded_usd: Decimal


@dataclass
class CostReport:
    month: str
    fleet_usd: Decimal  # the ledger's total for the month
    instances: int
    studies: list[StudyCost] = field(default_factory=list)
    unallocated_usd: Decimal = Decimal(0)

    def rows(self, by: str, *, facility: str | None = None) -> list[dict[str, Any]]:
        """The studies (of one facility, if given) summed by ``facility``, ``day`` or one row per ``study``."""
        if by not in BY:
            raise BadInput(Reason.BAD_REQUEST, f"by must be one of {', '.join(BY)}")
        studies = [s for s in self.studies if facility is None or s.facility == facility]
        if by == "study":
            return [_row({"study_key": s.study_key, "facility": s.facility, "day": s.day}, [s]) for s in studies]
        groups: dict[str, list[StudyCost]] = {}
        for s in studies:
            groups.setdefault(s.facility if by == "facility" else s.day, []).append(s)
        return [_row({by: k}, v) for k, v in sorted(groups.items())]

    def to_json(self, by: str, *, facility: str | None = None) -> dict[str, Any]:
        rows = self.rows(by, facility=facility)
        out: dict[str, Any] = {"month": self.month, "by": by, "rows": rows,
                               "total_loaded_usd": _money(sum((Decimal(r["loaded_usd"]) for r in rows), Decimal(0)))}
        if facility is None:  # the fleet's figures span every facility: for operators only
            out.update(fleet_usd=_money(self.fleet_usd), instances=self.instances,
                       unallocated_usd=_money(self.unallocated_usd))
        return out


def _money(value: Decimal) -> str:
    """Fixed-point to the nano-dollar, never exponent form ("0.000000005", not "5E-9")."""
    return f"{value.quantize(NANO, ROUND_HALF_EVEN):f}"


def _row(keys: dict[str, Any], studies: list[StudyCost]) -> dict[str, Any]:
    def total(name: str) -> str:
        return _money(sum((getattr(s, name) for s in studies), Decimal(0)))

    return {**keys, "studies": len(studies), "gpu_seconds": round(sum(s.gpu_seconds for s in studies), 3),
            "direct_usd": total("direct_usd"), "interrupted_usd": total("interrupted_usd"),
            "overhead_usd": total("overhead_usd"), "loaded_usd": total("loaded_usd")}


def allocate(month: str, entries: Iterable[dict[str, Any]], studies: Iterable[dict[str, Any]]) -> CostReport:
    """The month's report from its ledger entries and its DONE studies (other records are ignored)."""
    start, end = month_bounds(check_month(month))
    entries = [e for e in entries if e.get("month") == month]
    done = sorted((s for s in studies if s.get("status") == Status.DONE and start <= float(s.get("done_at", 0)) < end),
                  key=lambda s: (float(s["done_at"]), str(s["study_key"])))
    fleet = sum((instance_cost(e) for e in entries), Decimal(0))
    report = CostReport(month, fleet, len(entries))
    if not done:
        report.unallocated_usd = fleet
        return report
    direct = [_usd(s.get("cost_usd")) for s in done]
    interrupted = [(Decimal(int(s.get("interrupted_nano_usd") or 0)) * NANO).quantize(NANO) for s in done]
    overhead = fleet - sum(direct, Decimal(0)) - sum(interrupted, Decimal(0))
    weights = direct if sum(direct, Decimal(0)) > 0 else [Decimal(1)] * len(done)
    weight_total = sum(weights, Decimal(0))
    shares = [(overhead * w / weight_total).quantize(NANO, ROUND_HALF_EVEN) for w in weights]
    shares[-1] += overhead - sum(shares, Decimal(0))  # the rounding remainder: the sum is exact
    for s, d, u, o in zip(done, direct, interrupted, shares):
        report.studies.append(StudyCost(
            study_key=str(s["study_key"]), facility=str(s.get("facility", "")),
            day=time.strftime("%Y-%m-%d", time.gmtime(float(s["done_at"]))),
            gpu_seconds=float(s.get("gpu_seconds") or 0), direct_usd=d, interrupted_usd=u, overhead_usd=o,
            loaded_usd=d + u + o))
    return report


def read_report(ledger: Any, studies: Any, month: str) -> CostReport:
    """The report from the tables (:class:`ctfleet.aws.records.Table` of the ledger and the studies).

    Both are scanned: fine for an operator's monthly report; a (facility, month) index on the
    studies would serve a fleet of millions of studies a month.
    """
    check_month(month)
    return allocate(month, ledger.scan(where=("month", month)), studies.scan())
