"""``loopback_egress``: the demo without root sends from 127.0.0.0/8, which Linux answers
on without configuring; production keeps refusing an address the host does not hold.

Runs in the test process's own network namespace as any user: listing addresses and
connecting on loopback need no privilege.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from agent import egress
from agent.bundle import Bundle, BundleSlice
from agent.config import ConfigError, load_config
from agent.egress import netns_port_range
from agent.enforce import enforce

LOOPBACK_SOURCE = "127.51.100.240"


def _bundle(ip: str, lo: int, hi: int) -> Bundle:
    slices = (BundleSlice(ip, lo, hi, "active", "demo1/warp/DE", "warp", "DE"),)
    return Bundle("demo-a", "demo1", 3, 1, 0, 0, slices, "kid", "token", ())


def _slice_in_ephemeral_range() -> tuple[int, int]:
    low, high = netns_port_range()
    assert high - low >= 64, (low, high)
    return low, low + 63


def test_it_reports_a_loopback_slice_address_missing_by_default() -> None:
    lo, hi = _slice_in_ephemeral_range()
    result = enforce(_bundle(LOOPBACK_SOURCE, lo, hi), manage_port_range=False,
                     manage_nftables=False)  # fmt: skip
    assert not result.ok and result.addresses.state == "failed"
    assert result.missing == (LOOPBACK_SOURCE,)
    assert f"not on this host: {LOOPBACK_SOURCE}" in result.addresses.detail


def test_it_holds_a_loopback_slice_address_with_loopback_egress_and_connects_from_it() -> None:
    lo, hi = _slice_in_ephemeral_range()
    result = enforce(_bundle(LOOPBACK_SOURCE, lo, hi), manage_port_range=False,
                     manage_nftables=False, loopback_egress=True)  # fmt: skip
    assert result.ok and result.addresses.state == "on", result
    assert "loopback_egress" in result.addresses.detail and result.missing == ()
    assert result.nftables.state == "off" and result.port_range.state == "on"
    # And the address is really usable: a TCP connect from the slice to a loopback origin.
    with socket.create_server(("127.0.0.1", 0)) as origin:
        conn = egress.connect_tcp(origin.getsockname(), source_ip=LOOPBACK_SOURCE,
                                  port_range=(lo, hi), timeout=5)  # fmt: skip
        with conn:
            source, port = conn.getsockname()[:2]
    assert source == LOOPBACK_SOURCE and lo <= port <= hi


def test_loopback_egress_covers_only_loopback_addresses() -> None:
    lo, hi = _slice_in_ephemeral_range()
    result = enforce(_bundle("198.51.100.9", lo, hi), manage_port_range=False,
                     manage_nftables=False, loopback_egress=True)  # fmt: skip
    assert result.addresses.state == "failed" and result.missing == ("198.51.100.9",)


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("false", False)])
def test_the_setting_is_read_from_the_file_and_is_off_by_default(
    tmp_path: Path, text: str, expected: bool
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('hostname = "demo-a"\n')
    assert load_config(path=path, environ={}).loopback_egress is False
    path.write_text(f'hostname = "demo-a"\nloopback_egress = {text}\n')
    assert load_config(path=path, environ={}).loopback_egress is expected


def test_a_bad_value_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('hostname = "demo-a"\n')
    with pytest.raises(ConfigError, match="loopback_egress.*maybe"):
        load_config(path=path, environ={"PORTSLICE_AGENT_LOOPBACK_EGRESS": "maybe"})
