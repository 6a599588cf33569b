"""Aligned pools, by example: one range per machine, the same ports on every IP.

The properties (no overlap, grid, make-before-break, stayers kept) are held
for aligned pools under Hypothesis in test_properties.py; these tests pin the
moves a reader would expect, step by step.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from allocator import CapacityError, EgressIP, Machine, Plan, PoolPolicy, PortRange, Slice, plan
from tests.allocator import invariants
from tests.allocator.invariants import Inputs

POOL = "fra1/warp/DE"
NOW = datetime(2026, 1, 1, 12, 0)
POLICY = {POOL: PoolPolicy(slice_size=1024, max_slices_per_machine=3, aligned=True)}
IPS = (EgressIP("192.0.2.240", POOL), EgressIP("192.0.2.241", POOL))


def machines(*names: str) -> tuple[Machine, ...]:
    return tuple(Machine(name, frozenset({POOL})) for name in names)


def checked(inputs: Inputs) -> Plan:
    result = inputs.plan()
    invariants.check_plan(inputs, result)
    return result


def ranges(result: Plan, state: str = "active") -> dict[str, dict[str, tuple[int, int]]]:
    """{machine: {ip: (lo, hi)}} of the slices in ``state``, adjacent slots merged."""
    found: dict[str, dict[str, tuple[int, int]]] = {}
    for slice_ in result.slices:
        if slice_.state == state:
            lo, hi = found.setdefault(slice_.machine, {}).get(slice_.ip, (slice_.lo, slice_.hi))
            found[slice_.machine][slice_.ip] = (min(lo, slice_.lo), max(hi, slice_.hi))
    return found


def test_it_gives_each_machine_one_range_the_same_on_every_ip() -> None:
    result = checked(Inputs(ips=IPS, machines=machines("a", "b", "c"), policies=POLICY, now=NOW))
    assert ranges(result) == {
        "a": {"192.0.2.240": (1024, 2047), "192.0.2.241": (1024, 2047)},
        "b": {"192.0.2.240": (2048, 3071), "192.0.2.241": (2048, 3071)},
        "c": {"192.0.2.240": (3072, 4095), "192.0.2.241": (3072, 4095)},
    }


def hot_after_a_first_plan(hot: str) -> Plan:
    """Machines a, b and c planned from nothing, then planned again with ``hot`` running hot."""
    first = checked(Inputs(ips=IPS, machines=machines("a", "b", "c"), policies=POLICY, now=NOW))
    return checked(
        Inputs(
            ips=IPS,
            machines=machines("a", "b", "c"),
            previous=first.slices,
            policies=POLICY,
            now=NOW,
            usage={(hot, POOL): 0.95},
        )
    )


def test_it_widens_a_growing_range_into_the_free_slots_beside_it() -> None:
    grown = hot_after_a_first_plan("c")
    assert ranges(grown)["c"] == {"192.0.2.240": (3072, 5119), "192.0.2.241": (3072, 5119)}
    assert grown.diff.machines_touched() == {"c"}
    assert not grown.diff.draining


def test_it_moves_a_range_with_no_room_beside_it_and_drains_the_old_one() -> None:
    moved = hot_after_a_first_plan("b")
    assert ranges(moved)["b"] == {"192.0.2.240": (4096, 6143), "192.0.2.241": (4096, 6143)}
    assert ranges(moved, "draining")["b"] == {
        "192.0.2.240": (2048, 3071),
        "192.0.2.241": (2048, 3071),
    }
    assert all(s.drain_until == NOW + timedelta(hours=1) for s in moved.diff.draining)
    assert moved.diff.machines_touched() == {"b"}, "a and c must not be renumbered"


def test_it_shrinks_a_cold_range_from_the_top() -> None:
    wide = [
        Slice(ip.address, lo, lo + 1023, "a")
        for ip in IPS
        for lo in (1024, 2048, 3072)  # 3 slots, the ceiling
    ]
    result = checked(
        Inputs(
            ips=IPS,
            machines=machines("a"),
            previous=tuple(wide),
            policies=POLICY,
            now=NOW,
            usage={("a", POOL): 0.05},
        )
    )
    assert ranges(result)["a"] == {"192.0.2.240": (1024, 3071), "192.0.2.241": (1024, 3071)}
    assert {(s.ip, s.lo) for s in result.diff.draining} == {
        ("192.0.2.240", 3072),
        ("192.0.2.241", 3072),
    }


def test_it_fills_in_a_range_on_an_ip_that_joins_the_pool() -> None:
    first = checked(Inputs(ips=IPS, machines=machines("a", "b"), policies=POLICY, now=NOW))
    joined = (*IPS, EgressIP("192.0.2.242", POOL))
    result = checked(
        Inputs(
            ips=joined, machines=machines("a", "b"), previous=first.slices, policies=POLICY, now=NOW
        )
    )
    assert ranges(result)["b"]["192.0.2.242"] == (2048, 3071)
    assert {s.ip for s in result.diff.added} == {"192.0.2.242"}
    assert not result.diff.draining


def test_it_moves_a_range_whose_ports_are_reserved_on_an_ip_that_joins() -> None:
    first = checked(Inputs(ips=IPS, machines=machines("a", "b"), policies=POLICY, now=NOW))
    odd = EgressIP("192.0.2.242", POOL, reserved=frozenset({2500}))
    result = checked(
        Inputs(
            ips=(*IPS, odd),
            machines=machines("a", "b"),
            previous=first.slices,
            policies=POLICY,
            now=NOW,
        )
    )
    assert ranges(result)["a"]["192.0.2.242"] == (1024, 2047)
    assert set(ranges(result)["b"].values()) == {(3072, 4095)}
    assert set(ranges(result, "draining")["b"].values()) == {(2048, 3071)}


def test_it_keeps_a_range_on_ips_with_different_usable_ports_inside_all_of_them() -> None:
    narrow = (EgressIP("192.0.2.240", POOL, PortRange(8192, 16383)), IPS[1])
    result = checked(Inputs(ips=narrow, machines=machines("a", "b"), policies=POLICY, now=NOW))
    assert set(ranges(result)["a"].values()) == {(8192, 9215)}
    assert set(ranges(result)["b"].values()) == {(9216, 10239)}


def test_it_says_more_ips_do_not_help_a_full_aligned_pool() -> None:
    tight = (EgressIP("192.0.2.240", POOL, PortRange(1024, 3071)), IPS[1])
    with pytest.raises(CapacityError) as raised:
        plan(ips=tight, machines=machines("a", "b", "c"), policies=POLICY, now=NOW)
    (short,) = raised.value.shortfalls
    assert short.machines_unserved == ("c",) and short.ips_needed == 0
    assert "more IP addresses do not help" in str(raised.value)
    assert "1 more slot must be free on every IP" in str(raised.value)


def test_it_plans_aligned_and_other_pools_side_by_side() -> None:
    other = "ams1/warp/NL"
    ips = (*IPS, EgressIP("198.51.100.1", other), EgressIP("198.51.100.2", other))
    both = tuple(Machine(name, frozenset({POOL, other})) for name in ("a", "b", "c"))
    result = checked(Inputs(ips=ips, machines=both, policies=POLICY, now=NOW))
    per_ip = {ip.address: sum(1 for s in result.slices if s.ip == ip.address) for ip in ips}
    # Aligned: every machine on every IP; the other pool spreads them, one slice each.
    assert per_ip == {"192.0.2.240": 3, "192.0.2.241": 3, "198.51.100.1": 2, "198.51.100.2": 1}
    assert result.capacity[POOL].machines_served == 3
