"""Prices: the spot price from EC2's history (real API calls to a moto server), cached per hour;
on-demand instances and missing history priced from the dated list."""

from __future__ import annotations

import pytest

from aws_server import moto_stack
from ctfleet.aws.pricing import ON_DEMAND_AS_OF, ON_DEMAND_USD_PER_HOUR, Prices
from ctfleet.settings import Settings


@pytest.fixture(scope="module")
def ec2():
    with moto_stack(Settings(stack="ctfprice")) as s:
        yield s.clients.ec2


def test_a_spot_instance_pays_the_spot_price_from_the_history(ec2):
    price = Prices(ec2, fallback_usd_per_hour=0.45).per_hour("g5.xlarge", "us-east-1a", "spot")
    assert price.source == "spot_history" and 0 < price.usd_per_hour < ON_DEMAND_USD_PER_HOUR["g5.xlarge"]


def test_an_on_demand_instance_pays_the_dated_list_price(ec2):
    price = Prices(ec2, fallback_usd_per_hour=0.45).per_hour("g5.xlarge", "us-east-1a", "on-demand")
    assert price.usd_per_hour == ON_DEMAND_USD_PER_HOUR["g5.xlarge"] and price.source.endswith(ON_DEMAND_AS_OF)


def test_no_history_falls_back_to_the_list_and_unknown_types_to_the_setting(ec2):
    prices = Prices(ec2, fallback_usd_per_hour=0.45)
    assert prices.per_hour("x9.nonexistent", "us-east-1a", "spot").usd_per_hour == 0.45
    assert prices.per_hour("x9.nonexistent", "us-east-1a", "spot").source.startswith("on_demand_table")


def test_spot_prices_are_looked_up_once_an_hour(ec2):
    calls = []

    class Counting:
        def describe_spot_price_history(self, **kwargs):
            calls.append(kwargs)
            return ec2.describe_spot_price_history(**kwargs)

    now = [1_800_000_000.0]
    prices = Prices(Counting(), fallback_usd_per_hour=0.45, clock=lambda: now[0])
    first = prices.per_hour("g5.xlarge", "us-east-1a", "spot")
    now[0] += 3599
    assert prices.per_hour("g5.xlarge", "us-east-1a", "spot") == first and len(calls) == 1
    now[0] += 2
    prices.per_hour("g5.xlarge", "us-east-1a", "spot")
    assert len(calls) == 2
