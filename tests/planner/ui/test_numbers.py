"""No number is shown as good without data, and the UI says what rebalancing will do."""

from __future__ import annotations

import re

from django.test import Client

from planner.services.plans import plan_apply_current
from planner.services.rebalance import rebalance_policy_save
from tests.planner.factories import make_datacenter, make_ip, make_machine, make_pool
from tests.planner.ui.fixtures import UiSite
from tests.planner.ui.test_pages import _cell, _row, _text


def _silent_datacenter() -> None:
    """ams1: one pool, one IP, one machine with a slice; its agent never reported."""
    dc = make_datacenter(code="ams1", name="Amsterdam 1")
    pool = make_pool(datacenter=dc, purpose="warp", country="NL", slice_size=8192)
    make_ip("203.0.113.9", pool=pool)
    make_machine("edge0.ams1.example.net", datacenter=dc, address="10.8.0.2").pools.add(pool)
    plan_apply_current(datacenter=dc, reason="first plan")


def test_use_without_a_report_says_so_instead_of_0_percent(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    _silent_datacenter()
    html = clients["vera"].get("/datacenters/ams1/").content.decode()
    row = _row(html, "data-pool=")
    assert _cell(row, "use") == "no report" and _cell(row, "peak") == "no report"
    assert "0.0 %" not in row
    overview = _text(clients["vera"].get("/"))
    assert "no report yet · 8,192 handed out" in overview
    # Where agents did report, the figures are there as before.
    fra1 = clients["vera"].get("/datacenters/fra1/").content.decode()
    assert _cell(_row(fra1, f'data-pool="{ui_site.warp.pk}"'), "use") == "16.7 %"
    assert "1 egress IP in 1 pool " in _text(clients["vera"].get("/datacenters/ams1/"))


def test_the_inventory_says_what_rebalancing_will_do_with_a_change(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    def said() -> str:
        html = clients["vera"].get("/inventory/").content.decode()
        return _cell(_row(html, 'data-datacenter="fra1"'), "rebalance")

    assert "Changes take effect on the next plan you apply" not in _text(
        clients["vera"].get("/inventory/")
    )
    assert "applies on its own a plan that only adds" in said()
    assert "a plan that drains a live slice waits as a draft" in said()
    rebalance_policy_save(datacenter=ui_site.datacenter, values={"auto_apply": False})
    assert "leaves each plan as a draft" in said()
    rebalance_policy_save(datacenter=ui_site.datacenter, values={"enabled": False})
    assert said() == "Rebalancing is off: changes wait for a plan you apply."


def test_titles_name_an_egress_ip_properly(clients: dict[str, Client], ui_site: UiSite) -> None:
    text = _text(clients["bob"].get("/inventory/new/ip/"))
    assert "New egress IP" in text and "New ip" not in text


def test_each_pool_has_a_use_bar_that_warns_at_the_policy_thresholds(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    rebalance_policy_save(datacenter=ui_site.datacenter, values={"hot": 0.6, "cold": 0.1})
    html = clients["vera"].get("/datacenters/fra1/").content.decode()
    meter = re.search(r"<meter[^>]*>", _row(html, f'data-pool="{ui_site.warp.pk}"'))
    assert meter, "a bar for a pool with a reported use"
    # Amber above the hot threshold, red halfway from there to full.
    assert 'low="0.6"' in meter.group(0) and 'high="0.8"' in meter.group(0)
    assert 'value="0.1666' in meter.group(0)
    _silent_datacenter()
    silent = clients["vera"].get("/datacenters/ams1/").content.decode()
    assert "<meter" not in silent  # no report: no bar pretending to be empty
