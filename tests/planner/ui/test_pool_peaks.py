"""Peak (1 h) of a pool: per slice the high-water of each minute, summed; never above 100 %."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import F, Sum
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.dashboard import _pool_peaks, pool_use_over_time
from planner.models import PortSlice, UsageSample
from tests.planner.ui.fixtures import UiSite

# (which slice, seconds ago, sockets as a share of the slice, 0-150 %)
samples = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 3599), st.floats(0, 1.5)),
    max_size=60,
)


def _warp_peak(site: UiSite, pattern: list[tuple[int, int, float]]) -> float | None:
    """Store ``pattern`` as the only usage history, then read the warp pool's peak."""
    UsageSample.objects.all().delete()
    now = timezone.now()
    # The pool's live slices, and one that has since been drained away (history outlives it).
    live = list(PortSlice.objects.filter(ip__pool=site.warp).select_related("ip", "machine"))
    gone = (live[0].ip.address, 57344, 65535, live[0].machine)
    places = [(s.ip.address, s.lo, s.hi, s.machine) for s in live] + [gone]
    UsageSample.objects.bulk_create(
        UsageSample(
            machine=machine,
            ip=ip,
            lo=lo,
            hi=hi,
            at=now - timedelta(seconds=ago),
            sockets=int(share * (hi - lo + 1)),
        )
        for index, ago, share in pattern
        for ip, lo, hi, machine in [places[index % len(places)]]
    )
    handed = PortSlice.objects.filter(ip__pool=site.warp).aggregate(
        ports=Sum(F("hi") - F("lo") + 1)
    )["ports"]
    slices = {site.warp.pk: (len(live), handed)}
    return _pool_peaks(site.datacenter, slices, now).get(site.warp.pk)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pattern=samples)
def test_a_pool_peak_is_never_above_100_percent(
    ui_site: UiSite, pattern: list[tuple[int, int, float]]
) -> None:
    peak = _warp_peak(ui_site, pattern)
    assert peak is None or 0 <= peak <= 1, (peak, pattern)
    assert (peak is None) == (not pattern)


def test_reports_every_10_seconds_count_once_a_minute(ui_site: UiSite) -> None:
    live = PortSlice.objects.filter(ip__pool=ui_site.warp).count()
    # The first slice full, reported every 10 s: whichever minutes they fall in, each
    # minute's high-water is one slice's worth (the old sum made it six).
    pattern = [(0, ago, 1.0) for ago in (0, 10, 20, 30, 40, 50)]
    peak = _warp_peak(ui_site, pattern)
    assert peak is not None and abs(peak - 1 / live) < 1e-9, (peak, live)


def test_use_over_time_takes_each_hours_high_water_and_leaves_silent_hours_blank(
    ui_site: UiSite,
) -> None:
    UsageSample.objects.all().delete()
    now = timezone.now()
    own = PortSlice.objects.filter(ip__pool=ui_site.warp).select_related("ip", "machine")[0]
    size = own.hi - own.lo + 1
    # Three hours ago: reports of 25 %, 75 % and 50 % of one slice; nothing since.
    at = now - timedelta(hours=3)
    UsageSample.objects.bulk_create(
        UsageSample(
            machine=own.machine, ip=own.ip.address, lo=own.lo, hi=own.hi,
            at=at.replace(minute=10 * n), sockets=size * share // 100,
        )
        for n, share in enumerate((25, 75, 50))
    )  # fmt: skip
    series = pool_use_over_time(datacenter=ui_site.datacenter, now=now)
    assert len(series.hours) == 24 and series.hours[-1] <= now
    warp = series.use[series.pools.index(ui_site.warp.key)]
    hour = series.hours.index(at.replace(minute=0, second=0, microsecond=0))
    handed = sum(s.hi - s.lo + 1 for s in PortSlice.objects.filter(ip__pool=ui_site.warp))
    # The slice's high-water (75 %, not the sum 150 %), over the pool's ports, as the peak.
    assert warp[hour] == round(size * 75 // 100 / handed, 4)
    assert [v for i, v in enumerate(warp) if i != hour] == [None] * 23
    cdn = series.use[series.pools.index(ui_site.cdn.key)]
    assert all(v is None or 0 <= v <= 1 for v in cdn)
