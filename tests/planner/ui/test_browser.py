"""The UI in a real browser: Debian's headless Chromium driven by Playwright.

Each test logs in on pytest-django's live server, records every request the
page makes, and fails if one left the test server (assets come from the app),
if a script failed, if a page came without the app's Content-Security-Policy
(scripts from the server only: no inline or eval'd script), or if a page broke it.
Screenshots go to ``var/screenshots`` (``PORTSLICE_SCREENSHOTS`` overrides).
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from planner.audit import acting_as
from planner.management.commands.demo_agents import EGRESS_IPS, ORIGIN, Mode, demo_datacenter_ensure
from planner.models import Datacenter, EgressIP, Machine, PlanRevision, PortSlice
from planner.services.inventory import machine_save
from planner.services.keys import signing_key_generate
from planner.services.plans import plan_apply_current, plan_preview
from planner.services.reports import usage_record
from tests.planner.factories import make_machine
from tests.planner.ui.fixtures import PASSWORD, UiSite, build_ui_site, make_users
from tests.planner.ui.test_attention import make_draft
from tests.support import need

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("PORTSLICE_SCREENSHOTS", settings.BASE_DIR / "var/screenshots"))

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need(CHROMIUM.exists(), "needs Debian's chromium (make sysdeps installs it)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread, and the tests use
    # the ORM between browser steps, which Django refuses next to a running loop
    # unless told; only while the browser is up, so other tests keep the check.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


class Session:
    """One browser tab on the live server that remembers every request it made."""

    def __init__(self, browser: Any, base: str) -> None:
        self.base = base
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.outside: list[str] = []
        self.inside: list[str] = []
        self.errors: list[str] = []
        self.policies: list[str] = []
        self.page.route("**/*", self._route)
        self.page.on("response", self._response)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", self._console)

    def _route(self, route: Any) -> None:
        if not route.request.url.startswith(self.base):
            self.outside.append(route.request.url)
            route.abort()
            return
        self.inside.append(route.request.url)
        route.continue_()

    def _response(self, response: Any) -> None:
        if response.request.resource_type == "document" and response.status == 200:
            self.policies.append(response.headers.get("content-security-policy", ""))

    def _console(self, message: Any) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.errors.append(message.text)

    def login(self, name: str) -> None:
        self.page.goto(self.base + "/login/")
        self.page.fill("#id_username", name)
        self.page.fill("#id_password", PASSWORD)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(self.base + "/")

    def open(self, path: str) -> None:
        self.page.goto(self.base + path)

    def heatmap_drawn(self, selector: str = "[data-heatmap]") -> Any:
        self.page.wait_for_selector(f"{selector}[data-rows]")
        return self.page.locator(selector)

    def cell_point(self, port: float, row: int, plot: str = ".heatmap-plot") -> tuple[float, float]:
        """Screen coordinates of (port, row) on the heatmap, from Plotly's own axes,
        scrolled into the middle of the viewport first (the attention strip above the
        heatmap may push a low row out of the window)."""
        x, y = self.page.evaluate(
            """([plot, port, row]) => {
                const gd = document.querySelector(plot);
                const top = gd.getBoundingClientRect().top + gd._fullLayout._size.t
                    + gd._fullLayout.yaxis.l2p(row);
                window.scrollBy(0, top - window.innerHeight / 2);
                const size = gd._fullLayout._size, box = gd.getBoundingClientRect();
                return [box.left + size.l + gd._fullLayout.xaxis.l2p(port),
                        box.top + size.t + gd._fullLayout.yaxis.l2p(row)];
            }""",
            [plot, port, row],
        )
        return x, y

    def hover(self, port: float, row: int, plot: str = ".heatmap-plot") -> str:
        x, y = self.cell_point(port, row, plot)
        tip = self.page.locator(".heatmap-tip").first
        self.page.mouse.move(1, 1)  # leave any cell first, so the box shows this one's text
        tip.wait_for(state="hidden")
        self.page.mouse.move(x - 3, y)
        self.page.mouse.move(x, y)
        tip.wait_for(state="visible")
        return str(tip.inner_text())

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()
        assert self.outside == [], f"requests left the test server: {self.outside}"
        assert self.errors == [], f"script errors: {self.errors}"
        for policy in self.policies:
            script_src = next(d for d in policy.split(";") if d.strip().startswith("script-src"))
            assert "'self'" in script_src and "unsafe" not in script_src, policy


@pytest.fixture
def site(transactional_db: None, key_dir: Path) -> UiSite:
    site = build_ui_site()
    make_users()
    return site


@pytest.fixture
def tab(browser: Any, live_server: Any, site: UiSite) -> Iterator[Session]:
    session = Session(browser, live_server.url)
    yield session
    session.close()


@pytest.fixture
def demo_tab(
    browser: Any, live_server: Any, transactional_db: None, key_dir: Path
) -> Iterator[Session]:
    """The quick start's demo inventory instead of the small fixture."""
    signing_key_generate()
    with acting_as("system:test"):
        call_command("seed_demo", stdout=StringIO())
    make_users()
    session = Session(browser, live_server.url)
    yield session
    session.close()


