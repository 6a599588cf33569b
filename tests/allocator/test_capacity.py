"""Capacity maths and the shortfall message operators read."""

from __future__ import annotations

from allocator import USABLE_PORTS, CapacityError, EgressIP, PortRange, Shortfall
from allocator.capacity import ips_needed, slots_per_ip, typical_usable


def shortfall(machines: int, ips: int, freed: int = 0) -> Shortfall:
    return Shortfall(
        pool="fra1/warp/DE",
        machines_unserved=tuple(f"m{n}" for n in range(machines)),
        slices_missing=machines,
        slots_per_ip=31,
        ips_needed=ips,
        slots_freed_by_drains=freed,
    )


def test_it_reads_like_cloud_nat_in_the_singular() -> None:
    assert str(shortfall(1, 1)) == (
        "pool 'fra1/warp/DE': 1 machine left without slices (m0); "
        "you need at least 1 more IP address"
    )


def test_it_names_ten_machines_and_counts_the_rest() -> None:
    text = str(shortfall(12, 2))
    assert (
        "12 machines left without slices (m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, and 2 more)"
        in text
    )
    assert text.endswith("you need at least 2 more IP addresses")


def test_it_mentions_slots_that_drains_will_free() -> None:
    assert str(shortfall(1, 1, freed=1)).endswith("(1 slot free up as slices drain)")


def test_it_puts_one_line_per_pool_in_the_error() -> None:
    error = CapacityError([shortfall(1, 1), shortfall(2, 1)])
    assert str(error).count("\n") == 1
    assert error.shortfalls[1].slices_missing == 2


def test_it_rounds_ips_needed_up() -> None:
    assert ips_needed(1, 31) == 1
    assert ips_needed(31, 31) == 1
    assert ips_needed(32, 31) == 2


def test_it_counts_slots_per_ip_on_the_grid() -> None:
    assert slots_per_ip(USABLE_PORTS, 2048) == 31
    assert slots_per_ip(PortRange(1024, 4095), 2048) == 1
    assert slots_per_ip(PortRange(1024, 2047), 2048) == 0


def test_it_takes_the_most_common_usable_range_as_typical() -> None:
    narrow = PortRange(1024, 9999)
    ips = [
        EgressIP("10.0.0.1", "p", narrow),
        EgressIP("10.0.0.2", "p", narrow),
        EgressIP("10.0.0.3", "p"),
    ]
    assert typical_usable(ips) == narrow
    assert typical_usable(ips[1:]) == USABLE_PORTS  # a tie: the widest wins
    assert typical_usable([]) == USABLE_PORTS
