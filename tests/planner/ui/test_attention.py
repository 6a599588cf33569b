"""The attention strip: drafts with their picture and a confirmed approve, unplanned
changes with what rebalancing will do, hot slices; on the overview and the datacenter page."""

from __future__ import annotations

import json
import re

from django.test import Client
from django.urls import reverse
from django.utils import timezone

from planner.attention import hot_slices
from planner.models import Machine, PlanRevision, SliceUsage
from planner.services.inventory import machine_save
from planner.services.plans import plan_preview
from planner.services.rebalance import PlanUsage, rebalance_policy_save, revision_draft
from tests.planner.factories import make_datacenter, make_ip, make_machine, make_pool, make_slice
from tests.planner.ui.fixtures import UiSite
from tests.planner.ui.test_machine_status import (
    ADDRESSES_MISSING,
    ADDRESSES_ON,
    EDGE0,
    EDGE1,
    EDGE2,
    GUARD_ON,
    RANGE_ON,
    ack,
)
from tests.planner.ui.test_pages import _text


def make_draft(site: UiSite) -> PlanRevision:
    """A waiting draft that drains edge2's slices, as rebalancing leaves one."""
    machine_save(machine=Machine.objects.get(hostname="edge2.fra1.example.net"),
                 values={"state": "draining"})  # fmt: skip
    preview = plan_preview(datacenter=site.datacenter, usage={})
    return revision_draft(preview=preview, usage=PlanUsage(levels={}), reason="edge2 goes cold")


def test_a_waiting_draft_opens_both_pages_with_its_picture_and_a_confirmed_approve(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    draft = make_draft(ui_site)
    for url in ("/", "/datacenters/fra1/"):
        html = clients["bob"].get(url).content.decode()
        text = _text(clients["bob"].get(url))
        assert f"Draft r{draft.number} waits for approval" in text, url
        assert "1 start draining" in text and "[" not in text.split("waits for approval")[1][:80]
        # The picture: the diff heatmap of exactly what approving applies.
        data = re.search(rf'id="draft-fra1-{draft.number}-data"[^>]*>(.*?)</script>', html, re.S)
        assert data, url
        payload = json.loads(data.group(1))
        assert payload["mode"] == "diff" and any(s[7] == "draining" for s in payload["slices"])
        assert 'name="confirm"' in html and "required" in html
        # A viewer reads the same strip, with no approve.
        seen = clients["vera"].get(url).content.decode()
        assert f"Draft r{draft.number} waits for approval" in seen
        assert f"Approve r{draft.number}" not in seen and "needs the operator or admin role" in seen


def test_approving_without_the_confirmation_applies_nothing(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    draft = make_draft(ui_site)
    url = reverse("draft-approve", args=["fra1", draft.number])
    refused = clients["bob"].post(url, {"next": "/datacenters/fra1/"}, follow=True)
    assert "tick the box to confirm" in _text(refused)
    draft.refresh_from_db()
    assert draft.status == "draft"
    assert clients["vera"].post(url, {"confirm": "on"}).status_code == 403
    done = clients["bob"].post(url, {"confirm": "on", "next": "/datacenters/fra1/"})
    assert done.status_code == 302 and done["Location"] == "/datacenters/fra1/"
    draft.refresh_from_db()
    assert draft.status == "applied"
    # Somewhere outside the site is not a place to go back to.
    assert (
        "evil"
        not in clients["bob"].post(url, {"confirm": "on", "next": "https://evil.example/"})[
            "Location"
        ]
    )


def test_unplanned_changes_and_hot_slices_are_listed_with_what_rebalancing_will_do(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    for hostname in (EDGE0, EDGE1, EDGE2):  # every agent enforcing: nothing to look at
        ack(hostname, RANGE_ON, GUARD_ON, ADDRESSES_ON)
    text = _text(clients["vera"].get("/datacenters/fra1/"))
    assert "Nothing waits for a person" in text
    make_machine("edge3.fra1.example.net", datacenter=ui_site.datacenter).pools.add(ui_site.warp)
    rebalance_policy_save(datacenter=ui_site.datacenter, values={"hot": 0.4, "cold": 0.1})
    text = _text(clients["vera"].get("/datacenters/fra1/"))
    assert "Changes not yet planned (a plan made now: 1 added)" in text
    assert "applies on its own a plan that only adds" in text
    # edge0's warp slice holds 4,096 sockets in 8,192 ports: above a 40 % threshold.
    assert "1 slice above the hot threshold (40 %)" in text
    assert "edge0.fra1.example.net" in text.split("hot threshold")[1][:200]
    overview = _text(clients["vera"].get("/"))
    assert "Needs attention in fra1" in overview and "1 added" in overview


def test_agents_not_enforcing_are_listed_by_status(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    ack(EDGE0, RANGE_ON, GUARD_ON, ADDRESSES_ON)
    ack(EDGE1, RANGE_ON, GUARD_ON, ADDRESSES_MISSING)
    html = clients["vera"].get("/datacenters/fra1/").content.decode()
    item = html.split('data-item="agents"')[1].split("</li>")[0]
    # edge1 failed, edge2 never reported: named by status; edge0 is not counted.
    assert "1 failed" in item and "1 never seen" in item and "enforcing" not in item


def test_hot_slices_are_all_counted_and_the_hottest_five_named_ties_by_name(db: None) -> None:
    """Counted and ranked by the database: seven hot slices, three of them full
    (a tie the names break, in Python's order: '-' sorts before letters there,
    not in a language collation), one cold slice left out."""
    dc = make_datacenter(code="hot1")
    ip = make_ip("198.51.100.9", pool=make_pool(datacenter=dc, slice_size=1024))
    sockets = {
        "hb.hot1.example.net": 1024,
        "h-c.hot1.example.net": 2000,  # more than its ports: capped at 100 %
        "ha.hot1.example.net": 1024,
        "hd.hot1.example.net": 1000,
        "he.hot1.example.net": 900,
        "hf.hot1.example.net": 800,
        "hg.hot1.example.net": 700,
        "cold.hot1.example.net": 100,
    }
    for n, (hostname, count) in enumerate(sockets.items()):
        machine = make_machine(hostname, datacenter=dc)
        lo = 1024 * (n + 2)
        held = make_slice(ip=ip, machine=machine, lo=lo, hi=lo + 1023)
        SliceUsage.objects.create(slice=held, at=timezone.now(), tcp=count, udp=0)
    count, hottest = hot_slices(datacenter=dc, above=0.5)
    assert count == 7
    assert [(s.machine.split(".")[0], s.use) for s in hottest] == [
        ("h-c", 1.0),
        ("ha", 1.0),
        ("hb", 1.0),
        ("hd", 1000 / 1024),
        ("he", 900 / 1024),
    ]