def _row_of(tab: Session, address: str) -> int:
    labels: list[str] = tab.page.evaluate(
        "() => document.querySelector('[data-heatmap]').heatmap.payload.rows.map(r => r.ip)"
    )
    return labels.index(address)


def test_it_draws_one_row_per_ip_and_names_the_slice_under_the_pointer(
    tab: Session, site: UiSite
) -> None:
    tab.login("vera")
    tab.open("/datacenters/fra1/")
    heatmap = tab.heatmap_drawn()
    assert heatmap.get_attribute("data-rows") == "3"
    labels = tab.page.locator(".heatmap-plot .ytick text").all_text_contents()
    assert sorted(labels) == [
        "cdn · FR · 198.51.100.1",
        "warp · DE · 192.0.2.1",
        "warp · DE · 192.0.2.2",
    ]
    own = site.slice_of("edge0.fra1.example.net", site.warp)
    text = tab.hover((own.lo + own.hi) / 2, _row_of(tab, own.ip.address))
    assert "machine edge0.fra1.example.net" in text
    assert f"ports {own.lo:,}–{own.hi:,} (8,192)" in text and "state active" in text
    tab.shot("datacenter-heatmap")


def test_utilization_shows_the_reported_use_and_keeps_the_zoom(tab: Session, site: UiSite) -> None:
    tab.login("vera")
    tab.open("/datacenters/fra1/")
    tab.heatmap_drawn()
    own = site.slice_of("edge0.fra1.example.net", site.warp)
    zoom = [own.lo - 4096, own.hi + 4096]
    tab.page.evaluate(
        "(range) => Plotly.relayout(document.querySelector('.heatmap-plot'), "
        "{'xaxis.range': range})",
        zoom,
    )
    tab.page.check("input[name=mode][value=utilization]")
    tab.page.wait_for_selector("[data-heatmap][data-mode=utilization]")
    kept = tab.page.evaluate("() => document.querySelector('.heatmap-plot').layout.xaxis.range")
    assert kept == zoom
    text = tab.hover((own.lo + own.hi) / 2, _row_of(tab, own.ip.address))
    assert "use 50.0% of the slice, 50.0% here" in text
    assert "updated" in tab.page.locator(".heatmap-status").inner_text()
    # It refreshes in place (no page load) every 5 s.
    fetches = [url for url in tab.inside if "heatmap.json?" in url and "utilization" in url]
    tab.page.wait_for_timeout(5600)
    again = [url for url in tab.inside if "heatmap.json?" in url and "utilization" in url]
    assert len(again) > len(fetches) >= 1
    assert tab.page.evaluate("() => performance.getEntriesByType('navigation').length") == 1
    tab.page.mouse.move(5, 5)
    tab.shot("datacenter-utilization")


def test_clicking_a_slice_opens_its_machine(tab: Session, site: UiSite) -> None:
    tab.login("vera")
    tab.open("/datacenters/fra1/")
    tab.heatmap_drawn()
    own = site.slice_of("edge0.fra1.example.net", site.cdn)
    x, y = tab.cell_point((own.lo + own.hi) / 2, _row_of(tab, own.ip.address))
    tab.page.mouse.click(x, y)
    tab.page.wait_for_url("**/machines/edge0.fra1.example.net/")
    assert tab.page.locator("h1").inner_text() == "edge0.fra1.example.net"
    tab.page.wait_for_selector("#usage-chart .main-svg")
    tab.shot("machine")


