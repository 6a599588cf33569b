"""The agent's Prometheus metrics that are computed at scrape time."""

from __future__ import annotations

from prometheus_client import generate_latest

from agent.bundle import Bundle, BundleSlice
from agent.enforce import Enforcement, Part
from agent.metrics import AgentMetrics


def _bundle(*ips: str) -> Bundle:
    slices = tuple(BundleSlice(ip, 40000, 40063, "active", "p", "w", "DE") for ip in ips)
    return Bundle("edge-test", "fra1", 3, 1, 0, 0, slices, "kid", "token")


def test_it_flags_each_slice_address_missing_on_the_host() -> None:
    # 127.0.0.1 is on every namespace's lo; 198.51.100.99 is on none of this machine's.
    metrics = AgentMetrics(current=lambda: _bundle("127.0.0.1", "198.51.100.99"))
    text = generate_latest(metrics.registry).decode()
    assert 'portslice_agent_egress_address_missing{ip="198.51.100.99"} 1.0' in text
    assert 'portslice_agent_egress_address_missing{ip="127.0.0.1"} 0.0' in text


def test_the_enforcement_enum_has_the_addresses_part() -> None:
    metrics = AgentMetrics()
    enforcement = Enforcement(
        3, Part("on", ""), Part("on", ""), Part("failed", "not on this host: 198.51.100.99")
    )
    metrics.enforced(_bundle("198.51.100.99"), enforcement)
    text = generate_latest(metrics.registry).decode()
    assert (
        'portslice_agent_enforcement{part="addresses",portslice_agent_enforcement="failed"} 1.0'
        in text
    )
    assert "portslice_agent_applied_serial 3.0" in text  # applied, as the ack says


def test_the_guard_starts_each_shared_address_at_zero_its_own_first_and_bounded() -> None:
    from dataclasses import replace

    from agent import enforce

    bundle = replace(_bundle("198.51.100.7"), shared=("198.51.100.4/30", "2001:db8::/127"))
    assert enforce.guarded_addresses(bundle) == [
        "198.51.100.7", "198.51.100.4", "198.51.100.5", "198.51.100.6",
        "2001:db8::", "2001:db8::1",
    ]  # fmt: skip
    huge = replace(bundle, shared=("10.0.0.0/8",))
    found = enforce.guarded_addresses(huge)
    assert len(found) == enforce.ZERO_DROPS_LIMIT and found[0] == "198.51.100.7"
