"""Where new slices go: the least-loaded active IP of the pool that has a free slot.

Load is the number of active slices an IP carries, so the IPs of a pool carry
nearly equal numbers of machines and losing one IP hurts everyone about the
same. Ties go to the IP that sorts first; on an IP the lowest free slot is
taken, which keeps the free space in one piece at the top.

"Nearly equal", as the tests hold it: an IP that got a new slice carries at
most one active slice more than any IP of its pool that still has room; so a
plan from nothing over IPs of one shape differs by at most one slice per IP.
Existing slices never move to even things out (that would renumber someone):
after machines leave, the next ones to join fill the gaps.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping

from allocator.carryover import Owner
from allocator.demand import Want
from allocator.grid import FreeSlots
from allocator.inventory import IpLayout
from allocator.model import Slice


class PoolSeats:
    """The active IPs of one pool that still have a free slot, least loaded first."""

    __slots__ = ("_heap", "_free", "_load", "_slice_size")

    def __init__(
        self,
        layouts: Iterable[IpLayout],
        free: dict[str, FreeSlots],
        load: dict[str, int],
        slice_size: int,
    ) -> None:
        self._free = free
        self._load = load
        self._slice_size = slice_size
        self._heap = [
            (load.get(layout.address, 0), layout.rank, layout.address)
            for layout in layouts
            if layout.is_active and free[layout.address].remaining
        ]
        heapq.heapify(self._heap)

    def take(self) -> tuple[str, int] | None:
        """Claim a slot on the least-loaded IP: ``(address, first port)``, or None when full.

        Counts the new slice in the shared ``load``, which ends as active slices per IP.
        """
        if not self._heap:
            return None
        load, rank, address = self._heap[0]
        free = self._free[address]
        start = free.take()
        self._load[address] = load + 1
        if free.remaining:
            heapq.heapreplace(self._heap, (load + 1, rank, address))
        else:
            heapq.heappop(self._heap)
        return address, start

    def seat(self, machine: str, count: int) -> tuple[list[Slice], int]:
        """Up to ``count`` new slices for ``machine``, and how many did not fit."""
        seated: list[Slice] = []
        for placed in range(count):
            seat = self.take()
            if seat is None:
                return seated, count - placed
            address, start = seat
            seated.append(Slice(address, start, start + self._slice_size - 1, machine))
        return seated, 0


def seat_base(
    wants: Iterable[Want], seats: Mapping[str, PoolSeats]
) -> tuple[list[Slice], dict[str, dict[str, int]]]:
    """Seat every machine's base demand: the new slices and, per pool, what each
    machine could not get ({pool: {machine: slices missing}})."""
    added: list[Slice] = []
    missing: dict[str, dict[str, int]] = defaultdict(dict)
    for want in wants:
        seated, short = seats[want.pool].seat(want.machine, want.base)
        added.extend(seated)
        if short:
            missing[want.pool][want.machine] = short
    return added, missing


def seat_growth(
    wants: Iterable[Want], seats: Mapping[str, PoolSeats]
) -> tuple[list[Slice], tuple[Owner, ...]]:
    """Best effort, after all base demand fitted: a hot machine gets its extra slice
    only if the pool still has room; the others are listed as denied."""
    grown: list[Slice] = []
    denied: list[Owner] = []
    for want in wants:
        seated, short = seats[want.pool].seat(want.machine, want.growth)
        grown.extend(seated)
        if short:
            denied.append((want.machine, want.pool))
    return grown, tuple(denied)