def test_an_operator_previews_a_new_machine_and_applies_it(tab: Session, site: UiSite) -> None:
    make_machine("edge3.fra1.example.net", datacenter=site.datacenter).pools.add(site.warp)
    preview = plan_preview(datacenter=site.datacenter)
    assert preview.plan is not None
    (added,) = preview.plan.diff.added
    tab.login("bob")
    tab.open("/datacenters/fra1/plan/")
    tab.heatmap_drawn()
    row = tab.page.evaluate(
        "(ip) => document.querySelector('[data-heatmap]').heatmap.payload.rows"
        ".map(r => r.ip).indexOf(ip)",
        added.ip,
    )
    text = tab.hover((added.lo + added.hi) / 2, row)
    assert "machine edge3.fra1.example.net" in text and "plan: added by this plan" in text
    assert tab.page.locator('[data-machine="edge3.fra1.example.net"]').count() == 1
    tab.page.mouse.move(5, 5)
    tab.shot("plan-preview")
    tab.page.fill("#id_reason", "edge3 joins")
    tab.page.check("#id_confirm")
    tab.page.click("#apply-form button[type=submit]")
    tab.page.wait_for_url("**/revisions/?datacenter=fra1")
    assert "edge3 joins" in tab.page.locator('[data-revision="fra1-2"]').inner_text()
    assert "Revision 2 of fra1 applied: 1 added" in tab.page.locator(".messages").inner_text()
    tab.shot("revisions")


def test_a_viewer_gets_no_apply_control(tab: Session, site: UiSite) -> None:
    make_machine("edge3.fra1.example.net", datacenter=site.datacenter).pools.add(site.warp)
    tab.login("vera")
    tab.open("/datacenters/fra1/plan/")
    tab.heatmap_drawn()
    assert tab.page.locator("#apply-form").count() == 0
    assert tab.page.get_by_role("button", name="Apply this plan").count() == 0
    assert "needs the operator or admin role" in tab.page.locator("#apply").inner_text()


def test_a_stale_preview_is_refused_with_the_explanation(tab: Session, site: UiSite) -> None:
    make_machine("edge4.fra1.example.net", datacenter=site.datacenter).pools.add(site.warp)
    tab.login("bob")
    tab.open("/datacenters/fra1/plan/")
    tab.heatmap_drawn()
    # Someone else changes the inventory while the operator reads the preview.
    make_machine("late.fra1.example.net", datacenter=site.datacenter).pools.add(site.warp)
    tab.page.check("#id_confirm")
    tab.page.click("#apply-form button[type=submit]")
    refused = tab.page.locator("#refused")
    refused.wait_for()
    assert "the preview you confirmed is out of date" in refused.inner_text()
    assert "changed since this preview" in refused.inner_text()
    assert PlanRevision.objects.filter(datacenter__code="fra1").count() == 1
    assert tab.page.locator('[data-machine="late.fra1.example.net"]').count() == 1
    tab.heatmap_drawn()  # the fresh preview's picture
    tab.shot("plan-stale")


def test_the_other_pages_render_without_outside_requests(tab: Session, site: UiSite) -> None:
    tab.login("bob")
    tab.shot("overview")
    for path, name in [
        (f"/pools/{site.warp.pk}/", "pool"),
        ("/ips/192.0.2.1/", "ip"),
        ("/audit/", "audit"),
        ("/machines/", "machines"),
        ("/ips/", "ips"),
        ("/inventory/import/", "import"),
        ("/inventory/new/machine/", "machine-form"),
        (f"/datacenters/fra1/plan/?pool={site.warp.pk}&add_machines=20#what-if", "what-if"),
    ]:
        tab.open(path)
        if name in {"pool", "ip"}:
            tab.heatmap_drawn()
        tab.shot(name)
    assert Datacenter.objects.count() == 1


def test_the_policy_is_enforced_so_the_other_tests_prove_the_pages_keep_it(
    tab: Session, site: UiSite
) -> None:
    tab.login("vera")
    tab.open("/datacenters/fra1/")
    tab.heatmap_drawn()
    ran = tab.page.evaluate(
        """() => {
            const script = document.createElement("script");
            script.textContent = "window.inlineRan = true";
            document.head.appendChild(script);
            return window.inlineRan === true;
        }"""
    )
    tab.page.wait_for_timeout(200)
    assert ran is False
    assert any("Content Security Policy" in error for error in tab.errors)
    tab.errors.clear()  # the refusal above was the point


