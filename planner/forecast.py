"""When a pool runs out of free slots: a straight-line forecast of its demand.

Pure maths (no Django, no database): :func:`planner.selectors.pool_demand_history`
builds the history, this module fits it. The method (docs/design.md,
"Forecasting exhaustion"):

- ``demand`` at each point of the history is the slices the pool's machines
  need: every machine that had joined by then needs its base slices, and more
  when its high-water sockets would run its slices above the hot threshold.
- An ordinary least-squares line through those points; its slope is the growth.
- The pool runs out when the line reaches ``capacity`` (the slots of its active
  IPs). The band is where the 95 % prediction interval of the line reaches it:
  ``earliest`` when the upper edge does, ``latest`` when the lower edge does
  (``None``: not within the look-ahead, or never).
- IPs needed by the horizon: the line's demand at ``now + horizon`` less the
  capacity, in IPs of the pool's typical size, rounded up.

The standard library's ``statistics`` does the fit: a few hundred points need
no numpy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

# Fewer points than this, or a shorter span, is "not enough history".
MIN_POINTS = 6
# The prediction band's half-width in residual standard errors (about 95 %).
BAND_Z = 1.96
# How far ahead exhaustion is looked for; beyond it a pool "does not run out".
LOOKAHEAD = timedelta(days=365)
# The band edges are found on a grid this fine over the look-ahead.
BAND_STEPS = 4096


class Outlook(StrEnum):
    """What the forecast could say about a pool."""

    NOT_ENOUGH_HISTORY = "not_enough_history"
    EXHAUSTED = "exhausted"
    RUNS_OUT = "runs_out"
    STEADY = "steady"


@dataclass(frozen=True)
class DemandPoint:
    """Slices the pool's machines needed at one time."""

    at: datetime
    slices: float


@dataclass(frozen=True)
class Projected:
    """The fitted demand at one future time, with the band's edges."""

    at: datetime
    slices: float
    low: float
    high: float


# Points of the projection a chart draws.
PROJECTION_POINTS = 16


