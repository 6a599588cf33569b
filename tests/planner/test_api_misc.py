"""The docs page works offline, the geofeed is public RFC 8805, metrics count what is there."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from planner.models import ConfigBundle, PortSlice
from tests.planner.conftest import Site

pytestmark = pytest.mark.django_db


def test_the_docs_page_loads_every_asset_from_this_server(site: Site) -> None:
    client = Client()
    client.force_login(_admin())
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(not a.startswith(("http://", "https://", "//")) for a in assets), assets
    for asset in assets:
        if asset.startswith("/static/"):
            assert client.get(asset).status_code == 200, asset


def _admin() -> Any:
    from django.contrib.auth.models import User

    return User.objects.create_superuser("docs", password="unused-Pa55")


def test_the_geofeed_is_public_csv(site: Site) -> None:
    response = APIClient().get("/api/v1/geofeed.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = [ln for ln in response.content.decode().splitlines() if not ln.startswith("#")]
    assert rows == ["192.0.2.1/32,DE,,,", "2001:db8::1/128,DE,,,"]


def test_metrics_count_slices_headroom_and_pending_bundles(site: Site) -> None:
    text = Client().get("/metrics").content.decode()
    live = PortSlice.objects.filter(state="active").count()
    assert f'portslice_slices{{datacenter="fra1",state="active"}} {live}.0' in text
    # 2 IPs x 7 slots of 8,192 ports, 3 machines with one slice each
    assert 'portslice_pool_free_slots{pool="fra1/warp/DE"} 11.0' in text
    assert 'portslice_pool_unserved_machines{pool="fra1/warp/DE"} 0.0' in text
    pending = ConfigBundle.objects.filter(status="pending").count()
    assert f'portslice_bundles_pending{{status="pending"}} {pending}.0' in text


def test_metrics_can_require_a_token(site: Site, settings: object) -> None:
    settings.METRICS_TOKEN = "scrape-secret"  # type: ignore[attr-defined]
    assert Client().get("/metrics").status_code == 401
    ok = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret")
    assert ok.status_code == 200


def test_an_unknown_api_path_is_a_json_404(site: Site) -> None:
    response = Client().get("/api/v1/nothing-here")
    assert response.status_code == 404 and response.json()["detail"].startswith("No such")


def test_metrics_say_how_many_ips_a_short_pool_needs(site: Site) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.planner.factories import make_machine

    pool = site.datacenter.pools.get()
    for n in range(20):  # joined after the plan: no slices yet
        make_machine(f"new{n}.fra1.example.net", datacenter=site.datacenter).pools.add(pool)
    with CaptureQueriesContext(connection) as queries:
        text = Client().get("/metrics").content.decode()
    assert 'portslice_pool_unserved_machines{pool="fra1/warp/DE"} 20.0' in text
    # 20 unserved, 11 free slots: 9 more slots, at 7 an IP.
    assert 'portslice_pool_ips_needed{pool="fra1/warp/DE"} 2.0' in text
    assert len(queries) < 16  # a fixed number, not a few per pool (or per machine)


def test_metrics_hold_to_the_allocators_figures_with_reserved_ports_and_weights(
    site: Site,
) -> None:
    from planner.models import EgressIP, Machine
    from planner.services.plans import plan_preview
    from tests.planner.factories import make_machine

    pool = site.datacenter.pools.get()
    free_lo = max(PortSlice.objects.filter(ip__address="192.0.2.1").values_list("hi", flat=True))
    EgressIP.objects.filter(address="192.0.2.1").update(reserved_ports=[free_lo + 100])
    Machine.objects.filter(pk=site.machines[0].pk).update(weight=2)
    for n in range(12):
        make_machine(f"w{n}.fra1.example.net", datacenter=site.datacenter, weight=2).pools.add(pool)
    text = Client().get("/metrics").content.decode()
    preview = plan_preview(datacenter=site.datacenter)
    (short,) = preview.shortfalls
    # 14 slots less one spoilt by the reserved port, 3 taken: 10 free; 26 slices due
    # to the newcomers and 1 more to edge0: 17 more slots, 7 to an IP: 3 IPs.
    assert 'portslice_pool_free_slots{pool="fra1/warp/DE"} 10.0' in text
    assert 'portslice_pool_unserved_machines{pool="fra1/warp/DE"} 13.0' in text
    assert short.ips_needed == 3
    assert f'portslice_pool_ips_needed{{pool="fra1/warp/DE"}} {short.ips_needed}.0' in text


def test_a_deadlock_or_lock_timeout_the_database_broke_answers_409_not_500() -> None:
    from django.db import OperationalError
    from psycopg import errors

    from planner.api.exceptions import handle

    for cause in (errors.DeadlockDetected("deadlock detected"), errors.LockNotAvailable("x")):
        error = OperationalError(str(cause))
        error.__cause__ = cause
        response = handle(error, {})
        assert response is not None and response.status_code == 409
    plain = OperationalError("server closed the connection")
    assert handle(plain, {}) is None  # not a conflict: stays a server error
