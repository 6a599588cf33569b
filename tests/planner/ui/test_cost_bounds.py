"""Finding 4 and 5 of issue 15: one request cannot cost unbounded memory or time.

The what-if refuses a question past what the pool could ever hold (or the
absolute cap) before planning anything; an import refuses documents past the
byte, line and record caps, expands a geofeed prefix only up to a /24 unless an
admin opts in, reads reserved ports as ranges and counts them before listing
them, and answers an oversize CSV field, a non-address and a busy datacenter
with a 4xx naming what is wrong. Run on PostgreSQL as on SQLite.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction
from django.test import Client

from planner import dashboard
from planner.constants import MAX_RESERVED_PORTS
from planner.inventory_io import (
    MAX_BYTES,
    MAX_LINES,
    MAX_RECORDS,
    PREFIX_ADDRESSES,
    InventoryError,
    parse_inventory,
    parse_port_ranges,
)
from planner.models import Datacenter, EgressIP
from tests.planner.ui.fixtures import UiSite

pytestmark = pytest.mark.django_db

IP_HEADER = "datacenter,purpose,country,address,reserved_ports\n"


def _what_if(client: Client, site: UiSite, **query: int) -> tuple[int, str]:
    params = {"pool": site.warp.pk, **query}
    response = client.get("/datacenters/fra1/plan/", params)
    return response.status_code, response.content.decode()


def test_it_refuses_the_probed_what_if_without_planning_it(
    ui_site: UiSite, clients: dict[str, Client]
) -> None:
    # The probe of finding 4: 10,000 machines x 1,000 one-port slices.
    status, html = _what_if(
        clients["vera"],
        ui_site,
        slice_size=1,
        slices_per_machine=1000,
        add_machines=10_000,
        add_ips=1000,
    )
    assert status == 200
    assert "the most a what-if plans" in html
    assert 'id="what-if-result"' not in html  # nothing was planned


def test_it_names_the_ips_to_add_when_the_pool_could_never_hold_the_question(
    ui_site: UiSite, clients: dict[str, Client]
) -> None:
    # warp: 2 IPs of 8,192-port slices = 7 slots an IP at most; with the margin of
    # 64 IPs the pool could hold 66 x 7 = 462 slices; 500 machines ask for 503.
    status, html = _what_if(clients["vera"], ui_site, add_machines=500)
    assert status == 200
    assert "ask with add_ips of at least 70" in html  # ceil(503 / 7) = 72, minus 2 held
    assert 'id="what-if-result"' not in html


def test_it_still_plans_a_question_within_the_bounds(
    ui_site: UiSite, clients: dict[str, Client]
) -> None:
    status, html = _what_if(clients["vera"], ui_site, add_machines=40)
    assert status == 200 and 'id="what-if-result"' in html
    assert "more IP" in html  # 43 machines on 13 slots: a shortfall, computed by planning


def test_the_form_caps_added_machines_and_ips(ui_site: UiSite, clients: dict[str, Client]) -> None:
    status, html = _what_if(
        clients["vera"], ui_site, add_machines=dashboard.WHAT_IF_MAX_ADD_MACHINES + 1
    )
    assert status == 200 and 'id="what-if-result"' not in html
    assert f"{dashboard.WHAT_IF_MAX_ADD_MACHINES}" in html.replace(",", "")
    status, html = _what_if(clients["vera"], ui_site, add_ips=dashboard.WHAT_IF_MAX_ADD_IPS + 1)
    assert 'id="what-if-result"' not in html


def test_a_large_geofeed_prefix_needs_an_admin_who_opts_in(
    ui_site: UiSite, clients: dict[str, Client]
) -> None:
    feed = "198.18.0.0/23,DE,,,\n"  # 512 addresses, a /24 is the default limit
    form = {"text": feed, "format": "geofeed", "datacenter": "fra1", "purpose": "warp"}
    response = clients["bob"].post("/inventory/import/", form)
    html = response.content.decode()
    assert response.status_code == 400
    assert f"at most {PREFIX_ADDRESSES}" in html and "198.18.0.0/23" in html
    assert not EgressIP.objects.filter(address__startswith="198.18.").exists()

    # An operator's opt-in is ignored: the field is an admin's only.
    response = clients["bob"].post("/inventory/import/", {**form, "large_prefixes": "on"})
    assert response.status_code == 400

    response = clients["alice"].post("/inventory/import/", {**form, "large_prefixes": "on"})
    assert response.status_code == 302
    assert EgressIP.objects.filter(address__startswith="198.18.").count() == 512


def test_an_admin_opt_in_is_still_bounded_by_the_record_cap() -> None:
    with pytest.raises(InventoryError) as raised:
        parse_inventory(
            "10.0.0.0/16,DE,,,\n",
            fmt="geofeed",
            datacenter="fra1",
            purpose="warp",
            large_prefixes=True,
        )
    assert raised.value.field == "ip_prefix" and raised.value.value == "10.0.0.0/16"
    assert f"{MAX_RECORDS}" in raised.value.message


def test_it_refuses_documents_past_the_byte_line_and_record_caps() -> None:
    with pytest.raises(InventoryError) as raised:
        parse_inventory("#" * (MAX_BYTES + 1), fmt="geofeed", datacenter="x", purpose="y")
    assert raised.value.field == "(size)" and "bytes" in raised.value.message
    with pytest.raises(InventoryError) as raised:
        parse_inventory("\n" * MAX_LINES, fmt="geofeed", datacenter="x", purpose="y")
    assert "lines" in raised.value.message
    rows = "".join(f"fra1,warp,DE,10.1.{n // 250}.{n % 250 + 1}\n" for n in range(MAX_RECORDS + 1))
    with pytest.raises(InventoryError) as raised:
        parse_inventory("datacenter,purpose,country,address\n" + rows)
    assert raised.value.where == f"line {MAX_RECORDS + 2}"
    assert "records" in raised.value.message


def test_reserved_ports_stay_ranges_and_are_counted_before_listing() -> None:
    assert parse_port_ranges("line 2", "1080;5000-5002") == [(1080, 1080), (5000, 5002)]
    with pytest.raises(InventoryError) as raised:
        parse_port_ranges("line 2", "1-3000000")
    assert raised.value.field == "reserved_ports" and raised.value.value == "1-3000000"
    with pytest.raises(InventoryError) as raised:
        parse_port_ranges("line 2", f"1024-{1024 + MAX_RESERVED_PORTS}")
    assert f"at most {MAX_RESERVED_PORTS}" in raised.value.message


def test_a_huge_reserved_range_is_a_short_400(ui_site: UiSite, clients: dict[str, Client]) -> None:
    text = IP_HEADER + "fra1,warp,DE,192.0.2.77,1-3000000\n"
    response = clients["bob"].post("/inventory/import/", {"text": text, "format": "auto"})
    assert response.status_code == 400
    assert len(response.content) < 100_000  # the probe's error page was 26 MB
    html = response.content.decode()
    assert "line 2" in html and "reserved_ports" in html and "1-3000000" in html


def test_the_api_refuses_more_reserved_ports_than_the_cap(
    ui_site: UiSite, clients: dict[str, Client]
) -> None:
    ports = list(range(2000, 2001 + MAX_RESERVED_PORTS))
    response = clients["bob"].patch(
        "/api/v1/ips/192.0.2.2",
        {"reserved_ports": ports},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert "reserved_ports" in response.json()
    assert EgressIP.objects.get(address="192.0.2.2").reserved_ports == []


def test_an_oversize_csv_field_is_a_400_naming_the_line(
    ui_site: UiSite, clients: dict[str, Client]
) -> None:
    text = IP_HEADER + "fra1,warp,DE,192.0.2.78,\n" + "fra1,warp,DE," + "x" * 140_000 + ",\n"
    response = clients["bob"].post("/inventory/import/", {"text": text, "format": "ips-csv"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "line 3" in html and "field larger than field limit" in html
    assert not EgressIP.objects.filter(address="192.0.2.78").exists()


def test_not_an_address_is_a_400_naming_line_field_and_value(
    ui_site: UiSite, clients: dict[str, Client]
) -> None:
    text = IP_HEADER + "fra1,warp,DE,192.0.2.79,\nfra1,warp,DE,not-an-address,\n"
    response = clients["bob"].post("/inventory/import/", {"text": text, "format": "ips-csv"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "line 3" in html and "address" in html and "not-an-address" in html
    assert "not an IP address" in html
    assert not EgressIP.objects.filter(address="192.0.2.79").exists()


@pytest.mark.django_db(transaction=True)
def test_an_import_waiting_on_a_busy_datacenter_is_a_409(
    ui_site: UiSite, clients: dict[str, Client], settings: object
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the datacenter lock is a PostgreSQL row lock (SQLite serializes writes)")
    settings.PLAN_LOCK_WAIT_SECONDS = 0.2  # type: ignore[attr-defined]
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        try:
            with transaction.atomic():
                list(Datacenter.objects.select_for_update().filter(code="fra1"))
                held.set()
                release.wait(timeout=60)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert held.wait(timeout=60)
        text = IP_HEADER + "fra1,warp,DE,192.0.2.80,\n"
        response = clients["bob"].post("/inventory/import/", {"text": text, "format": "auto"})
    finally:
        release.set()
        holder.join(timeout=60)
    assert response.status_code == 409
    assert "being written" in response.content.decode()
    assert not EgressIP.objects.filter(address="192.0.2.80").exists()