def test_the_demo_datacenter_is_readable_at_1280_by_800(demo_tab: Session) -> None:
    fra1 = Datacenter.objects.get(code="fra1")
    draining = Machine.objects.get(hostname="fra1-m007.example.net")
    machine_save(machine=draining, values={"state": "draining"})
    plan_apply_current(datacenter=fra1, reason="drain m007")
    rng, now = random.Random(7), timezone.now()
    for machine in Machine.objects.filter(datacenter=fra1, state="active")[:80]:
        slices = PortSlice.objects.filter(machine=machine).select_related("ip")
        report = [
            {
                "ip": s.ip.address,
                "lo": s.lo,
                "hi": s.hi,
                "tcp": rng.randrange(s.size),
                "udp": 0,
                "buckets": {},
            }
            for s in slices
        ]
        usage_record(hostname=machine.hostname, at=now, slices=report)
    demo_tab.login("bob")
    demo_tab.open("/datacenters/fra1/")
    heatmap = demo_tab.heatmap_drawn()
    ips = EgressIP.objects.filter(pool__datacenter=fra1).count()
    assert heatmap.get_attribute("data-rows") == str(ips)
    # Every row keeps its label at this size.
    assert demo_tab.page.locator(".heatmap-plot .ytick text").count() == ips
    assert demo_tab.page.locator(".heatmap-plot .scatterlayer .point").count() == (
        PortSlice.objects.filter(state="draining", ip__pool__datacenter=fra1).count()
    )
    own = PortSlice.objects.filter(machine__hostname="fra1-m001.example.net").first()
    assert own is not None
    text = demo_tab.hover((own.lo + own.hi) / 2, _row_of(demo_tab, own.ip.address))
    assert "machine fra1-m001.example.net" in text
    demo_tab.shot("demo-heatmap")
    drained = PortSlice.objects.filter(machine=draining).select_related("ip").first()
    assert drained is not None and drained.drain_until is not None
    text = demo_tab.hover((drained.lo + drained.hi) / 2, _row_of(demo_tab, drained.ip.address))
    assert "state draining, drain ends " + drained.drain_until.strftime("%Y-%m-%d %H:%M") in text
    demo_tab.page.check("input[name=mode][value=utilization]")
    demo_tab.page.wait_for_selector("[data-heatmap][data-mode=utilization]")
    demo_tab.page.mouse.move(5, 5)
    demo_tab.shot("demo-utilization")
    demo_tab.open("/")
    cards = demo_tab.page.locator("article.card")
    assert cards.count() == Datacenter.objects.count() == 3
    demo_tab.shot("demo-overview")


def test_a_machine_whose_agent_acked_failed_is_shown_failed_never_green(
    tab: Session, site: UiSite
) -> None:
    from tests.planner.ui.test_machine_status import (
        ADDRESSES_MISSING,
        ADDRESSES_ON,
        EDGE0,
        EDGE1,
        GUARD_ON,
        RANGE_ON,
        ack,
    )

    ack(EDGE0, RANGE_ON, GUARD_ON, ADDRESSES_ON)
    ack(EDGE1, RANGE_ON, GUARD_ON, ADDRESSES_MISSING)
    tab.login("vera")
    colour = "(el) => getComputedStyle(el).color"
    healthy = tab.page.locator("[data-fact=machines] [data-status=enforcing]")
    failed = tab.page.locator("[data-fact=machines] [data-status=failed]")
    assert failed.inner_text() == "1 failed" and healthy.inner_text() == "1 applied and enforcing"
    green, red = healthy.evaluate(colour), failed.evaluate(colour)
    assert red != green
    tab.open(f"/machines/{EDGE1}/")
    status = tab.page.locator("[data-fact=status]")
    assert status.inner_text() == "failed" and status.evaluate(colour) == red
    reason = tab.page.locator("[data-fact=status-reason]").inner_text()
    assert "not on this host: 192.0.2.1" in reason
    tab.open(f"/machines/{EDGE0}/")
    assert tab.page.locator("[data-fact=status]").evaluate(colour) == green
    tab.shot("machine-failed")


@pytest.fixture
def live_demo_tab(
    browser: Any, live_server: Any, transactional_db: None, key_dir: Path
) -> Iterator[Session]:
    """The quick start's live datacenter ``demo1``: 64-port slices on two IPs, from port 1,024."""
    signing_key_generate()
    with acting_as("system:test"):
        demo_datacenter_ensure(mode=Mode(True, EGRESS_IPS, (1024, 65535), (ORIGIN, 80)))
    make_users()
    session = Session(browser, live_server.url)
    yield session
    session.close()


