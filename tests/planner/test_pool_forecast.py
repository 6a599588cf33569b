"""The exhaustion forecast over the database: API, /metrics and the saturation metrics."""

from __future__ import annotations

import math
import re
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from planner import selectors
from planner.models import (
    ConfigBundle,
    EgressPool,
    Gateway,
    Machine,
    PortSlice,
    SliceUsage,
    UsageSample,
)
from planner.selectors import bundles_due
from planner.services.bundles import bundles_send
from tests.planner.conftest import Site
from tests.planner.factories import make_machine, make_pool

POOL = "fra1/warp/DE"


@pytest.fixture(autouse=True)
def _fresh_forecasts() -> None:
    # /metrics reuses the forecasts for a step; each test builds its own history.
    cache.clear()


def grow(site: Site, *, days: int) -> EgressPool:
    """One machine joins fra1's pool a day for ``days`` days before now (the site's
    three joined at the start): demand rises a slice a day towards 14 slots."""
    pool = site.datacenter.pools.get()
    start = timezone.now() - timedelta(days=days)
    Machine.objects.filter(pk__in=[m.pk for m in site.machines]).update(joined_at=start)
    for day in range(1, days + 1):
        machine = make_machine(f"grow{day}.fra1.example.net", datacenter=site.datacenter)
        machine.pools.add(pool)
        Machine.objects.filter(pk=machine.pk).update(joined_at=start + timedelta(days=day))
    return pool


def sample(text: str, name: str, pool: str = POOL) -> float | None:
    found = re.search(rf'^{name}{{pool="{re.escape(pool)}"}} (\S+)$', text, re.M)
    return None if found is None else float(found.group(1))


def test_it_forecasts_when_a_growing_pool_runs_out(
    clients: dict[str, APIClient], site: Site
) -> None:
    pool = grow(site, days=6)  # 3 → 9 machines: 1 a day, 14 slots
    response = clients["vera"].get(f"/api/v1/pools/{pool.pk}/forecast")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["pool"] == POOL and body["outlook"] == "runs_out"
    assert body["capacity"] == 14
    assert 0.8 < body["growth_per_day"] < 1.2
    # about 9 now, 14 in about 5 days (the staircase of joins fits a line a little off)
    assert 4 * 86400 < body["seconds_left"] < 7 * 86400
    assert body["earliest"] <= body["exhausts_at"]
    # 7 days on: about 16 slices needed, 2 past 14 slots: one IP of 7 slots
    assert body["ips_needed"] == 1
    assert body["summary"].startswith("runs out in about ")
    assert "1 more IP needed by" in body["summary"]


def test_it_says_not_enough_history_for_a_new_pool(
    clients: dict[str, APIClient], site: Site
) -> None:
    pool = site.datacenter.pools.get()
    body = clients["vera"].get(f"/api/v1/pools/{pool.pk}/forecast").json()
    assert body["outlook"] == "not_enough_history"
    assert body["seconds_left"] is None and body["exhausts_at"] is None
    assert body["summary"].startswith("not enough history")


def test_it_refuses_an_unknown_pool_and_an_anonymous_caller(
    clients: dict[str, APIClient], site: Site
) -> None:
    assert clients["vera"].get("/api/v1/pools/999999/forecast").status_code == 404
    pool = site.datacenter.pools.get()
    assert clients["anonymous"].get(f"/api/v1/pools/{pool.pk}/forecast").status_code in (401, 403)


def test_it_counts_hot_machines_as_needing_more_slices(site: Site) -> None:
    """A machine whose peak sockets would run its slices above ``hot`` needs more, up to
    its pool's growth ceiling; without a ceiling usage changes nothing."""
    pool = make_pool(datacenter=site.datacenter, purpose="cdn", slice_size=1000)
    pool.max_slices_per_machine = 3
    pool.save()
    machine = site.machines[0]
    machine.pools.add(pool)
    now = timezone.now().replace(minute=0, second=0, microsecond=0)  # on the hours' grid
    since = now - timedelta(hours=3)
    Machine.objects.filter(pk=machine.pk).update(joined_at=since)
    step = timedelta(hours=1)
    for hour, sockets in enumerate([100, 1700, 5000]):  # hot is 0.8: 800 sockets a slice
        UsageSample.objects.create(
            machine=machine, ip="192.0.2.9", lo=1024, hi=2023, sockets=sockets,
            at=since + step * hour + timedelta(minutes=30),
        )  # fmt: skip
    from tests.planner.factories import make_ip

    make_ip("192.0.2.9", pool=pool)
    ((_, outlook),) = selectors.pool_outlooks(pools=EgressPool.objects.filter(pk=pool.pk), now=now)
    members = {machine.pk: (since, 1)}
    peaks = selectors._forecast_peaks(since=since, step=step, ips=pool.ips.all())[pool.pk]
    history = selectors.pool_demand_history(
        pool=pool, members=members, peaks=peaks, hot=0.8, now=now, step=step, since=since
    )
    assert [point.slices for point in history] == [1, 3, 3]  # 1,700 → 3; 5,000 → ceiling 3
    assert outlook.points == 3


