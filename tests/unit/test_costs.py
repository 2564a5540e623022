"""Finance's figures: direct, interrupted, overhead and fully loaded cost per study, from known
prices and durations; the month's studies carry exactly the ledger's total."""

from __future__ import annotations

import calendar
from decimal import Decimal

import pytest

from ctfleet.aws.costs import allocate, instance_cost, month_bounds
from ctfleet.errors import BadInput

DEC_1 = calendar.timegm((2026, 12, 1, 0, 0, 0))
DAY = 86400.0

# Two instances launched in December 2026: an on-demand g4dn.xlarge and a spot one that was reclaimed.
LEDGER = [
    {"instance_id": "i-od", "month": "2026-12", "price_per_hour_usd": 0.526,
     "boot_s": 60.0, "busy_s": 600.0, "idle_s": 300.0, "interrupted_s": 0.0, "jobs": 4},
    {"instance_id": "i-spot", "month": "2026-12", "price_per_hour_usd": 0.2,
     "boot_s": 90.0, "busy_s": 100.0, "idle_s": 50.0, "interrupted_s": 120.0, "jobs": 1},
    {"instance_id": "i-nov", "month": "2026-11", "price_per_hour_usd": 0.526, "boot_s": 60.0, "busy_s": 6000.0},
]
FLEET_USD = Decimal("960") * Decimal("0.526") / 3600 + Decimal("360") * Decimal("0.2") / 3600


def study(key: str, facility: str, day: int, gpu_s: float, price: float, **extra) -> dict:
    return {"study_key": key, "facility": facility, "status": "DONE", "done_at": DEC_1 + day * DAY + 3600,
            "gpu_seconds": gpu_s, "cost_usd": Decimal(f"{gpu_s / 3600 * price:.9f}"), **extra}


STUDIES = [
    study("a1", "north", 0, 150.0, 0.526),
    study("a2", "north", 0, 150.0, 0.526),
    study("a3", "south", 1, 150.0, 0.526),
    # Handed back by the reclaimed spot instance after 120 s, finished on the on-demand one.
    study("a4", "south", 2, 150.0, 0.526, interrupted_s=120.0, interrupted_nano_usd=round(120 / 3600 * 0.2 * 1e9)),
    study("b1", "north", 2, 100.0, 0.2),
    {**study("x1", "north", 3, 10.0, 0.526), "status": "FAILED"},  # not finished: carries nothing
    {**study("x2", "north", 0, 10.0, 0.526), "done_at": DEC_1 - 10},  # November's
]


def test_the_month_s_studies_carry_exactly_the_ledger_s_total():
    report = allocate("2026-12", LEDGER, STUDIES)
    assert report.instances == 2
    assert report.fleet_usd == FLEET_USD.quantize(Decimal("0.000000001"))
    assert [s.study_key for s in report.studies] == ["a1", "a2", "a3", "a4", "b1"]
    assert sum(s.loaded_usd for s in report.studies) == report.fleet_usd
    assert report.unallocated_usd == 0
    for s in report.studies:
        assert s.loaded_usd == s.direct_usd + s.interrupted_usd + s.overhead_usd


def test_interrupted_work_is_charged_to_the_study_it_was_for():
    by_key = {s.study_key: s for s in allocate("2026-12", LEDGER, STUDIES).studies}
    a3, a4 = by_key["a3"], by_key["a4"]
    assert a4.interrupted_usd == Decimal("0.006666667")  # 120 s at 0.20 USD/h
    assert a4.direct_usd == a3.direct_usd and a4.overhead_usd == pytest.approx(a3.overhead_usd, abs=Decimal("1e-9"))
    assert a4.loaded_usd - a3.loaded_usd == pytest.approx(a4.interrupted_usd, abs=Decimal("2e-9"))


def test_overhead_is_shared_in_proportion_to_direct_cost():
    report = allocate("2026-12", LEDGER, STUDIES)
    by_key = {s.study_key: s for s in report.studies}
    ratio = by_key["a1"].overhead_usd / by_key["b1"].overhead_usd
    assert float(ratio) == pytest.approx(float(by_key["a1"].direct_usd / by_key["b1"].direct_usd), rel=1e-6)


def test_rows_by_facility_and_day_add_up_to_the_same_total():
    report = allocate("2026-12", LEDGER, STUDIES)
    by_facility = report.rows("facility")
    assert [r["facility"] for r in by_facility] == ["north", "south"]
    assert [r["studies"] for r in by_facility] == [3, 2]
    assert sum(Decimal(r["loaded_usd"]) for r in by_facility) == report.fleet_usd
    by_day = report.rows("day")
    assert [r["day"] for r in by_day] == ["2026-12-01", "2026-12-02", "2026-12-03"]
    assert sum(Decimal(r["loaded_usd"]) for r in by_day) == report.fleet_usd
    south = report.to_json("study", facility="south")
    assert [r["study_key"] for r in south["rows"]] == ["a3", "a4"] and "fleet_usd" not in south
    assert Decimal(report.to_json("facility")["fleet_usd"]) == report.fleet_usd


def test_a_month_of_fleet_time_without_a_finished_study_is_unallocated():
    report = allocate("2026-12", LEDGER, [])
    assert report.unallocated_usd == report.fleet_usd > 0 and report.rows("facility") == []
    assert instance_cost(LEDGER[2]) == Decimal("0.885433333")


@pytest.mark.parametrize("month", ["2026-13", "26-12", "", None, "2026-1"])
def test_a_malformed_month_is_refused(month):
    with pytest.raises(BadInput):
        allocate(month, LEDGER, STUDIES)
    with pytest.raises(BadInput):
        allocate("2026-12", LEDGER, STUDIES).rows("week")


def test_month_bounds_cross_the_year():
    start, end = month_bounds("2026-12")
    assert start == DEC_1 and end == calendar.timegm((2027, 1, 1, 0, 0, 0))