def _x_range(tab: Session) -> list[float]:
    """The x range Plotly drew (its full layout, after any autorange)."""
    shown: list[float] = tab.page.evaluate(
        "() => document.querySelector('.heatmap-plot')._fullLayout.xaxis.range.slice()"
    )
    return shown


def test_a_sparse_datacenter_opens_on_its_slices(live_demo_tab: Session) -> None:
    tab = live_demo_tab
    slices = list(PortSlice.objects.filter(ip__pool__datacenter__code="demo1"))
    assert slices, "the demo datacenter has its first plan"
    lo, end = min(s.lo for s in slices), max(s.hi for s in slices) + 1
    tab.login("vera")
    tab.open("/datacenters/demo1/")
    tab.heatmap_drawn()
    start, stop = _x_range(tab)
    # Every slice in view, and they take at least a quarter of it (not a 1 px sliver).
    assert start <= lo and stop >= end, (start, stop, lo, end)
    assert stop - start <= 4 * (end - lo), (start, stop, lo, end)
    own = slices[0]
    row = _row_of(tab, own.ip.address)
    assert f"machine {own.machine.hostname}" in tab.hover((own.lo + own.hi) / 2, row)
    tab.page.mouse.move(5, 5)
    tab.shot("sparse-heatmap")
    # One click shows the whole port space, another brings the slices back.
    button = tab.page.get_by_role("button", name="Whole port space")
    button.click()
    tab.page.wait_for_function(
        "() => document.querySelector('.heatmap-plot')._fullLayout.xaxis.range[1] > 60000"
    )
    start, stop = _x_range(tab)
    assert 0 <= start <= 1024 and stop == 65536
    tab.page.get_by_role("button", name="Fit to the slices").click()
    tab.page.wait_for_function(
        "() => document.querySelector('.heatmap-plot')._fullLayout.xaxis.range[1] < 60000"
    )
    assert _x_range(tab)[0] <= lo


def test_a_drain_next_to_the_lowest_usable_port_keeps_the_axis_in_the_port_space(
    live_demo_tab: Session,
) -> None:
    tab = live_demo_tab
    demo1 = Datacenter.objects.get(code="demo1")
    lowest = PortSlice.objects.filter(ip__pool__datacenter=demo1).order_by("lo").first()
    assert lowest is not None and lowest.lo == 1024
    machine_save(machine=lowest.machine, values={"state": "draining"})
    plan_apply_current(datacenter=demo1, reason="drain the machine at port 1,024")
    assert PortSlice.objects.get(pk=lowest.pk).state == "draining"
    tab.login("vera")
    tab.open("/datacenters/demo1/")
    tab.heatmap_drawn()
    assert tab.page.locator(".heatmap-plot .scatterlayer .point").count() >= 1  # the × marks
    for attempt in ("as opened", "whole", "autorange", "zoomed out past 0"):
        if attempt == "autorange":
            tab.page.evaluate(
                "() => Plotly.relayout(document.querySelector('.heatmap-plot'),"
                " {'xaxis.autorange': true})"
            )
        elif attempt == "whole":
            tab.page.get_by_role("button", name="Whole port space").click()
        elif attempt == "zoomed out past 0":
            tab.page.evaluate(
                "() => Plotly.relayout(document.querySelector('.heatmap-plot'),"
                " {'xaxis.range': [-5000, 70000]})"
            )
        tab.page.wait_for_timeout(100)  # Plotly redraws in the next frame
        start, stop = _x_range(tab)
        # The axis is in ports: 65,536 is the right edge of port 65,535.
        assert 0 <= start < stop <= 65536, (attempt, start, stop)
    tab.shot("drain-at-1024")


def test_the_attention_strip_lists_a_waiting_draft_and_approving_needs_a_confirmation(
    tab: Session, site: UiSite
) -> None:
    draft = make_draft(site)
    tab.login("bob")  # the overview opens on the strip
    item = tab.page.locator(f"#draft-fra1-{draft.number}")
    assert f"Draft r{draft.number} waits for approval" in item.inner_text()
    tab.heatmap_drawn(f"#draft-fra1-{draft.number} [data-heatmap]")  # its picture
    tab.page.mouse.move(5, 5)
    tab.shot("overview")
    tab.open("/datacenters/fra1/")
    item = tab.page.locator(f"#draft-fra1-{draft.number}")
    tab.heatmap_drawn(f"#draft-fra1-{draft.number} [data-heatmap]")
    button = item.get_by_role("button", name=f"Approve r{draft.number}")
    button.click()  # not confirmed: the browser keeps the form, nothing is posted
    tab.page.wait_for_timeout(300)
    assert tab.page.url.endswith("/datacenters/fra1/")
    assert not item.locator("input[name=confirm]").evaluate("box => box.validity.valid")
    draft.refresh_from_db()
    assert draft.status == "draft"
    tab.shot("attention")
    item.locator("input[name=confirm]").check()
    button.click()
    tab.page.wait_for_selector(".messages")
    assert f"Draft r{draft.number} approved" in tab.page.locator(".messages").inner_text()
    assert tab.page.url.endswith("/datacenters/fra1/")
    draft.refresh_from_db()
    assert draft.status == "applied"


