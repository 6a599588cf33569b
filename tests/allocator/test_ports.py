"""PortRange and the interval helpers."""

from __future__ import annotations

import pytest

from allocator import USABLE_PORTS, PortRange
from allocator.ports import free_gaps, ranges_of_ports


def test_it_counts_ports_inclusively() -> None:
    assert PortRange(1024, 65535).size == 64_512
    assert USABLE_PORTS.size == 64_512
    assert PortRange(80, 80).size == 1


@pytest.mark.parametrize(
    ("lo", "hi", "named"),
    [(-1, 10, "lo=-1"), (10, 65536, "hi=65536"), (20, 10, "lo=20 is above hi=10")],
)
def test_it_refuses_bad_bounds_naming_the_value(lo: int, hi: int, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        PortRange(lo, hi)


def test_it_is_frozen() -> None:
    with pytest.raises(AttributeError):
        PortRange(1, 2).lo = 3  # type: ignore[misc]


def test_it_tells_overlap_and_membership() -> None:
    assert PortRange(10, 20).overlaps(PortRange(20, 30))
    assert not PortRange(10, 19).overlaps(PortRange(20, 30))
    assert 15 in PortRange(10, 20) and 21 not in PortRange(10, 20)


def test_it_merges_single_ports_into_runs() -> None:
    assert ranges_of_ports({9, 5, 7, 6}) == [(5, 7), (9, 9)]
    assert ranges_of_ports(()) == []


def test_it_finds_the_gaps_around_taken_runs() -> None:
    usable = PortRange(1024, 2047)
    assert free_gaps(usable, []) == [(1024, 2047)]
    assert free_gaps(usable, [(1000, 1100), (1200, 1300), (1250, 1260)]) == [
        (1101, 1199),
        (1301, 2047),
    ]
    assert free_gaps(usable, [(1024, 2047)]) == []
    assert free_gaps(usable, [(3000, 4000)]) == [(1024, 2047)]
