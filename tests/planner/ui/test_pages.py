"""The operator UI's pages: who may see and do what, and figures that match the fixture."""

from __future__ import annotations

import gzip
import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from planner import heatmap as hm
from planner.models import AuditEntry, Machine, PlanRevision, PortSlice
from planner.services.plans import plan_apply_current
from planner.services.reports import bundle_ack
from tests.planner.factories import make_ip, make_machine
from tests.planner.ui.fixtures import CDN_IP, RESERVED_PORT, WARP_IPS, UiSite

pytestmark = pytest.mark.django_db

READ_PAGES = [
    "/",
    "/datacenters/fra1/",
    "/datacenters/fra1/plan/",
    "/machines/edge0.fra1.example.net/",
    "/ips/192.0.2.1/",
    "/revisions/",
    "/audit/",
    "/inventory/",
]
EDIT_PAGES = [
    "/inventory/new/machine/",
    "/machines/edge0.fra1.example.net/edit/",
    "/ips/192.0.2.1/edit/",
    "/datacenters/fra1/edit/",
    "/inventory/import/",
]


@pytest.mark.parametrize("url", READ_PAGES + EDIT_PAGES)
def test_it_sends_anonymous_users_to_the_login_page(
    clients: dict[str, Client], ui_site: UiSite, url: str
) -> None:
    response = clients["anonymous"].get(url)
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("url", READ_PAGES + ["/pools/{warp}/"])
def test_it_shows_every_page_to_each_role_and_none_to_a_user_without_one(
    clients: dict[str, Client], ui_site: UiSite, url: str
) -> None:
    url = url.format(warp=ui_site.warp.pk)
    for name in ("alice", "bob", "vera"):
        assert clients[name].get(url).status_code == 200, (name, url)
    assert clients["charlie"].get(url).status_code == 403


@pytest.mark.parametrize("url", EDIT_PAGES)
def test_it_refuses_edit_pages_to_viewers(
    clients: dict[str, Client], ui_site: UiSite, url: str
) -> None:
    assert clients["vera"].get(url).status_code == 403
    assert clients["vera"].post(url, {}).status_code == 403
    assert clients["bob"].get(url).status_code == 200


def test_it_counts_the_fixture_on_the_overview(clients: dict[str, Client], ui_site: UiSite) -> None:
    text = _text(clients["vera"].get("/"))
    # edge0 reported usage but acked no bundle (pending, not healthy); the others never spoke.
    assert "3: 0 applied and enforcing , 1 pending , 2 never seen" in text
    assert "3 in 2 pools" in text
    # 4 slices handed out: 3 x 8,192 + 1 x 4,096 ports; 4,096 + 1,024 sockets in use.
    assert "5,120 of 28,672 handed out (17.9 %)" in text
    assert "revision 1" in text


