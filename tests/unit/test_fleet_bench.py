"""The fleet bench's one computed figure: how much of a worker's time the model sat idle."""

from __future__ import annotations

import pytest

from ctfleet.dev.fleet_bench import analysis_idle


def test_idle_is_the_gaps_between_analyses_over_the_span_from_first_start_to_last_end():
    records = [{"analysis_started_at": 1.5, "analysis_ended_at": 2.5}, {"analysis_started_at": 0, "analysis_ended_at": 1}]
    assert analysis_idle(records) == pytest.approx(0.2)
    assert analysis_idle(records[:1]) == 0.0
    back_to_back = [{"analysis_started_at": t, "analysis_ended_at": t + 1} for t in range(5)]
    assert analysis_idle(back_to_back) == pytest.approx(0.0)
