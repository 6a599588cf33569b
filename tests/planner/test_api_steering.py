"""The steering table, as JSON and as an nftables script, agrees with the slices."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from rest_framework.test import APIClient

from planner.models import Machine, PortSlice
from planner.services.plans import plan_apply_current
from planner.steering import MARK_BASE, RULE_PRIORITY
from tests.agent.netns import ip, unique_name
from tests.planner.conftest import Site
from tests.planner.factories import make_machine
from tests.support import need, need_root

pytestmark = pytest.mark.django_db


def _db_rows() -> set[tuple[str, int, int, str, str, str]]:
    return {
        (s.ip.address, s.lo, s.hi, s.machine.hostname, s.machine.address, s.state)
        for s in PortSlice.objects.select_related("ip", "machine")
    }


def test_the_json_table_lists_every_live_slice(clients: dict[str, APIClient], site: Site) -> None:
    site.machines[1].state = "retired"
    site.machines[1].save()
    preview = clients["alice"].post("/api/v1/datacenters/fra1/plan/preview").json()
    clients["alice"].post(
        "/api/v1/datacenters/fra1/plan/apply",
        {"inputs_digest": preview["inputs_digest"]},
        format="json",
    )
    body = clients["lb"].get("/api/v1/datacenters/fra1/steering").json()
    assert body["revision"] == 2
    rows = {
        (r["ip"], r["lo"], r["hi"], r["machine"], r["next_hop"], r["state"]) for r in body["slices"]
    }
    assert rows == _db_rows()
    draining = [r for r in body["slices"] if r["state"] == "draining"]
    assert [r["machine"] for r in draining] == ["edge1.fra1.example.net"]  # still steers


def _nft(clients: dict[str, APIClient]) -> str:
    response = clients["lb"].get("/api/v1/datacenters/fra1/steering?format=nft")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    return response.content.decode()


def test_the_nft_script_maps_each_slice_to_its_machines_mark(
    clients: dict[str, APIClient],
) -> None:
    script = _nft(clients)
    marks = clients["lb"].get("/api/v1/datacenters/fra1/steering").json()["marks"]
    found = {
        (ip, int(lo), int(hi), int(mark, 16))
        for ip, lo, hi, mark in re.findall(
            r"\n      ([0-9a-f.:]+) \. (\d+)-(\d+) : (0x[0-9a-f]+)", script
        )
    }
    expected = {(ip, lo, hi, marks[host]) for ip, lo, hi, host, _, _ in _db_rows()}
    assert found == expected and min(marks.values()) > MARK_BASE
    for host, mark in marks.items():
        hop = next(r[4] for r in _db_rows() if r[3] == host)
        assert f"ip -4 route replace default via {hop} table {mark}" in script
        rule = f"pref {RULE_PRIORITY} fwmark {mark:#x} lookup {mark}"
        assert f"ip -4 rule show {rule} | grep -q . || ip -4 rule add {rule}" in script


def _marks(clients: dict[str, APIClient]) -> dict[str, int]:
    return dict(clients["lb"].get("/api/v1/datacenters/fra1/steering").json()["marks"])


def test_a_machine_keeps_its_mark_for_life(clients: dict[str, APIClient], site: Site) -> None:
    """Joining and leaving machines never renumber the others, and a mark is never reused."""
    before = _marks(clients)
    pool = site.datacenter.pools.get()
    joiner = make_machine("aaa.fra1.example.net", datacenter=site.datacenter, address="10.9.0.9")
    joiner.pools.add(pool)  # sorts first by hostname: with marks by name order, all would move
    plan_apply_current(datacenter=site.datacenter, reason="test")
    after_join = _marks(clients)
    assert {h: m for h, m in after_join.items() if h in before} == before
    assert after_join["aaa.fra1.example.net"] == max(before.values()) + 1

    leaver = site.machines[0]
    Machine.objects.filter(pk=leaver.pk).update(state="retired")
    plan_apply_current(datacenter=site.datacenter, reason="test")
    PortSlice.objects.filter(machine=leaver).delete()  # its drain ended
    Machine.objects.filter(pk=leaver.pk).delete()
    late = make_machine("zzz.fra1.example.net", datacenter=site.datacenter, address="10.9.0.10")
    late.pools.add(pool)
    plan_apply_current(datacenter=site.datacenter, reason="test")
    final = _marks(clients)
    assert {h: m for h, m in final.items() if h in after_join} == {
        h: m for h, m in after_join.items() if h in final and h != "zzz.fra1.example.net"
    }
    assert final["zzz.fra1.example.net"] == max(after_join.values()) + 1  # not the freed one


def test_a_conditional_get_answers_304_until_the_table_changes(
    clients: dict[str, APIClient], site: Site
) -> None:
    first = clients["lb"].get("/api/v1/datacenters/fra1/steering")
    etag = first["ETag"]
    assert etag and first.status_code == 200
    again = clients["lb"].get("/api/v1/datacenters/fra1/steering", HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304 and again["ETag"] == etag and not again.content
    nft = clients["lb"].get("/api/v1/datacenters/fra1/steering?format=nft", HTTP_IF_NONE_MATCH=etag)
    assert nft.status_code == 304
    Machine.objects.filter(pk=site.machines[1].pk).update(state="retired")
    plan_apply_current(datacenter=site.datacenter, reason="test")
    changed = clients["lb"].get("/api/v1/datacenters/fra1/steering", HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag


@pytest.fixture
def gateway_ns() -> Iterator[str]:
    """A namespace whose veth reaches the site's machines (10.9.0.0/24) and fd00:9::/64."""
    need_root()
    need(shutil.which("nft") is not None, "needs nft")
    namespace = unique_name("g")
    ip("netns", "add", namespace)
    try:
        ip("-n", namespace, "link", "add", "gw0", "type", "veth", "peer", "name", "gw1")
        for dev in ("lo", "gw0", "gw1"):
            ip("-n", namespace, "link", "set", dev, "up")
        ip("-n", namespace, "addr", "add", "10.9.0.1/24", "dev", "gw0")
        ip("-n", namespace, "addr", "add", "fd00:9::1/64", "dev", "gw0", "nodad")
        yield namespace
    finally:
        ip("netns", "del", namespace, check=False)


