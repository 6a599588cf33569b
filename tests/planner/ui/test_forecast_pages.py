"""The forecast in the UI: the pool page draws the projection, the overview lists
the pools that run out within the horizon."""

from __future__ import annotations

import json
import re
from datetime import timedelta

from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from planner.models import Machine
from tests.planner.factories import make_machine
from tests.planner.ui.fixtures import UiSite


def _grow(ui_site: UiSite, *, days: int = 6) -> None:
    """warp (13 slots) gains a machine a day: 3 six days ago, 9 now, out in 4 or 5 days."""
    start = timezone.now() - timedelta(days=days)
    Machine.objects.update(joined_at=start)
    for day in range(1, days + 1):
        machine = make_machine(f"grow{day}.fra1.example.net", datacenter=ui_site.datacenter)
        machine.pools.add(ui_site.warp)
        Machine.objects.filter(pk=machine.pk).update(joined_at=start + timedelta(days=day))


def _text(response: object) -> str:
    html = response.content.decode()  # type: ignore[attr-defined]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def _figure(html: str) -> dict:
    found = re.search(r'<script id="forecast-figure" type="application/json">(.*?)</script>', html)
    assert found, "no forecast figure on the page"
    return json.loads(found.group(1))


def test_the_pool_page_draws_history_capacity_and_projection(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    _grow(ui_site)
    response = clients["vera"].get(f"/pools/{ui_site.warp.pk}/")
    # the staircase of joins fits a line a little below 9 now: 4 to 5 days to 13
    assert re.search(r"Runs out in about [45] days; 1 more IP needed by", _text(response))
    figure = _figure(response.content.decode())
    names = [trace["name"] for trace in figure["data"]]
    assert names[0] == "slices needed" and "forecast" in names and "95 % band" in names
    assert "capacity (13 slots)" in names
    history = figure["data"][0]["y"]
    assert history[0] == 3 and history[-1] == 9  # the joins, step by step
    forecast = next(trace for trace in figure["data"] if trace["name"] == "forecast")
    assert forecast["y"][-1] >= 13  # the line is drawn to the crossing


def test_the_overview_lists_the_pools_running_out_within_the_horizon(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    assert "Pools running out" not in _text(clients["vera"].get("/"))
    _grow(ui_site)
    cache.clear()  # the overview reuses the forecasts for a step
    text = _text(clients["vera"].get("/"))
    assert "Pools running out" in text
    assert re.search(r"fra1/warp/DE ?: runs out in about [45] days", text)
    assert "fra1/cdn/FR" not in text.split("Pools running out")[1].split("Frankfurt")[0]


def test_a_new_pool_page_says_there_is_not_enough_history(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    text = _text(clients["vera"].get(f"/pools/{ui_site.warp.pk}/"))
    assert "Not enough history" in text
