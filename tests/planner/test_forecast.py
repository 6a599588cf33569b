"""The exhaustion forecast's maths on synthetic histories with known answers."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from planner.forecast import (
    BAND_STEPS,
    LOOKAHEAD,
    MIN_POINTS,
    DemandPoint,
    Outlook,
    pool_forecast,
)

START = datetime(2026, 12, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
GRID = LOOKAHEAD / BAND_STEPS  # how finely the band's edges are found


def history(values: list[float], step: timedelta = HOUR) -> list[DemandPoint]:
    return [DemandPoint(at=START + step * i, slices=v) for i, v in enumerate(values)]


def forecast(values: list[float], *, capacity: int, slots_per_ip: int = 4, **kw: object):
    points = history(values)
    defaults: dict[str, object] = {
        "now": points[-1].at if points else START,
        "horizon": timedelta(days=7),
        "min_span": timedelta(hours=5),
    }
    defaults.update(kw)
    return pool_forecast(
        history=points,
        capacity=capacity,
        slots_per_ip=slots_per_ip,
        **defaults,  # type: ignore[arg-type]
    )


def linear(per_day: float, hours: int, start: float = 10.0) -> list[float]:
    return [start + per_day * h / 24 for h in range(hours + 1)]


def test_it_calls_a_flat_history_steady() -> None:
    result = forecast([10.0] * 48, capacity=20)
    assert result.outlook is Outlook.STEADY
    assert result.exhausts_at is None and result.earliest is None
    assert result.seconds_left == math.inf
    assert result.ips_needed == 0
    assert result.growth_per_day == 0


def test_it_projects_linear_growth_to_the_known_day() -> None:
    # 10 slices growing 2 a day for 3 days: 16 now, 20 (the capacity) in 2 days.
    result = forecast(linear(2, 72), capacity=20)
    assert result.outlook is Outlook.RUNS_OUT
    assert result.demand_now is not None and math.isclose(result.demand_now, 16)
    assert result.exhausts_at is not None
    assert abs(result.exhausts_at - (START + timedelta(days=5))) < timedelta(seconds=1)
    assert math.isclose(result.seconds_left or 0, 2 * 86400, rel_tol=1e-6)
    # No scatter: the band collapses onto the line (to the search grid).
    assert result.earliest is not None and result.latest is not None
    assert timedelta(0) <= result.earliest - result.exhausts_at < GRID
    assert timedelta(0) <= result.latest - result.exhausts_at < GRID
    # In 7 days demand is 30: 10 slices short, 3 IPs of 4 slots.
    assert result.ips_needed == 3


def test_it_fits_a_step_by_least_squares_and_widens_the_band() -> None:
    values = [10.0] * 24 + [15.0] * 24
    result = forecast(values, capacity=20)
    xs = [h / 24 for h in range(48)]
    mean_x, mean_y = sum(xs) / 48, sum(values) / 48
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    intercept = mean_y - slope * mean_x
    assert result.outlook is Outlook.RUNS_OUT
    assert result.growth_per_day is not None and math.isclose(result.growth_per_day, slope)
    expected = START + timedelta(days=(20 - intercept) / slope)
    assert result.exhausts_at is not None
    assert abs(result.exhausts_at - expected) < timedelta(seconds=1)
    assert result.earliest is not None and result.earliest < result.exhausts_at - GRID
    assert result.latest is None or result.latest > result.exhausts_at + GRID


def test_it_finds_the_trend_under_noise_within_its_band() -> None:
    rng = random.Random(18)
    values = [v + rng.gauss(0, 0.5) for v in linear(2, 7 * 24)]
    result = forecast(values, capacity=40)
    truth = START + timedelta(days=15)  # 10 + 2 x 15 = 40
    assert result.outlook is Outlook.RUNS_OUT
    assert result.exhausts_at is not None
    assert abs(result.exhausts_at - truth) < timedelta(hours=12)
    assert result.earliest is not None and result.latest is not None
    assert result.earliest <= truth <= result.latest


def test_it_says_not_enough_history_when_there_is_too_little() -> None:
    for values, span in [
        ([], timedelta(hours=5)),
        ([10.0] * (MIN_POINTS - 1), timedelta(hours=1)),
        ([10.0, 12.0, 14.0, 16.0, 18.0, 19.0, 19.5], timedelta(days=1)),
    ]:
        result = forecast(values, capacity=20, min_span=span)
        assert result.outlook is Outlook.NOT_ENOUGH_HISTORY, values
        assert result.seconds_left is None
        assert result.exhausts_at is None and result.ips_needed == 0


def test_it_calls_a_full_pool_exhausted_now() -> None:
    result = forecast(linear(2, 72, start=14), capacity=20)
    assert result.outlook is Outlook.EXHAUSTED
    assert result.seconds_left == 0
    assert result.exhausts_at == result.now


def test_it_calls_a_shrinking_pool_steady() -> None:
    result = forecast(linear(-1, 72, start=18), capacity=20)
    assert result.outlook is Outlook.STEADY
    assert result.exhausts_at is None


@given(
    per_day=st.floats(min_value=0.05, max_value=50),
    start=st.floats(min_value=0, max_value=100),
    room=st.integers(min_value=1, max_value=500),
    more=st.integers(min_value=0, max_value=500),
)
def test_it_matches_the_analytic_crossing_and_never_runs_out_sooner_with_more_room(
    per_day: float, start: float, room: int, more: int
) -> None:
    values = linear(per_day, 48, start=start)
    capacity = math.ceil(values[-1]) + room
    result = forecast(values, capacity=capacity)
    days = (capacity - start) / per_day
    if timedelta(days=days) - timedelta(days=2) > LOOKAHEAD:
        assert result.outlook is Outlook.STEADY
        return
    assert result.outlook is Outlook.RUNS_OUT
    assert result.exhausts_at is not None
    assert abs(result.exhausts_at - (START + timedelta(days=days))) < timedelta(seconds=60)
    roomier = forecast(values, capacity=capacity + more)
    assert roomier.exhausts_at is None or roomier.exhausts_at >= result.exhausts_at
    assert roomier.ips_needed <= result.ips_needed