def _run_script(namespace: str, script: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, "sh", "-c", script], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def _policy(namespace: str) -> tuple[str, str, str]:
    def show(*args: str) -> str:
        return ip("-n", namespace, *args).stdout

    return show("rule", "show", "pref", str(RULE_PRIORITY)), show(
        "route", "show", "table", "all"
    ), subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "list", "table", "inet", "portslice_steer"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_the_script_is_rerunnable_and_removes_unused_marks(
    clients: dict[str, APIClient], site: Site, gateway_ns: str
) -> None:
    marks = _marks(clients)
    first = _nft(clients)
    _run_script(gateway_ns, first)
    _run_script(gateway_ns, first)  # again: no "File exists", nothing doubled
    rules, routes, table = _policy(gateway_ns)
    assert len(rules.splitlines()) == len(marks)
    for host, mark in marks.items():
        assert f"fwmark {mark:#x} lookup {mark}" in rules
        hop = next(r[4] for r in _db_rows() if r[3] == host)
        assert f"default via {hop} dev gw0 table {mark}" in routes
    assert "icmp_v4" in table and "@th,224,16" in table

    gone = site.machines[2]
    Machine.objects.filter(pk=gone.pk).update(state="retired")
    plan_apply_current(datacenter=site.datacenter, reason="test")
    PortSlice.objects.filter(machine=gone).delete()  # its drain ended
    _run_script(gateway_ns, _nft(clients))
    rules, routes, _ = _policy(gateway_ns)
    assert f"fwmark {marks[gone.hostname]:#x}" not in rules
    assert f"table {marks[gone.hostname]}" not in routes
    kept = [m for h, m in marks.items() if h != gone.hostname]
    assert all(f"fwmark {m:#x} lookup {m}" in rules for m in kept)
    forwarding = ip("netns", "exec", gateway_ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout
    rp_filter = ip("netns", "exec", gateway_ns, "sysctl", "-n", "net.ipv4.conf.gw0.rp_filter")
    assert forwarding.strip() == "1" and rp_filter.stdout.strip() == "0"


def test_a_load_balancer_token_bound_to_a_datacenter_sees_only_it(site: Site) -> None:
    from planner.choices import TokenKind
    from planner.services.tokens import api_token_create
    from tests.planner.factories import make_datacenter

    make_datacenter(code="lhr1", country="GB")
    _, key = api_token_create(
        name="lb-fra1", kind=TokenKind.LOAD_BALANCER, datacenter=site.datacenter
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get("/api/v1/datacenters/fra1/steering").status_code == 200
    assert client.get("/api/v1/datacenters/lhr1/steering").status_code == 403
    assert client.get("/api/v1/machines").status_code == 403
