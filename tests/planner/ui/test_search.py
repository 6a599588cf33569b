"""One search box: a host name, an IP or ip:port leads to the datacenter with it highlighted."""

from __future__ import annotations

from django.test import Client

from planner.search import search_resolve
from tests.planner.factories import make_datacenter, make_machine
from tests.planner.ui.fixtures import RESERVED_PORT, WARP_IPS, UiSite
from tests.planner.ui.test_pages import _text


def test_a_host_name_leads_to_its_datacenter_with_its_slices_highlighted(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    response = clients["vera"].get("/search/?q=EDGE0.fra1.example.net")
    assert response.status_code == 302
    assert response["Location"] == "/datacenters/fra1/?highlight=edge0.fra1.example.net"
    # A part of a name that only one machine has is enough; several are listed.
    assert clients["vera"].get("/search/?q=edge1")["Location"].endswith("edge1.fra1.example.net")
    listed = clients["vera"].get("/search/?q=fra1.example")
    assert listed.status_code == 200 and "3 machines match" in _text(listed)


def test_an_ip_and_port_answers_who_owns_it(clients: dict[str, Client], ui_site: UiSite) -> None:
    own = ui_site.slice_of("edge1.fra1.example.net", ui_site.warp)
    query = f"{own.ip.address}:{own.lo + 5}"
    assert clients["vera"].get(f"/search/?q={query}")["Location"].endswith(f"highlight={query}")
    text = _text(clients["vera"].get(f"/datacenters/fra1/?highlight={query}"))
    assert f"{query} belongs to edge1.fra1.example.net" in text
    assert search_resolve(query=f"{WARP_IPS[0]}:{RESERVED_PORT}").why_nobody == "reserved"
    assert search_resolve(query=f"{WARP_IPS[0]}:80").why_nobody.startswith("unusable")
    assert search_resolve(query=f"{WARP_IPS[1]}:65000").why_nobody.startswith("free")
    assert search_resolve(query=WARP_IPS[1]).highlight == WARP_IPS[1]


def test_nothing_found_and_bad_ports_say_what_was_wrong(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    make_machine("lonely.example.net", datacenter=make_datacenter(code="ams9"))
    missing = clients["vera"].get("/search/?q=nosuchhost")
    assert missing.status_code == 404 and "Nothing matches “nosuchhost”" in _text(missing)
    bad = clients["vera"].get(f"/search/?q={WARP_IPS[0]}:70000")
    assert bad.status_code == 404 and "Port “70000”" in _text(bad)
    assert "Type a host name" in _text(clients["vera"].get("/search/?q="))
    assert clients["anonymous"].get("/search/?q=edge0").status_code == 302  # to the login