def test_metrics_carry_the_forecast_per_pool(site: Site) -> None:
    grow(site, days=6)
    steady = make_pool(datacenter=site.datacenter, purpose="cdn")
    Machine.objects.filter(pk=site.machines[0].pk).update(
        joined_at=timezone.now() - timedelta(days=3)
    )
    site.machines[0].pools.add(steady)
    from tests.planner.factories import make_ip

    make_ip("192.0.2.20", pool=steady)
    text = Client().get("/metrics").content.decode()
    pool = site.datacenter.pools.get(purpose="warp")
    api = selectors.pool_outlook(pool=pool).seconds_left
    left = sample(text, "portslice_pool_exhaustion_seconds")
    assert left is not None and api is not None and abs(left - api) < 60
    assert sample(text, "portslice_pool_forecast_ips_needed") == 1
    assert sample(text, "portslice_pool_exhaustion_seconds", "fra1/cdn/DE") == math.inf


def test_metrics_leave_out_a_pool_without_enough_history(site: Site) -> None:
    text = Client().get("/metrics").content.decode()
    assert sample(text, "portslice_pool_exhaustion_seconds") is None
    assert "# TYPE portslice_pool_exhaustion_seconds gauge" in text


def test_metrics_show_hot_slices_and_the_high_water_mark(site: Site) -> None:
    now = timezone.now()
    first, second = PortSlice.objects.filter(state="active").order_by("pk")[:2]
    size = first.hi - first.lo + 1
    SliceUsage.objects.create(slice=first, at=now, tcp=int(size * 0.9), udp=0)
    SliceUsage.objects.create(slice=second, at=now, tcp=int(size * 0.5), udp=0)
    UsageSample.objects.create(
        machine=first.machine, ip=first.ip.address, lo=first.lo, hi=first.hi,
        at=now - timedelta(minutes=5), sockets=int(size * 0.9),
    )  # fmt: skip
    text = Client().get("/metrics").content.decode()
    assert sample(text, "portslice_pool_slices_hot") == 1
    level = sample(text, "portslice_pool_utilization_high_water_ratio")
    held = sum(
        s.hi - s.lo + 1 for s in PortSlice.objects.filter(machine=first.machine, state="active")
    )
    assert level is not None and math.isclose(level, int(size * 0.9) / held, rel_tol=1e-6)


def test_metrics_show_delivery_lag(site: Site) -> None:
    now = timezone.now()
    Machine.objects.filter(pk=site.machines[0].pk).update(last_seen=now)
    bundle = ConfigBundle.objects.filter(machine=site.machines[1]).order_by("serial").first()
    assert bundle is not None
    ConfigBundle.objects.filter(pk=bundle.pk).update(created_at=now - timedelta(minutes=30))
    Gateway.objects.create(name="gw1", datacenter=site.datacenter, revision=0)
    text = Client().get("/metrics").content.decode()
    age = re.search(
        r'^portslice_bundle_oldest_unapplied_age_seconds\{datacenter="fra1"\} (\S+)$', text, re.M
    )
    assert age is not None and 1790 < float(age.group(1)) < 1900
    assert 'portslice_gateway_revision_lag{datacenter="fra1",gateway="gw1"} 1.0' in text
    assert re.search(r'^portslice_reconcile_backlog_bundles\{datacenter="fra1"\} 3.0$', text, re.M)
    # Sent and never answered: the two agents that never reported (resends back off).
    bundles_send(bundles=bundles_due(), send=lambda hostname, token: None)
    text = Client().get("/metrics").content.decode()
    assert 'portslice_machines_never_seen{datacenter="fra1"} 2.0' in text


def test_metrics_reuse_the_forecast_for_a_step(site: Site) -> None:
    before = Client().get("/metrics").content.decode()
    assert sample(before, "portslice_pool_exhaustion_seconds") is None  # not enough history
    grow(site, days=6)
    again = Client().get("/metrics").content.decode()
    assert sample(again, "portslice_pool_exhaustion_seconds") is None  # the same step
    cache.delete(selectors.RECENT_OUTLOOKS_KEY)  # the step is over
    later = Client().get("/metrics").content.decode()
    assert sample(later, "portslice_pool_exhaustion_seconds") is not None


@pytest.mark.parametrize("machines", [3, 30])
def test_the_forecast_costs_a_fixed_number_of_queries(site: Site, machines: int) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for n in range(machines):
        make_pool(datacenter=site.datacenter, purpose=f"p{n}")
    with CaptureQueriesContext(connection) as queries:
        selectors.pool_outlooks()
    # 12: the members' join times read once per machine, not per membership (one
    # query more than before, 0.15 s less at 40,000 memberships).
    assert len(queries) <= 12
