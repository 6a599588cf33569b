"""The plan page previews the pools a change touched: its diff picture shows their
rows only, not the other pools' rows looking emptied."""

from __future__ import annotations

import json
import re

from django.test import Client

from tests.planner.factories import make_machine
from tests.planner.ui.fixtures import CDN_IP, WARP_IPS, UiSite


def test_it_pictures_only_the_pools_the_plan_covers(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    make_machine("edge3.fra1.example.net", datacenter=ui_site.datacenter).pools.add(ui_site.cdn)
    page = clients["bob"].get("/datacenters/fra1/plan/").content.decode()
    match = re.search(r'id="diff-data" type="application/json">(.*?)</script>', page, re.S)
    assert match
    shown = json.dumps(json.loads(match.group(1))["rows"])
    assert CDN_IP in shown
    assert not any(ip in shown for ip in WARP_IPS)  # warp was not planned: not shown
