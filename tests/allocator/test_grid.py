"""The slot grid: aligned power-of-two slots, packed others."""

from __future__ import annotations

from allocator import USABLE_PORTS, PortRange
from allocator.grid import FreeSlots, count_slots, grid_origin, is_power_of_two


def slot_starts(usable: PortRange, taken: list[tuple[int, int]], size: int) -> list[int]:
    free = FreeSlots.around(usable, taken, size, grid_origin(size, usable))
    return [free.take() for _ in range(free.remaining)]


def test_it_fits_31_slices_of_2048_ports_on_an_ip() -> None:
    starts = slot_starts(USABLE_PORTS, [], 2048)
    assert len(starts) == 31
    assert starts[0] == 2048 and starts[-1] == 63488
    assert all(start % 2048 == 0 for start in starts)


def test_it_aligns_other_powers_of_two() -> None:
    assert count_slots(USABLE_PORTS, [], 1024, 0) == 63
    assert count_slots(USABLE_PORTS, [], 4096, 0) == 15
    assert count_slots(USABLE_PORTS, [], 32768, 0) == 1


def test_it_packs_other_sizes_from_the_bottom_of_usable() -> None:
    usable = PortRange(1500, 9999)
    assert grid_origin(3000, usable) == 1500
    assert slot_starts(usable, [], 3000) == [1500, 4500]
    assert slot_starts(USABLE_PORTS, [], 64512) == [1024]


def test_it_skips_taken_ports_and_stays_on_the_grid() -> None:
    usable = PortRange(1024, 16383)
    taken = [(2048, 4095), (5000, 5000)]  # a slice and a reserved port
    assert slot_starts(usable, taken, 2048) == [6144, 8192, 10240, 12288, 14336]


def test_it_hands_out_one_port_slices_without_listing_them_all() -> None:
    free = FreeSlots.around(USABLE_PORTS, [(1030, 65535)], 1, 0)
    assert free.remaining == 6
    assert [free.take() for _ in range(6)] == [1024, 1025, 1026, 1027, 1028, 1029]
    assert free.remaining == 0


def test_it_knows_powers_of_two() -> None:
    assert [n for n in range(1, 70) if is_power_of_two(n)] == [1, 2, 4, 8, 16, 32, 64]
    assert not is_power_of_two(0)
