"""Machine and IP lists, revisions and the audit log: the API's FilterSets, paginated."""

from __future__ import annotations

import re

from django.test import Client

from tests.planner.factories import make_machine
from tests.planner.ui.fixtures import CDN_IP, WARP_IPS, UiSite
from tests.planner.ui.test_pages import _text


def _listed(html: str, attribute: str) -> list[str]:
    return re.findall(rf'<tr {attribute}="([^"]+)"', html)


def test_the_machine_list_filters_and_searches_like_the_api(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    for n in range(60):
        make_machine(f"bulk{n:02d}.fra1.example.net", datacenter=ui_site.datacenter)
    first = clients["vera"].get("/machines/").content.decode()
    assert len(_listed(first, "data-machine")) == 50 and "page 1 of 2" in first
    found = clients["vera"].get("/machines/?search=EDGE1").content.decode()
    assert _listed(found, "data-machine") == ["edge1.fra1.example.net"]
    api = clients["vera"].get("/api/v1/machines?search=edge1").json()
    assert [m["hostname"] for m in api["results"]] == ["edge1.fra1.example.net"]
    served = clients["vera"].get(f"/machines/?pool={ui_site.cdn.pk}").content.decode()
    assert _listed(served, "data-machine") == ["edge0.fra1.example.net"]
    second = clients["vera"].get("/machines/?search=bulk&page=2").content.decode()
    assert len(_listed(second, "data-machine")) == 10


def test_the_ip_list_filters_by_pool_and_address(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    everything = clients["vera"].get("/ips/").content.decode()
    assert sorted(_listed(everything, "data-ip")) == sorted([CDN_IP, *WARP_IPS])
    warp = clients["vera"].get(f"/ips/?pool={ui_site.warp.pk}").content.decode()
    assert sorted(_listed(warp, "data-ip")) == sorted(WARP_IPS)
    assert _listed(clients["vera"].get("/ips/?search=198.51").content.decode(), "data-ip") == [
        CDN_IP
    ]


def test_a_bad_filter_value_is_a_400_naming_the_field_and_the_value(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    for url, field, value in [
        ("/machines/?state=melting", "state", "melting"),
        ("/ips/?pool=x", "pool", "x"),
        ("/revisions/?status=nope", "status", "nope"),
        ("/audit/?since=yesterday", "since", "yesterday"),
    ]:
        response = clients["vera"].get(url)
        text = _text(response)
        assert response.status_code == 400, url
        assert f"{field}:" in text and f"“{value}”" in text, (url, text[-400:])


def test_revisions_and_audit_filter_through_their_filtersets(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    applied = clients["vera"].get("/revisions/?datacenter=fra1&status=applied").content.decode()
    assert _listed(applied, "data-revision") == ["fra1-1"]
    assert (
        _listed(clients["vera"].get("/revisions/?status=draft").content.decode(), "data-revision")
        == []
    )
    audit = _text(clients["vera"].get("/audit/?what=edge2&action=create"))
    assert "machine edge2.fra1.example.net" in audit and "edge0.fra1" not in audit
