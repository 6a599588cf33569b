"""Audit and history read as from -> to with names: never a repr, a brace or a bare id."""

from __future__ import annotations

import re

from django.test import Client

from planner.services.inventory import machine_save, model_save
from tests.planner.factories import make_ip
from tests.planner.ui.fixtures import UiSite
from tests.planner.ui.test_pages import _text


def _cells(html: str) -> list[str]:
    """The text of every history/audit row's changes cell."""
    return [
        re.sub(r"<[^>]+>", "", cell)
        for cell in re.findall(r'<tr data-entry="\d+">(.*?)</tr>', html, re.S)
    ]


def test_history_names_pools_machines_and_ips_and_shows_from_and_to(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    edge1 = ui_site.machines[1]
    machine_save(machine=edge1, values={"weight": 3}, pools=[ui_site.warp, ui_site.cdn])
    ip = make_ip("192.0.2.77", pool=ui_site.warp)
    model_save(instance=ip, values={"reserved_ports": [40000, 40001]})
    machine = clients["vera"].get(f"/machines/{edge1.hostname}/").content.decode()
    rows = _cells(machine)
    assert rows, "the machine page lists its history"
    assert any("weight: 1 → 3" in row for row in rows), rows
    assert any("pools added: fra1/cdn/FR" in row for row in rows), rows
    audit = clients["vera"].get("/audit/").content.decode()
    rows = _cells(audit)
    assert any("egress IP 192.0.2.77" in row and "pool: fra1/warp/DE" in row for row in rows)
    assert any("reserved ports: none → 40000, 40001" in row for row in rows), rows
    # The plan the fixture applied: its counts, no list or dict printed.
    assert any("plan revision" in row and "added: 4" in row for row in rows), rows
    for row in _cells(audit) + _cells(machine):
        assert "{" not in row and "[" not in row, row
        # A reference is a name, never its id.
        assert not re.search(r"\b(pool|machine|datacenter|ip|revision): \d+\b", row), row
    assert f"pool: {ui_site.warp.pk}" not in _text(clients["vera"].get("/audit/"))
