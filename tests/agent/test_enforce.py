"""The nftables guard and the netns port range, on a real kernel inside network namespaces."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.bundle import Bundle, BundleSlice
from agent.enforce import counter_name, render_ruleset
from tests.agent import netlab
from tests.agent.netlab import PEER_PORT, PEER_V4, PEER_V6, SHARED_V4, SHARED_V6, Netns
from tests.support import need, need_root


def _slice(ip: str, lo: int, hi: int, state: str = "active") -> BundleSlice:
    return BundleSlice(ip, lo, hi, state, "fra1/warp/DE", "warp", "DE")


SHARED = ("198.51.100.0/28", "2001:db8::/125")
#: A shared address of the datacenter on which the host under test holds no slice.
NEIGHBOUR_V4 = "198.51.100.8"


def _bundle(*slices: BundleSlice, serial: int = 7, shared: tuple[str, ...] = ()) -> Bundle:
    return Bundle("edge-test", "fra1", serial, 3, 0, 0, tuple(slices), "kid", "token", shared)


MIXED = _bundle(
    _slice(SHARED_V4, 40000, 40063),
    _slice(SHARED_V4, 50000, 50255, "draining"),
    _slice(SHARED_V6, 40000, 40063),
)

# Sends one TCP connect or UDP datagram per probe from a hand-bound source port.
PROBE = f"""
import json, socket, sys, time
results = []
for src, sport, dst, proto in json.loads(sys.argv[1]):
    started = time.monotonic()
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src, sport))
    s.settimeout(1.5)
    try:
        if proto == "tcp":
            s.connect((dst, {PEER_PORT}))
        else:
            s.sendto(b"x", (dst, {PEER_PORT}))
        results.append("sent")
    except OSError as error:
        results.append(f"errno {{error.errno}}" if error.errno else "timeout")
    if time.monotonic() - started > 1.0:
        results[-1] += " slow"
    s.close()