@dataclass(frozen=True)
class PoolForecast:
    """A pool's forecast; every time is absolute (UTC), every count in slices or IPs."""

    outlook: Outlook
    now: datetime
    capacity: int
    demand_now: float | None = None
    growth_per_day: float | None = None
    exhausts_at: datetime | None = None
    earliest: datetime | None = None
    latest: datetime | None = None
    horizon_at: datetime | None = None
    ips_needed: int = 0
    points: int = 0
    #: The demand history the fit used, and the line ahead with its band (for charts).
    history: tuple[DemandPoint, ...] = ()
    projection: tuple[Projected, ...] = ()

    @property
    def seconds_left(self) -> float | None:
        """Seconds until the pool runs out: 0 when it has, ``inf`` when steady,
        ``None`` when there is not enough history to say."""
        if self.outlook is Outlook.EXHAUSTED:
            return 0.0
        if self.outlook is Outlook.STEADY:
            return math.inf
        if self.exhausts_at is None:
            return None
        return max((self.exhausts_at - self.now).total_seconds(), 0.0)

    @property
    def summary(self) -> str:
        """The forecast in words: "runs out in about 9 days; 2 more IPs needed by 2026-12-14"."""
        if self.outlook is Outlook.NOT_ENOUGH_HISTORY:
            return f"not enough history ({self.points} points)"
        needed = ""
        if self.ips_needed and self.horizon_at is not None:
            plural = "s" if self.ips_needed > 1 else ""
            needed = f"; {self.ips_needed} more IP{plural} needed by {self.horizon_at:%Y-%m-%d}"
        if self.outlook is Outlook.EXHAUSTED:
            return "out of free slots now" + needed
        if self.outlook is Outlook.STEADY:
            return "not running out" + needed
        return f"runs out in about {_duration(self.seconds_left or 0.0)}" + needed

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: ``seconds_left`` is null unless the pool runs out (JSON has no inf)."""
        left = self.seconds_left
        return {
            "outlook": self.outlook.value,
            "now": self.now,
            "capacity": self.capacity,
            "demand_now": self.demand_now,
            "growth_per_day": self.growth_per_day,
            "exhausts_at": self.exhausts_at,
            "seconds_left": left if left is not None and math.isfinite(left) else None,
            "earliest": self.earliest,
            "latest": self.latest,
            "horizon_at": self.horizon_at,
            "ips_needed": self.ips_needed,
            "points": self.points,
            "summary": self.summary,
        }


def _duration(seconds: float) -> str:
    """Seconds as a person reads them: "9 days", "5 hours", "40 minutes"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = round(seconds / size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return "under a minute"


@dataclass(frozen=True)
class _Line:
    """A least-squares line over time in days since ``origin``, with its spread."""

    origin: datetime
    intercept: float
    slope: float
    residual: float  # standard error of the residuals
    mean_x: float
    sxx: float
    n: int

    def at(self, when: datetime) -> float:
        return self.intercept + self.slope * _days(self.origin, when)

    def half_band(self, when: datetime) -> float:
        x = _days(self.origin, when)
        spread = 1 + 1 / self.n + (x - self.mean_x) ** 2 / self.sxx
        return BAND_Z * self.residual * math.sqrt(spread)


def pool_forecast(
    *,
    history: Sequence[DemandPoint],
    capacity: int,
    slots_per_ip: int,
    now: datetime,
    horizon: timedelta,
    min_span: timedelta,
) -> PoolForecast:
    """The forecast of one pool from its demand ``history`` (any order).

    ``capacity`` is the slots the pool's active IPs hold, ``slots_per_ip`` the
    slots of its typical IP; ``horizon`` is how far ahead ``ips_needed`` looks.
    A history of fewer than :data:`MIN_POINTS` points, or spanning less than
    ``min_span``, says :attr:`Outlook.NOT_ENOUGH_HISTORY`.
    """
    points = sorted(history, key=lambda point: point.at)
    base = PoolForecast(
        outlook=Outlook.NOT_ENOUGH_HISTORY,
        now=now,
        capacity=capacity,
        points=len(points),
        history=tuple(points),
    )
    span = points[-1].at - points[0].at if points else timedelta(0)
    if len(points) < MIN_POINTS or span < min_span or span <= timedelta(0):
        return base
    line = _fit(points)
    horizon_at = now + horizon
    fitted = PoolForecast(
        outlook=Outlook.STEADY,
        now=now,
        capacity=capacity,
        demand_now=line.at(now),
        growth_per_day=line.slope,
        horizon_at=horizon_at,
        ips_needed=_ips_short(line.at(horizon_at), capacity, slots_per_ip),
        points=len(points),
        history=tuple(points),
    )
    if points[-1].slices >= capacity:
        return replace(fitted, outlook=Outlook.EXHAUSTED, exhausts_at=now, earliest=now)
    central = _crossing(line, capacity, now)
    earliest = _first_reach(line, capacity, now, edge=+1)
    latest = _first_reach(line, capacity, now, edge=-1)
    ahead = _projection(line, now, max(horizon_at, min(central or now, now + 2 * horizon)))
    if central is None:
        return replace(fitted, earliest=earliest, projection=ahead)
    return replace(
        fitted,
        outlook=Outlook.RUNS_OUT,
        exhausts_at=central,
        earliest=earliest,
        latest=latest,
        projection=ahead,
    )


def _days(origin: datetime, when: datetime) -> float:
    return (when - origin).total_seconds() / 86400


def _fit(points: Sequence[DemandPoint]) -> _Line:
    origin = points[0].at
    xs = [_days(origin, point.at) for point in points]
    ys = [point.slices for point in points]
    slope, intercept = statistics.linear_regression(xs, ys)
    residuals = [y - (intercept + slope * x) for x, y in zip(xs, ys, strict=True)]
    n = len(points)
    residual = math.sqrt(sum(r * r for r in residuals) / (n - 2))
    mean_x = statistics.fmean(xs)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    return _Line(origin, intercept, slope, residual, mean_x, sxx, n)


def _projection(line: _Line, now: datetime, until: datetime) -> tuple[Projected, ...]:
    step = (until - now) / (PROJECTION_POINTS - 1)
    ahead = []
    for i in range(PROJECTION_POINTS):
        when = now + step * i
        slices, half = line.at(when), line.half_band(when)
        ahead.append(Projected(when, slices, max(slices - half, 0.0), slices + half))
    return tuple(ahead)


def _crossing(line: _Line, capacity: int, now: datetime) -> datetime | None:
    """When the fitted line itself reaches ``capacity`` (now if it already has)."""
    if line.at(now) >= capacity:
        return now
    if line.slope <= 0:
        return None
    when = line.origin + timedelta(days=(capacity - line.intercept) / line.slope)
    return when if when - now <= LOOKAHEAD else None


def _first_reach(line: _Line, capacity: int, now: datetime, *, edge: int) -> datetime | None:
    """The first time within the look-ahead that an edge of the band (+1 upper,
    -1 lower) reaches ``capacity``; the band is not a line, so it is searched."""
    step = LOOKAHEAD / BAND_STEPS
    for i in range(BAND_STEPS + 1):
        when = now + step * i
        if line.at(when) + edge * line.half_band(when) >= capacity:
            return when
    return None


def _ips_short(demand: float, capacity: int, slots_per_ip: int) -> int:
    """IPs of ``slots_per_ip`` slots that would hold the demand past capacity."""
    short = math.ceil(demand - capacity - 1e-9)
    if short <= 0:
        return 0
    return math.ceil(short / max(slots_per_ip, 1))