def test_a_viewer_sees_the_draft_but_no_approve(tab: Session, site: UiSite) -> None:
    draft = make_draft(site)
    tab.login("vera")
    for path in ("/", "/datacenters/fra1/", "/datacenters/fra1/plan/"):
        tab.open(path)
        assert f"r{draft.number}" in tab.page.locator("main").inner_text()
        assert tab.page.get_by_role("button", name=re.compile("Approve")).count() == 0, path


def test_search_highlights_a_machines_slices_and_answers_an_ip_and_port(
    tab: Session, site: UiSite
) -> None:
    tab.login("vera")
    tab.page.fill("#site-search", "edge0.fra1")
    tab.page.press("#site-search", "Enter")
    tab.page.wait_for_url("**/datacenters/fra1/?highlight=edge0.fra1.example.net")
    heatmap = tab.heatmap_drawn()
    mine = PortSlice.objects.filter(machine__hostname="edge0.fra1.example.net").count()
    assert heatmap.get_attribute("data-highlighted") == str(mine)
    plot = ".heatmap-plot"
    shapes = tab.page.evaluate(f"() => document.querySelector('{plot}').layout.shapes.length")
    assert shapes == mine
    dimmed = tab.page.evaluate(f"() => document.querySelector('{plot}').data[0].opacity")
    assert dimmed < 1
    assert (
        "edge0.fra1.example.net: 2 slices outlined"
        in tab.page.locator(".heatmap-answer").inner_text()
    )
    tab.page.mouse.move(5, 5)
    tab.shot("search-machine")
    # ip:port, typed in the heatmap's own box: who owns it, and that machine's slices.
    own = site.slice_of("edge1.fra1.example.net", site.warp)
    query = f"{own.ip.address}:{own.lo + 100}"
    tab.page.fill("input[name=highlight]", query)
    tab.page.press("input[name=highlight]", "Enter")
    answer = tab.page.locator(".heatmap-answer")
    tab.page.wait_for_function(
        "(q) => document.querySelector('.heatmap-answer').textContent.includes(q)", arg=query
    )
    assert f"belongs to edge1.fra1.example.net (ports {own.lo:,}–{own.hi:,}" in answer.inner_text()
    assert f"highlight={query}" in tab.page.url.replace("%3A", ":")
    assert heatmap.get_attribute("data-highlighted") == "1"


def test_history_rows_show_names_never_braces_or_brackets(tab: Session, site: UiSite) -> None:
    edge1 = site.machines[1]
    machine_save(machine=edge1, values={"weight": 2}, pools=[site.warp, site.cdn])
    tab.login("vera")
    for path in ("/audit/", f"/machines/{edge1.hostname}/", f"/pools/{site.warp.pk}/"):
        tab.open(path)
        rows = tab.page.locator("tr[data-entry]").all_inner_texts()
        assert rows, path
        for row in rows:
            assert "{" not in row and "[" not in row, (path, row)
    tab.open("/audit/")
    text = tab.page.locator("#audit").inner_text()
    assert "weight: 1 → 2" in text.replace("\n", " ") or "weight:" in text
    assert "pools added: fra1/cdn/FR" in text
    tab.shot("audit")


def test_the_whole_port_space_button_hides_when_the_slices_fill_the_axis(
    tab: Session, site: UiSite
) -> None:
    """fra1's slices span most of the axis: nothing to fit, so no button to fit with."""
    tab.login("vera")
    tab.open("/datacenters/fra1/")
    tab.heatmap_drawn()
    fit = tab.page.evaluate("() => document.querySelector('[data-heatmap]').heatmap.payload.fit")
    button = tab.page.locator(".heatmap-whole")
    assert button.is_visible() == (fit is not None)