print(json.dumps(results))
"""

ENFORCE = netlab.bundle_script_prelude() + (
    "from agent.enforce import enforce\n"
    "flags = json.loads(sys.argv[2])\n"
    "result = enforce(bundle_from(sys.argv[1]), **flags)\n"
    "print(json.dumps({**result.as_dict(), 'ok': result.ok}))\n"
)

COUNTERS = (
    "import json; from agent.enforce import read_counters; print(json.dumps(read_counters()))"
)
DROPS = "import json; from agent.enforce import read_drops_by_address as r; print(json.dumps(r()))"


def _enforce(ns: Netns, bundle: Bundle, **flags: bool) -> dict:
    document = json.loads(netlab.bundle_json(serial=bundle.serial, shared=list(bundle.shared)))
    document["slices"] = [
        {f: getattr(s, f) for f in ("ip", "lo", "hi", "state", "pool", "purpose", "country")}
        for s in bundle.slices
    ]
    options = {"manage_port_range": True, "manage_nftables": True, **flags}
    out = ns.python(ENFORCE, json.dumps(document), json.dumps(options)).stdout
    return json.loads(out)


def _counters(ns: Netns) -> dict[str, list[int]]:
    return json.loads(ns.python(COUNTERS).stdout)


def _drops(ns: Netns) -> dict[str, int]:
    return json.loads(ns.python(DROPS).stdout)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Netns, Netns, Path]]:
    need_root()
    need(netlab.have_command("nft"), "needs the nft command (apt-get install nftables)")
    log = tmp_path / "peer.log"
    with netlab.netns_pair() as (host, peer):
        netlab.start_peer_server(peer, log)
        yield host, peer, log


def test_it_renders_one_replacing_transaction() -> None:
    script = render_ruleset(MIXED)
    lines = [line for line in script.splitlines() if not line.startswith("#")]
    assert lines[:3] == [
        "table inet portslice",
        "delete table inet portslice",
        "table inet portslice {",
    ]
    assert "198.51.100.7 . 40000-40063, 198.51.100.7 . 50000-50255" in script  # draining too
    assert "2001:db8::7 . 40000-40063" in script
    assert "type filter hook output priority filter; policy accept;" in script
    for item in MIXED.slices:
        assert f"counter {counter_name(item)} {{ }}" in script


def test_it_renders_empty_sets_for_a_bundle_without_slices() -> None:
    script = render_ruleset(_bundle())
    assert "set shared_v4 { type ipv4_addr; flags interval; }" in script
    assert "elements = { 198" not in script


def test_it_gives_every_slice_its_own_counter_name() -> None:
    names = {
        counter_name(_slice("2001:db8::7", 40000, 40063)),
        counter_name(_slice("2001:db8:7::", 40000, 40063)),
        counter_name(_slice("2001:db8::7:0", 40000, 40063)),
        counter_name(_slice("198.51.100.7", 4000, 40063)),
        counter_name(_slice("198.51.100.74", 0, 40063)),
    }
    assert len(names) == 5
    assert counter_name(_slice(SHARED_V4, 40000, 40063)) == "slice_198_51_100_7_40000_40063"


def test_it_drops_egress_outside_the_slices_and_counts_it(lab) -> None:
    host, _peer, log = lab
    result = _enforce(host, MIXED)
    assert result["ok"] and result["nftables"]["state"] == "on", result

    probes = [
        [SHARED_V4, 40010, PEER_V4, "udp"],  # inside the active slice
        [SHARED_V4, 50010, PEER_V4, "udp"],  # inside the draining slice
        [SHARED_V4, 30000, PEER_V4, "udp"],  # outside
        [SHARED_V4, 40011, PEER_V4, "tcp"],
        [SHARED_V4, 30001, PEER_V4, "tcp"],
        [SHARED_V6, 40012, PEER_V6, "udp"],
        [SHARED_V6, 30002, PEER_V6, "udp"],
        [SHARED_V6, 30003, PEER_V6, "tcp"],
    ]
    outcome = json.loads(host.python(PROBE, json.dumps(probes)).stdout)
    assert outcome[0] == outcome[1] == outcome[3] == outcome[5] == "sent"
    assert outcome[2] == outcome[6] == "errno 1"  # EPERM: dropped at output
    assert outcome[4] == outcome[7] == "errno 111"  # ECONNREFUSED at once: the SYN got a reset

    netlab.wait_for(lambda: len(netlab.peer_log(log)) >= 4, what="the in-slice packets")
    seen = {(proto, port) for proto, _ip, port in netlab.peer_log(log)}
    assert seen == {("udp", 40010), ("udp", 50010), ("tcp", 40011), ("udp", 40012)}

    counters = _counters(host)
    assert counters["dropped_udp"][0] == 2
    assert counters["dropped_tcp"][0] == 2  # one SYN each, never retransmitted
    assert counters[counter_name(MIXED.slices[0])][0] >= 2
    assert counters[counter_name(MIXED.slices[1])][0] == 1
    # Per shared address too: what the GuardDrops alert names.
    assert _drops(host) == {SHARED_V4: 2, SHARED_V6: 2}


def test_it_leaves_other_addresses_alone(lab) -> None:
    host, _peer, _log = lab
    _enforce(host, MIXED)
    outcome = json.loads(
        host.python(PROBE, json.dumps([["127.0.0.1", 30000, "127.0.0.1", "udp"]])).stdout
    )
    assert outcome == ["sent"]
    assert _counters(host)["dropped_udp"][0] == 0
    assert _drops(host) == {}


def test_a_refused_script_leaves_the_previous_ruleset(lab) -> None:
    host, _peer, _log = lab
    _enforce(host, MIXED)
    broken = (
        "table inet portslice\ndelete table inet portslice\n"
        "table inet portslice { chain egress { type filter hook output priority 0; bogus; } }\n"
    )
    code = (
        "import sys\nfrom agent.enforce import apply_ruleset, EnforcementError\n"
        "try:\n    apply_ruleset(sys.stdin.read())\nexcept EnforcementError as e:\n"
        "    print('refused', e)\nelse:\n    print('applied')\n"
    )
    out = host.python(code, input=broken).stdout
    assert out.startswith("refused") and "bogus" in out
    assert counter_name(MIXED.slices[2]) in _counters(host)
    outcome = json.loads(
        host.python(PROBE, json.dumps([[SHARED_V4, 30000, PEER_V4, "udp"]])).stdout
    )
    assert outcome == ["errno 1"]


def test_remove_ruleset_deletes_the_table_and_tolerates_its_absence(lab) -> None:
    host, _peer, _log = lab
    _enforce(host, MIXED)
    code = (
        "from agent.enforce import remove_ruleset, table_present\n"
        "remove_ruleset()\nremove_ruleset()\nprint(table_present())"
    )
    assert host.python(code).stdout.strip() == "False"
    assert _counters(host) == {}


def test_it_widens_the_netns_port_range_to_cover_the_slices(lab) -> None:
    host, _peer, _log = lab
    host.run("sysctl", "-qw", "net.ipv4.ip_local_port_range=32768 60999")
    low_slice = _bundle(_slice(SHARED_V4, 20000, 20063))
    result = _enforce(host, low_slice, manage_nftables=False)
    assert result["ok"], result
    assert result["port_range"]["state"] == "on"
    assert result["nftables"] == {"state": "off", "detail": "manage_nftables is off"}
    assert host.run("sysctl", "-n", "net.ipv4.ip_local_port_range").stdout.split() == [
        "20000",
        "60999",
    ]


def test_it_does_not_apply_a_bundle_the_port_range_cannot_honour(lab) -> None:
    host, _peer, _log = lab
    host.run("sysctl", "-qw", "net.ipv4.ip_local_port_range=32768 60999")
    low_slice = _bundle(_slice(SHARED_V4, 20000, 20063))
    result = _enforce(host, low_slice, manage_port_range=False)
    assert not result["ok"]
    assert result["port_range"]["state"] == "failed"
    assert "32768-60999 does not cover slices 20000-20063" in result["port_range"]["detail"]
    assert result["nftables"]["state"] == "off"
    assert _counters(host) == {}  # no guard for slices the kernel would not honour


def _add_neighbour_address(host: Netns, peer: Netns) -> None:
    host.run("ip", "addr", "add", f"{NEIGHBOUR_V4}/32", "dev", "lo")
    peer.run("ip", "route", "add", f"{NEIGHBOUR_V4}/32", "via", "192.0.2.2")


def test_it_guards_shared_ips_the_host_holds_no_slice_on(lab) -> None:
    host, peer, log = lab
    _add_neighbour_address(host, peer)
    result = _enforce(host, _bundle(_slice(SHARED_V4, 40000, 40063), shared=SHARED))
    assert result["ok"] and "2 shared prefixes" in result["nftables"]["detail"], result

    # 40010 is this host's port on .7, and a neighbour's on .8.
    probes = [
        [NEIGHBOUR_V4, 40010, PEER_V4, "udp"],
        [NEIGHBOUR_V4, 40011, PEER_V4, "tcp"],
        [SHARED_V4, 40012, PEER_V4, "udp"],
    ]
    outcome = json.loads(host.python(PROBE, json.dumps(probes)).stdout)
    assert outcome == ["errno 1", "errno 111", "sent"]
    netlab.wait_for(lambda: netlab.peer_log(log), what="the in-slice datagram")
    assert netlab.peer_log(log) == [("udp", SHARED_V4, 40012)]  # the owner of .8 saw nothing
    counters = _counters(host)
    assert counters["dropped_udp"][0] == 1 and counters["dropped_tcp"][0] == 1


def test_a_host_without_slices_may_send_from_no_shared_ip(lab) -> None:
    host, peer, log = lab
    _add_neighbour_address(host, peer)
    result = _enforce(host, _bundle(shared=SHARED))  # after its drain ended
    assert result["ok"] and result["nftables"]["state"] == "on", result
    probes = [[ip, port, PEER_V4, proto] for ip in (SHARED_V4, NEIGHBOUR_V4)
              for port, proto in ((40000, "udp"), (40001, "tcp"))]  # fmt: skip
    probes.append([SHARED_V6, 40002, PEER_V6, "udp"])
    outcome = json.loads(host.python(PROBE, json.dumps(probes)).stdout)
    assert outcome == ["errno 1", "errno 111", "errno 1", "errno 111", "errno 1"]
    assert netlab.peer_log(log) == []
    counters = _counters(host)
    assert counters["dropped_udp"][0] == 3 and counters["dropped_tcp"][0] == 2
    assert _drops(host) == {SHARED_V4: 2, NEIGHBOUR_V4: 2, SHARED_V6: 1}


MISSING_V4 = "198.51.100.9"


def test_it_reports_a_slice_address_missing_on_the_host(lab) -> None:
    host, _peer, _log = lab
    bundle = _bundle(_slice(SHARED_V4, 40000, 40063), _slice(MISSING_V4, 40000, 40063))
    result = _enforce(host, bundle)
    assert not result["ok"]
    assert result["addresses"]["state"] == "failed"
    assert result["missing_addresses"] == [MISSING_V4]
    assert f"not on this host: {MISSING_V4}" in result["addresses"]["detail"]
    assert result["nftables"]["state"] == "on"  # the guard holds all the same
    assert "inet" not in host.run("ip", "-o", "addr", "show", "dev", "lo", "to", MISSING_V4).stdout


def test_it_adds_missing_addresses_on_lo_when_asked(lab) -> None:
    host, _peer, _log = lab
    bundle = _bundle(_slice(MISSING_V4, 40000, 40063), _slice("2001:db8::9", 40000, 40063))
    result = _enforce(host, bundle, add_addresses=True)
    assert result["ok"] and result["addresses"]["state"] == "on", result
    assert result["missing_addresses"] == []
    shown = host.run("ip", "-o", "addr", "show", "dev", "lo").stdout
    assert f"{MISSING_V4}/32" in shown and "2001:db8::9/128" in shown
    assert _enforce(host, bundle, add_addresses=True)["ok"]  # already there: fine
