"""Findings 6 and 7 of issue 15: nothing a client or an operator typed is echoed raw.

A bad filter value on the datacenter page comes back through a template,
escaped; heatmap.json answers JSON; and every string that reaches Plotly (whose
text understands a subset of HTML) is escaped for it, so a pool city holding
a link is drawn as text, never as a live link.
"""

from __future__ import annotations

import json

import pytest
from django.test import Client

from planner import charts
from planner import heatmap as hm
from planner.models import Machine
from tests.planner.factories import make_ip, make_pool
from tests.planner.ui.fixtures import UiSite

pytestmark = pytest.mark.django_db

REFRESH = '<meta http-equiv=refresh content="0;url=https://evil.example/">'
LINK = '<a href="https://evil.example/">x</a>'


def test_a_bad_filter_on_the_datacenter_page_is_an_escaped_400_page(
    ui_site: UiSite, clients: dict[str, Client]
) -> None:
    response = clients["vera"].get("/datacenters/fra1/", {"country": REFRESH})
    body = response.content.decode()
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
    assert REFRESH not in body and "<meta http-equiv=refresh" not in body
    assert "&lt;meta http-equiv=refresh" in body and "country" in body
    assert 'id="bad-request"' in body  # the template, with its layout, not a bare string


def test_a_bad_filter_on_heatmap_json_is_a_json_400(
    ui_site: UiSite, clients: dict[str, Client]
) -> None:
    response = clients["vera"].get("/datacenters/fra1/heatmap.json", {"country": REFRESH})
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    errors = response.json()
    assert set(errors) == {"country"} and errors["country"][0]["message"]
    assert "<meta" not in response.content.decode()


def test_a_bad_machine_state_is_an_escaped_400_page(
    ui_site: UiSite, clients: dict[str, Client]
) -> None:
    response = clients["bob"].post("/machines/edge0.fra1.example.net/state/", {"state": LINK})
    body = response.content.decode()
    assert response.status_code == 400
    assert LINK not in body and "&lt;a href=" in body
    assert Machine.objects.get(hostname="edge0.fra1.example.net").state == "active"


def _city_pool(ui_site: UiSite) -> None:
    # A second warp/DE pool: the labels then name each pool's city to tell them apart.
    pool = make_pool(
        datacenter=ui_site.datacenter, purpose="warp", country="DE", city=LINK, slice_size=8192
    )
    make_ip("192.0.2.99", pool=pool)


def test_a_pool_city_never_reaches_plotly_unescaped(ui_site: UiSite) -> None:
    _city_pool(ui_site)
    for collapse in (False, True):
        picture = hm.datacenter_heatmap(
            datacenter=ui_site.datacenter,
            mode=hm.OWNERSHIP,
            filters=hm.HeatmapFilter(collapse=collapse),
        )
        figure = json.dumps(charts.heatmap_figure(picture))
        assert "<a href" not in figure, collapse
        assert '&lt;a href=\\"https://evil.example/\\"&gt;x&lt;/a&gt;' in figure


def test_the_heatmap_data_the_page_draws_holds_no_markup_in_its_figure(
    ui_site: UiSite, clients: dict[str, Client]
) -> None:
    _city_pool(ui_site)
    response = clients["vera"].get("/datacenters/fra1/heatmap.json", {"collapse": "0"})
    assert response.status_code == 200
    figure = json.dumps(response.json()["figure"])
    assert "<a href" not in figure and "&lt;a href=" in figure


def test_plotly_text_escapes_markup_and_leaves_plain_text_alone() -> None:
    assert charts.plotly_text("warp · DE (Frankfurt am Main)") == "warp · DE (Frankfurt am Main)"
    assert charts.plotly_text("<b>x</b> & y") == "&lt;b&gt;x&lt;/b&gt; &amp; y"
