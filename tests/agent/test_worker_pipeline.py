"""The apply pipeline (verify → persist → enforce → ack) on a real kernel, without a broker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.state import StateStore
from tests.agent import keys, netlab
from tests.agent.netlab import SHARED_V4, Netns
from tests.support import need, need_root

# Applies each token in order with one Agent, prints the acks.
APPLY = """
import json, sys
from pathlib import Path
from agent.bundle import load_keys
from agent.config import AgentConfig
from agent.service import Agent
settings = json.loads(sys.argv[1])
config = AgentConfig(hostname=settings["hostname"], keys_path=Path(settings["keys"]),
                     state_dir=Path(settings["state"]),
                     manage_port_range=settings.get("manage_port_range", False),
                     port_range_mode=settings.get("port_range_mode", "cover"))
agent = Agent(config, load_keys(config.keys_path))
startup = agent.start()
acks = [agent.apply(token) for token in json.loads(sys.stdin.read())]
print(json.dumps({"startup": startup.problem, "acks": [ack.as_kwargs() for ack in acks]}))
"""


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Netns]:
    need_root()
    need(netlab.have_command("nft"), "needs the nft command")
    with netlab.netns_pair() as (ns, _peer):
        ns.run("sysctl", "-qw", "net.ipv4.ip_local_port_range=32768 60999")
        yield ns


def _token(key: Any, serial: int, lo: int = 40000, hi: int = 40063, ip: str = SHARED_V4) -> str:
    now = int(time.time())
    claims = keys.claims(
        iat=now, exp=now + 3600, serial=serial, slices=[keys.slice_claim(ip, lo, hi)]
    )
    return keys.sign(claims, key)


def _apply(host: Netns, tmp: Path, *tokens: str, **config: object) -> dict[str, Any]:
    settings = {
        "hostname": keys.HOSTNAME,
        "keys": str(tmp / "keys.json"),
        "state": str(tmp / "state"),
        **config,
    }
    out = host.python(APPLY, json.dumps(settings), input=json.dumps(tokens)).stdout
    return json.loads(out)


def test_a_failed_enforcement_keeps_the_last_good_bundle(host: Netns, tmp_path: Path) -> None:
    key = keys.generate_key()
    netlab.write_jwks(tmp_path / "keys.json", keys.public(key))
    good, outside, later = _token(key, 5), _token(key, 6, 20000, 20063), _token(key, 7)

    result = _apply(host, tmp_path, good, outside, outside, good, _token(key, 4), later)
    applied, failed, retried, duplicate, stale, newer = result["acks"]
    assert result["startup"] == "no bundle stored yet"
    assert (applied["status"], applied["serial"], applied["note"]) == ("applied", 5, "")
    assert (failed["status"], failed["reason"]) == ("failed", "enforcement_failed")
    assert "does not cover slices 20000-20063" in failed["detail"]
    assert failed["applied_serial"] == 5
    assert failed["enforcement"]["port_range"]["state"] == "failed"
    assert (retried["status"], retried["serial"]) == ("failed", 6)  # tried again, not stale
    assert (duplicate["status"], duplicate["note"]) == ("applied", "duplicate")
    assert (stale["status"], stale["reason"], stale["serial"]) == ("rejected", "stale_serial", 4)
    assert (newer["status"], newer["applied_serial"]) == ("applied", 7)

    stored = StateStore(tmp_path / "state").load()
    assert stored is not None and stored.serial == 7


def test_the_store_is_rolled_back_when_enforcement_fails(host: Netns, tmp_path: Path) -> None:
    key = keys.generate_key()
    netlab.write_jwks(tmp_path / "keys.json", keys.public(key))
    _apply(host, tmp_path, _token(key, 5))
    result = _apply(host, tmp_path, _token(key, 6, 20000, 20063))
    assert result["startup"] == ""  # serial 5 was reloaded and enforced
    assert result["acks"][0]["status"] == "failed"
    stored = StateStore(tmp_path / "state").load()
    assert stored is not None and stored.serial == 5
    table = host.run("nft", "list", "table", "inet", "portslice").stdout
    assert "slice_198_51_100_7_40000_40063" in table and "20000" not in table


def test_a_missing_egress_address_is_acked_failed_until_it_is_there(
    host: Netns, tmp_path: Path
) -> None:
    key = keys.generate_key()
    netlab.write_jwks(tmp_path / "keys.json", keys.public(key))
    token = _token(key, 5, ip="198.51.100.9")
    first = _apply(host, tmp_path, token)["acks"][0]
    assert (first["status"], first["reason"]) == ("failed", "enforcement_failed")
    assert "addresses: not on this host: 198.51.100.9" in first["detail"]
    assert first["applied_serial"] == 5  # applied: the guard holds, the address is what lacks
    assert first["enforcement"]["addresses"]["state"] == "failed"
    assert first["enforcement"]["missing_addresses"] == ["198.51.100.9"]
    assert first["enforcement"]["nftables"]["state"] == "on"

    host.run("ip", "addr", "add", "198.51.100.9/32", "dev", "lo")
    again = _apply(host, tmp_path, token)["acks"][0]  # the planner resends a failed bundle
    assert (again["status"], again["note"]) == ("applied", "duplicate")
    assert again["enforcement"]["addresses"]["state"] == "on"


def test_an_exact_range_agent_acks_slices_that_are_not_one_range_failed_with_why(
    host: Netns, tmp_path: Path
) -> None:
    key = keys.generate_key()
    netlab.write_jwks(tmp_path / "keys.json", keys.public(key))
    now = int(time.time())
    scattered = keys.claims(
        iat=now,
        exp=now + 3600,
        serial=6,
        slices=[
            keys.slice_claim(SHARED_V4, 40000, 40063),
            keys.slice_claim(SHARED_V4, 40128, 40191),
        ],
    )
    exact = {"manage_port_range": True, "port_range_mode": "exact"}
    result = _apply(host, tmp_path, _token(key, 5), keys.sign(scattered, key), **exact)
    applied, refused = result["acks"]
    assert applied["status"] == "applied", applied
    assert "exact: netns port range is the active range 40000-40063" in str(applied["enforcement"])
    assert (refused["status"], refused["reason"]) == ("failed", "enforcement_failed")
    assert (
        "exact-range mode refused: 198.51.100.7 holds 40000-40063, 40128-40191"
        in (refused["detail"])
    )
    assert refused["applied_serial"] == 5
    assert host.run("sysctl", "-n", "net.ipv4.ip_local_port_range").stdout.split() == [
        "40000",
        "40063",
    ]