def test_it_lists_the_pools_with_their_free_slots_and_use(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    html = clients["vera"].get("/datacenters/fra1/").content.decode()
    warp = _row(html, f'data-pool="{ui_site.warp.pk}"')
    cdn = _row(html, f'data-pool="{ui_site.cdn.pk}"')
    assert _cell(warp, "free") == "10" and _cell(cdn, "free") == "14"
    assert _cell(warp, "needed") == "0"
    # warp: 4,096 sockets over 3 x 8,192 ports; cdn: 1,024 over 4,096.
    assert _cell(warp, "use") == "16.7 %" and _cell(cdn, "use") == "25.0 %"
    assert _cell(warp, "peak") == "16.7 %"


def test_the_pools_table_follows_plans_and_inventory_edits(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    def warp_free() -> str:
        html = clients["vera"].get("/datacenters/fra1/").content.decode()
        return _cell(_row(html, f'data-pool="{ui_site.warp.pk}"'), "free")

    assert warp_free() == "10"
    make_machine("edge3.fra1.example.net", datacenter=ui_site.datacenter).pools.add(ui_site.warp)
    plan_apply_current(datacenter=ui_site.datacenter, reason="edge3")
    assert warp_free() == "9"  # the new machine took a slot
    make_ip("192.0.2.3", pool=ui_site.warp)
    assert warp_free() == "16"  # a whole new IP: 7 more slots


def test_it_hides_edit_controls_from_viewers(clients: dict[str, Client], ui_site: UiSite) -> None:
    for url in ("/datacenters/fra1/", "/machines/edge0.fra1.example.net/", "/inventory/"):
        viewer = clients["vera"].get(url).content.decode()
        operator = clients["bob"].get(url).content.decode()
        assert "/edit/" not in viewer and "/edit/" in operator, url
    # A plan that changes nothing offers nothing to apply, to anyone.
    unchanged = clients["bob"].get("/datacenters/fra1/plan/").content.decode()
    assert 'id="apply-form"' not in unchanged and "Nothing to apply" in unchanged
    make_machine("edge3.fra1.example.net", datacenter=ui_site.datacenter).pools.add(ui_site.warp)
    plan_as_viewer = clients["vera"].get("/datacenters/fra1/plan/").content.decode()
    assert 'id="apply-form"' not in plan_as_viewer and "needs the operator" in plan_as_viewer
    assert 'id="apply-form"' in clients["bob"].get("/datacenters/fra1/plan/").content.decode()


def test_the_heatmap_api_draws_one_row_per_ip_with_owners_and_reserved_ports(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    body = clients["vera"].get("/api/v1/datacenters/fra1/heatmap?mode=ownership").json()
    assert [row["ip"] for row in body["rows"]] == [CDN_IP, *WARP_IPS]  # cdn sorts before warp
    assert body["rows"][1]["label"] == "warp · DE · 192.0.2.1"
    z = body["figure"]["data"][0]["z"]
    edges = body["edges"]
    assert edges[0] == 1024 and edges[-1] == 65536 and body["bucket"] == 256
    column = (RESERVED_PORT - edges[0]) // body["bucket"]
    assert z[1][column] == hm.RESERVED  # nobody holds the slot with the reserved port
    own = ui_site.slice_of("edge0.fra1.example.net", ui_site.warp)
    row = [r["ip"] for r in body["rows"]].index(own.ip.address)
    owned = [s for s in body["slices"] if s[0] == row and s[1] == own.lo]
    assert owned and body["machines"][owned[0][3]] == "edge0.fra1.example.net"
    first, last = (own.lo - 1024) // 256, (own.hi - 1024) // 256
    assert len({z[row][c] for c in range(first, last + 1)}) == 1
    assert z[row][first] >= hm.MACHINE_BASE


def test_the_heatmap_api_gives_the_reported_use_per_bucket(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    body = clients["vera"].get("/api/v1/datacenters/fra1/heatmap?mode=utilization").json()
    z = body["figure"]["data"][0]["z"]
    own = ui_site.slice_of("edge0.fra1.example.net", ui_site.warp)
    row = [r["ip"] for r in body["rows"]].index(own.ip.address)
    assert {z[row][c] for c in range((own.lo - 1024) // 256, (own.hi - 1024) // 256 + 1)} == {0.5}
    assert [s[6] for s in body["slices"] if s[0] == row and s[1] == own.lo] == [0.5]
    other = ui_site.slice_of("edge1.fra1.example.net", ui_site.warp)
    other_row = [r["ip"] for r in body["rows"]].index(other.ip.address)
    assert [s[6] for s in body["slices"] if s[0] == other_row and s[1] == other.lo] == [None]
    # An agent that never reported is not an idle one: its cells say "no report".
    assert z[other_row][(other.lo - 1024) // 256] == hm.UTIL_NO_REPORT


def test_the_heatmap_api_collapses_to_one_row_per_pool_and_filters(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    body = clients["vera"].get("/api/v1/datacenters/fra1/heatmap?collapse=1").json()
    assert body["collapsed"] and [r["label"] for r in body["rows"]] == [
        "cdn · FR · 1 IPs",
        "warp · DE · 2 IPs",
    ]
    use = clients["vera"].get("/api/v1/datacenters/fra1/heatmap?collapse=1&mode=utilization")
    z = use.json()["figure"]["data"][0]["z"]
    own = ui_site.slice_of("edge0.fra1.example.net", ui_site.warp)
    assert z[1][(own.lo - 1024) // 256] == 0.5  # the pool's one reported slice there
    only = clients["vera"].get("/api/v1/datacenters/fra1/heatmap?country=de").json()
    assert [r["ip"] for r in only["rows"]] == list(WARP_IPS)
    bad = clients["vera"].get("/api/v1/datacenters/fra1/heatmap?mode=heat")
    assert bad.status_code == 400 and "mode" in bad.json()
    assert clients["anonymous"].get("/api/v1/datacenters/fra1/heatmap").status_code in (401, 403)


def test_the_heatmap_is_in_the_openapi_schema(clients: dict[str, Client], ui_site: UiSite) -> None:
    schema = clients["vera"].get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"]["/api/v1/datacenters/{code}/heatmap"]["get"]
    names = {p["name"] for p in operation["parameters"]}
    assert {"mode", "pool", "purpose", "country", "collapse"} <= names


def _digest(html: str) -> str:
    match = re.search(r'name="inputs_digest" value="([0-9a-f]+)"', html)
    assert match, "no digest on the page"
    return match.group(1)


def test_an_operator_applies_the_previewed_plan(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    make_machine("edge3.fra1.example.net", datacenter=ui_site.datacenter).pools.add(ui_site.warp)
    page = clients["bob"].get("/datacenters/fra1/plan/").content.decode()
    assert 'data-kind="added">1 slice' in page and 'data-machine="edge3.fra1.example.net"' in page
    payload = _json_block(page, "diff-data")
    added = [s for s in payload["slices"] if s[7] == "added"]
    assert [payload["machines"][s[3]] for s in added] == ["edge3.fra1.example.net"]
    response = clients["bob"].post(
        "/datacenters/fra1/plan/",
        {"inputs_digest": _digest(page), "reason": "edge3 joins", "confirm": "on"},
    )
    assert response.status_code == 302 and response["Location"] == "/revisions/?datacenter=fra1"
    revision = PlanRevision.objects.get(number=2)
    assert (revision.reason, revision.created_by.username) == ("edge3 joins", "bob")  # type: ignore[union-attr]
    assert PortSlice.objects.filter(machine__hostname="edge3.fra1.example.net").count() == 1
    listed = clients["vera"].get("/revisions/?datacenter=fra1").content.decode()
    assert 'data-revision="fra1-2"' in listed and "edge3 joins" in listed


def test_it_refuses_a_stale_preview_with_a_plain_reason_and_a_fresh_one(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    # Something to apply (a plan that changes nothing offers no apply).
    make_machine("edge4.fra1.example.net", datacenter=ui_site.datacenter).pools.add(ui_site.warp)
    stale = _digest(clients["bob"].get("/datacenters/fra1/plan/").content.decode())
    make_machine("edge3.fra1.example.net", datacenter=ui_site.datacenter).pools.add(ui_site.warp)
    response = clients["bob"].post(
        "/datacenters/fra1/plan/", {"inputs_digest": stale, "confirm": "on"}
    )
    html = response.content.decode()
    assert response.status_code == 409
    assert (
        "the preview you confirmed is out of date" in html and "changed since this preview" in html
    )
    assert _digest(html) != stale and 'data-kind="added">2 slices' in html
    assert PlanRevision.objects.count() == 1


def test_it_needs_the_confirmation_and_refuses_viewers_the_apply(
    clients: dict[str, Client], users: dict[str, User], ui_site: UiSite
) -> None:
    make_machine("edge4.fra1.example.net", datacenter=ui_site.datacenter).pools.add(ui_site.warp)
    digest = _digest(clients["bob"].get("/datacenters/fra1/plan/").content.decode())
    unconfirmed = clients["bob"].post("/datacenters/fra1/plan/", {"inputs_digest": digest})
    assert unconfirmed.status_code == 400 and "Tick the box" in unconfirmed.content.decode()
    viewer = clients["vera"].post(
        "/datacenters/fra1/plan/", {"inputs_digest": digest, "confirm": "on"}
    )
    assert viewer.status_code == 403 and PlanRevision.objects.count() == 1
    no_csrf = Client(enforce_csrf_checks=True)
    no_csrf.force_login(users["bob"])
    assert (
        no_csrf.post(
            "/datacenters/fra1/plan/", {"inputs_digest": digest, "confirm": "on"}
        ).status_code
        == 403
    )


def test_what_if_tells_the_ips_needed_and_writes_nothing(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    before = (Machine.objects.count(), PortSlice.objects.count(), AuditEntry.objects.count())
    url = f"/datacenters/fra1/plan/?pool={ui_site.warp.pk}&add_machines=20"
    html = clients["vera"].get(url).content.decode()
    # 10 free slots; 20 newcomers need 20; 10 missing at 7 slots per IP: 2 IPs.
    assert 'data-needed="2">2 more IPs needed' in html
    fits = clients["vera"].get(url + "&add_ips=2").content.decode()
    assert "It fits." in fits and "0 more IPs needed" in fits
    # The picture and the capacity table are redrawn for the hypothetical inventory:
    # the two what-if IPs are rows, holding added slices; the pool's slots grow.
    data = re.search(r'id="what-if-data"[^>]*>(.*?)</script>', fits, re.S)
    assert data, "a what-if picture"
    picture = json.loads(data.group(1))
    assert [r["ip"] for r in picture["rows"]][-2:] == ["what-if-ip-1", "what-if-ip-2"]
    assert {s[7] for s in picture["slices"] if s[0] >= len(picture["rows"]) - 2} == {"added"}
    table = fits[fits.index('id="what-if-capacity"') :]
    row = _row(table, f'data-pool="{ui_site.warp.key}"')
    assert re.search(r"<td class=\"num\">4</td>", row), row  # 2 IPs + 2 what-if IPs
    smaller = (
        clients["vera"]
        .get(f"/datacenters/fra1/plan/?pool={ui_site.warp.pk}&add_machines=20&slice_size=4096")
        .content.decode()
    )
    assert "It fits." in smaller  # 4,096-port slices: 27 slots more than enough
    assert (
        Machine.objects.count(),
        PortSlice.objects.count(),
        AuditEntry.objects.count(),
    ) == before


def test_the_machine_page_shows_bundle_serials_the_rejection_and_usage(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    machine = Machine.objects.get(hostname="edge1.fra1.example.net")
    bundle_ack(
        hostname=machine.hostname,
        serial=machine.bundle_serial,
        status="rejected",
        reason="bad_signature",
        detail="kid unknown",
    )
    html = clients["vera"].get(f"/machines/{machine.hostname}/").content.decode()
    assert f'data-fact="signed">{machine.bundle_serial}<' in html
    assert "bad_signature: kid unknown" in html
    assert 'data-fact="status" data-status="rejected" class="bad">rejected' in html
    own = clients["vera"].get("/machines/edge0.fra1.example.net/").content.decode()
    assert '<td class="num" data-col="use">50.0 %</td>' in own  # the warp slice
    assert '<td class="num" data-col="use">25.0 %</td>' in own  # the cdn slice
    figure = _json_block(own, "usage-figure")
    assert sorted(max(trace["y"]) for trace in figure["data"]) == [0.25, 0.5]


def test_an_operator_drains_a_machine_and_returns_it(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    url = "/machines/edge2.fra1.example.net/state/"
    assert clients["vera"].post(url, {"state": "draining"}).status_code == 403
    assert clients["bob"].post(url, {"state": "draining"}).status_code == 302
    assert Machine.objects.get(hostname="edge2.fra1.example.net").state == "draining"
    assert (
        "Return to service"
        in clients["bob"].get("/machines/edge2.fra1.example.net/").content.decode()
    )
    clients["bob"].post(url, {"state": "active"})
    assert Machine.objects.get(hostname="edge2.fra1.example.net").state == "active"
    assert clients["bob"].post(url, {"state": "retired"}).status_code == 400


def test_inventory_forms_save_through_the_services_and_show_their_errors(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    url = "/inventory/new/machine/"
    data = {
        "hostname": "edge9.fra1.example.net",
        "datacenter": ui_site.datacenter.pk,
        "address": "10.9.0.99",
        "state": "active",
        "weight": 1,
        "pools": [ui_site.warp.pk],
    }
    response = clients["bob"].post(url, data)
    assert response.status_code == 302
    machine = Machine.objects.get(hostname="edge9.fra1.example.net")
    assert list(machine.pools.all()) == [ui_site.warp]
    assert AuditEntry.objects.filter(object_repr=machine.hostname, actor="bob").exists()
    bad = clients["bob"].post(url, {**data, "hostname": "bad_host!", "address": "10.9.0.98"})
    assert bad.status_code == 400 and "is not an RFC 1123 host name" in bad.content.decode()
    reserved = clients["bob"].post(
        "/ips/192.0.2.2/edit/",
        {
            "pool": ui_site.warp.pk,
            "usable_lo": 1024,
            "usable_hi": 65535,
            "reserved_ports": "70000",
            "state": "active",
        },
    )
    assert reserved.status_code == 400 and "outside the usable range" in reserved.content.decode()


def test_import_is_whole_or_nothing_and_names_the_bad_row(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    good = "hostname,datacenter,address,pools\nnew1.fra1.example.net,fra1,10.9.1.2,fra1/warp/DE\n"
    response = clients["bob"].post("/inventory/import/", {"text": good, "format": "auto"})
    assert (
        response.status_code == 302
        and Machine.objects.filter(hostname="new1.fra1.example.net").exists()
    )
    bad = (
        good.replace("new1", "new2")
        + "bad_name,fra1,10.9.1.3,\n"
        + "new3.fra1.example.net,nowhere,10.9.1.4,\n"
    )
    response = clients["bob"].post("/inventory/import/", {"text": bad, "format": "auto"})
    html = response.content.decode()
    assert response.status_code == 400 and "Nothing was imported" in html
    # Every bad row is listed, each with its line, field and value.
    assert "<td>line 3</td><td>hostname</td>" in html
    assert "<td>line 4</td><td>datacenter</td><td><code>nowhere</code>" in html
    assert html.count("<tr><td>line ") == 2
    assert not Machine.objects.filter(hostname="new2.fra1.example.net").exists()


def test_the_audit_log_filters_by_who_and_what(clients: dict[str, Client], ui_site: UiSite) -> None:
    clients["bob"].post("/machines/edge2.fra1.example.net/state/", {"state": "draining"})
    html = clients["vera"].get("/audit/?who=bob").content.decode()
    actors = set(re.findall(r'<td data-col="who">([^<]*)</td>', html))
    assert actors == {"bob"}
    assert "edge2.fra1.example.net" in html
    none = clients["vera"].get("/audit/?who=bob&what=planner.EgressPool").content.decode()
    assert "Nothing matches." in none


def test_login_and_logout(users: dict[str, User], ui_site: UiSite) -> None:
    from tests.planner.ui.fixtures import PASSWORD

    client = Client()
    wrong = client.post("/login/", {"username": "vera", "password": "nope"})
    assert wrong.status_code == 200 and "correct username and password" in wrong.content.decode()
    right = client.post(
        "/login/?next=/audit/", {"username": "vera", "password": PASSWORD, "next": "/audit/"}
    )
    assert right.status_code == 302 and right["Location"] == "/audit/"
    assert client.get("/").status_code == 200
    assert client.post("/logout/").status_code == 302
    assert client.get("/").status_code == 302


def _json_block(html: str, block_id: str) -> Any:
    match = re.search(rf'id="{block_id}" type="application/json">(.*?)</script>', html, re.S)
    assert match, block_id
    return json.loads(match.group(1))


def _text(response: object) -> str:
    html = response.content.decode()  # type: ignore[attr-defined]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def _row(html: str, marker: str) -> str:
    start = html.index(marker)
    return html[start : html.index("</tr>", start)]


def _cell(row: str, column: str) -> str:
    match = re.search(rf'data-col="{column}">([^<]*)<', row)
    assert match, (column, row)
    return match.group(1).strip()


def test_an_edit_that_displaces_a_slice_is_refused_then_applied_with_its_plan(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    own = ui_site.slice_of("edge0.fra1.example.net", ui_site.warp)
    url = f"/ips/{own.ip.address}/edit/"
    data = {
        "pool": ui_site.warp.pk,
        "usable_lo": 1024,
        "usable_hi": 65535,
        "reserved_ports": f"{RESERVED_PORT if own.ip.address == WARP_IPS[0] else ''}, {own.lo + 5}",
        "state": "active",
    }
    refused = clients["bob"].post(url, data)
    html = refused.content.decode()
    assert refused.status_code == 400 and "would leave 1 live slice outside" in html
    assert f"{own.lo}-{own.hi}" in html and "edge0.fra1.example.net" in html
    preview = clients["bob"].post(url, {**data, "plan": "preview"})
    html = preview.content.decode()
    assert preview.status_code == 200 and "1 added, 1 start draining" in html
    # The picture of that plan, drawn with the edited IP's new reserved port.
    found = re.search(r'id="change-plan-data"[^>]*>(.*?)</script>', html, re.S)
    assert found, "the change's plan as a picture"
    picture = json.loads(found.group(1))
    row = [r["ip"] for r in picture["rows"]].index(own.ip.address)
    kinds = {s[7] for s in picture["slices"] if s[0] == row}
    assert "draining" in kinds and picture["rows"][row]["reserved"] >= 1
    digest = _digest(html)
    applied = clients["bob"].post(
        url, {**data, "plan": "apply", "inputs_digest": digest, "confirm": "on"}
    )
    assert applied.status_code == 302, applied.content.decode()[:2000]
    own.refresh_from_db()
    assert own.state == "draining"
    assert (
        PortSlice.objects.filter(
            machine__hostname="edge0.fra1.example.net", ip__pool=ui_site.warp, state="active"
        ).count()
        == 1
    )
    assert PlanRevision.objects.get(number=2).created_by.username == "bob"  # type: ignore[union-attr]


def test_a_short_pool_shows_the_ips_needed_and_no_apply(
    clients: dict[str, Client], ui_site: UiSite
) -> None:
    for n in range(20):  # 10 free slots, 7 per IP: 10 more slices need 2 IPs
        machine = make_machine(f"new{n}.fra1.example.net", datacenter=ui_site.datacenter)
        machine.pools.add(ui_site.warp)
    html = clients["bob"].get("/datacenters/fra1/plan/").content.decode()
    assert "some pools are short of IPs" in html and "2 more IPs needed" in html
    assert 'id="apply-form"' not in html
    needed = _cell(_row(html, 'data-pool="fra1/warp/DE"'), "needed")
    assert needed == "2"
    overview = _text(clients["vera"].get("/"))
    assert "fra1/warp/DE: 2 more IPs needed" in overview


def test_the_page_loads_the_api_body_gzipped(clients: dict[str, Client], ui_site: UiSite) -> None:
    query = "?mode=utilization&country=DE"
    api = clients["vera"].get("/api/v1/datacenters/fra1/heatmap" + query)
    page = clients["vera"].get(
        "/datacenters/fra1/heatmap.json" + query, HTTP_ACCEPT_ENCODING="gzip"
    )
    assert page.status_code == 200 and page["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(page.content)) == api.json()
    assert clients["anonymous"].get("/datacenters/fra1/heatmap.json").status_code == 302
    assert clients["charlie"].get("/datacenters/fra1/heatmap.json").status_code == 403
