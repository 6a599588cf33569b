"""The gateway on a real kernel: hosts sharing IPs behind it, tables changing under live flows.

Topology: tests/e2e/topology.py (origin, a router with a smaller MTU towards
it, the gateway, hosts sharing 198.51.100.7 and .8). The gateway code runs in
its namespace and is fed steering documents directly; the Celery and API
paths are covered by tests/planner/test_gateway_publish.py and the e2e.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.gateway import Gateway, GatewayConfig, Table
from allocator.steering import RULE_PRIORITY
from tests.agent import netlab
from tests.e2e.topology import (
    CHATTY_CLIENT,
    ECHO_PORT,
    ORIGIN_IP,
    DataPlane,
    GatewayDriver,
    data_plane,
    steering,
)
from tests.support import need, need_root

A, B, C = 0, 1, 2
OWNERS = {
    A: [("198.51.100.7", 10000, 19999), ("198.51.100.8", 10000, 19999)],
    B: [("198.51.100.7", 20000, 29999), ("198.51.100.8", 20000, 29999)],
    C: [("198.51.100.7", 30000, 39999)],
}


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[tuple[DataPlane, GatewayDriver]]:
    need_root()
    need(netlab.have_command("nft"), "needs the nft command")
    with data_plane(hosts=3, log_dir=tmp_path) as built:
        yield built, GatewayDriver(built, tmp_path / "gateway-state")


def _echo(plane: DataPlane, host: int, src: str, port: int, payload: int = 5) -> list[str]:
    """One TCP exchange from (src, port): what the origin saw, or the error."""
    code = (
        "import socket, sys\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.settimeout(5); s.bind((sys.argv[1], int(sys.argv[2])))\n"
        "try:\n"
        f"    s.connect(('{ORIGIN_IP}', {ECHO_PORT}))\n"
        "    s.sendall(b'x' * int(sys.argv[3]) + b'\\n')\n"
        "    print(s.makefile().readline().strip())\n"
        "except OSError as e:\n"
        "    print('error', type(e).__name__)\n"
    )
    out = plane.hosts[host].ns.python(code, src, str(port), str(payload), timeout=30).stdout
    return out.split()


def _chatty(plane: DataPlane, host: int, src: str, port: int, seconds: float) -> subprocess.Popen:
    process = subprocess.Popen(
        plane.hosts[host].ns.command(
            netlab.PYTHON, "-c", CHATTY_CLIENT, src, str(port), ORIGIN_IP, str(ECHO_PORT),
            "0.05", str(seconds),
        ),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    plane.hosts[host].ns.processes.append(process)
    assert process.stdout is not None and process.stdout.readline().strip() == "connected"
    return process


def _result(process: subprocess.Popen) -> dict:
    out, _ = process.communicate(timeout=60)
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_it_steers_each_port_to_its_owner_and_drops_the_rest(plane) -> None:
    built, gateway = plane
    assert gateway.apply(steering(built, OWNERS, 1))["result"] == "applied"
    for host, src, port in [(A, "198.51.100.7", 10001), (A, "198.51.100.8", 19999),
                            (B, "198.51.100.7", 20001), (C, "198.51.100.7", 39000)]:  # fmt: skip
        assert _echo(built, host, src, port) == [src, str(port), "6"]
    # C owns no port on .8, and 45000 belongs to nobody: the reply goes nowhere.
    assert _echo(built, C, "198.51.100.8", 30001) == ["error", "TimeoutError"]
    assert _echo(built, A, "198.51.100.7", 45000) == ["error", "TimeoutError"]


def test_updates_never_reset_a_flow_of_a_host_they_do_not_touch(plane) -> None:
    """B leaves and joins ten times while A and C chat every 50 ms: 0 failures, 0 resets."""
    built, gateway = plane
    gateway.apply(steering(built, OWNERS, 1))
    chatty = [
        _chatty(built, A, "198.51.100.7", 10005, 4.0),
        _chatty(built, C, "198.51.100.7", 30005, 4.0),
    ]
    without_b = {A: OWNERS[A], C: OWNERS[C]}
    for revision in range(2, 22, 2):
        assert gateway.apply(steering(built, without_b, revision))["result"] == "applied"
        assert gateway.apply(steering(built, OWNERS, revision + 1))["result"] == "applied"
    results = [_result(process) for process in chatty]
    for result in results:
        assert result["errors"] == [] and result["ok"] == result["sent"] >= 40, result
    assert _echo(built, B, "198.51.100.8", 20002) == ["198.51.100.8", "20002", "6"]


def test_an_update_is_idempotent_and_removes_what_is_no_longer_used(plane) -> None:
    built, gateway = plane
    gateway.apply(steering(built, OWNERS, 1))
    gateway.apply(steering(built, {A: OWNERS[A]}, 2))
    again = gateway.apply(steering(built, {A: OWNERS[A]}, 2))
    assert again["result"] == "unchanged"
    rules = built.gateway.run("ip", "rule", "show", "pref", str(RULE_PRIORITY)).stdout
    assert rules.count("fwmark") == 1 and "fwmark 0x5001 lookup 20481" in rules
    assert "table 20482" not in built.gateway.run("ip", "route", "show", "table", "all").stdout
    assert gateway.apply(steering(built, OWNERS, 1))["result"] == "stale"  # a late message


def test_frag_needed_reaches_the_host_owning_the_flow(plane) -> None:
    """The router's link to the origin has MTU 1280: a full-size TCP segment from host A
    gets an ICMP "fragmentation needed", which the gateway steers by the quoted port."""
    built, gateway = plane
    gateway.apply(steering(built, OWNERS, 1))
    assert _echo(built, A, "198.51.100.8", 10077, payload=200_000) == [
        "198.51.100.8", "10077", "200001",
    ]  # fmt: skip
    route = built.hosts[A].ns.run("ip", "route", "get", ORIGIN_IP, "from", "198.51.100.8").stdout
    assert "mtu 1280" in route
    other = built.hosts[B].ns.run("ip", "route", "get", ORIGIN_IP, "from", "198.51.100.8").stdout
    assert "mtu" not in other


def test_the_gateway_refuses_an_unsound_document_and_keeps_the_last(tmp_path: Path) -> None:
    ran: list[str] = []
    gateway = Gateway(GatewayConfig("fra1", "gw", state_dir=tmp_path), run=ran.append)
    row = {"ip": "198.51.100.7", "lo": 1, "hi": 9, "machine": "h1", "next_hop": "192.0.2.10"}
    good: dict[str, Any] = {"revision": 1, "marks": {"h1": 0x5001}, "slices": [row]}
    assert gateway.offer(Table(good, "e1"), source="test") == "applied"
    bad = {**good, "revision": 2, "slices": [{**row, "machine": "h9"}]}
    assert gateway.offer(Table(bad, "e2"), source="test") == "failed"
    assert gateway.applied is not None and gateway.applied.etag == "e1" and len(ran) == 1
