"""The slot grid: where on an IP a slice of a given size may start.

Power-of-two slices start at a multiple of their size, so a load balancer can
match a slice with one masked port value (2,048-port slices on 1024-65535 give
31 slots per IP: 2048, 4096, ..., 63488). Other sizes are packed from the
bottom of the IP's usable range, which is all they can hope for.
"""

from __future__ import annotations

from collections.abc import Iterable

from allocator.ports import PortRange, free_gaps


def is_power_of_two(number: int) -> bool:
    return number > 0 and number & (number - 1) == 0


def grid_origin(slice_size: int, usable: PortRange) -> int:
    """The port the slot grid counts from on an IP with this usable range."""
    return 0 if is_power_of_two(slice_size) else usable.lo


def first_slot_from(port: int, slice_size: int, origin: int) -> int:
    """The lowest slot start at or above ``port``."""
    steps = -(-(port - origin) // slice_size)
    return origin + steps * slice_size


def slots_in_gap(lo: int, hi: int, slice_size: int, origin: int) -> tuple[int, int]:
    """``(first slot start, number of whole slots)`` that fit inside ``lo``-``hi``."""
    first = first_slot_from(lo, slice_size, origin)
    return first, max(0, (hi - first + 1) // slice_size)


def count_slots(
    usable: PortRange, taken: Iterable[tuple[int, int]], slice_size: int, origin: int
) -> int:
    """How many whole slots fit on an IP around the ``taken`` port runs (sorted by lo)."""
    return sum(slots_in_gap(lo, hi, slice_size, origin)[1] for lo, hi in free_gaps(usable, taken))


# An IP whose grid has at most this many slots gets its slots listed (see listed_slots).
LISTED_SLOTS_MAX = 4096


def listed_slots(
    usable: PortRange, reserved: Iterable[tuple[int, int]], slice_size: int, origin: int
) -> frozenset[int] | None:
    """Every slot start of an empty IP, or None when there are too many to list.

    With the slots listed, set operations in C can check and fill a whole IP
    at once; 2,048-port slices give 31 slots, 1-port slices would give 64,512.
    """
    if count_slots(usable, (), slice_size, origin) > LISTED_SLOTS_MAX:
        return None
    starts: set[int] = set()
    for lo, hi in free_gaps(usable, reserved):
        first, count = slots_in_gap(lo, hi, slice_size, origin)
        starts.update(range(first, first + count * slice_size, slice_size))
    return frozenset(starts)


class FreeSlots:
    """The free slots of one IP, handed out lowest first.

    Kept as runs of consecutive slots rather than one entry per slot, so that
    a 1-port slice size does not cost 64,512 list items per IP.
    """

    __slots__ = ("_runs", "_next_run", "_slice_size", "remaining")

    def __init__(self, runs: list[list[int]], slice_size: int) -> None:
        """``runs``: ``[first start, number of slots]`` pairs, lowest first."""
        self._slice_size = slice_size
        self._runs = runs
        self._next_run = 0
        self.remaining = sum(count for _, count in runs)

    @classmethod
    def around(
        cls, usable: PortRange, taken: Iterable[tuple[int, int]], slice_size: int, origin: int
    ) -> FreeSlots:
        """The slots of an IP clear of the ``taken`` port runs (sorted by lo)."""
        runs = []
        for lo, hi in free_gaps(usable, taken):
            first, count = slots_in_gap(lo, hi, slice_size, origin)
            if count:
                runs.append([first, count])
        return cls(runs, slice_size)

    @classmethod
    def among(cls, starts: Iterable[int], slice_size: int) -> FreeSlots:
        """The slots starting at ``starts`` (sorted)."""
        return cls([[start, 1] for start in starts], slice_size)

    def take(self) -> int:
        """Claim the lowest free slot and return its first port."""
        run = self._runs[self._next_run]
        start = run[0]
        run[0] += self._slice_size
        run[1] -= 1
        if not run[1]:
            self._next_run += 1
        self.remaining -= 1
        return start
