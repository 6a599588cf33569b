"""Where new slices go: the least-loaded active IP of the pool that has a free slot.

Load is the number of active slices an IP carries, so the IPs of a pool carry
nearly equal numbers of machines and losing one IP hurts everyone about the
same. Ties go to the IP that sorts first; on an IP the lowest free slot is
taken, which keeps the free space in one piece at the top.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from allocator.grid import FreeSlots
from allocator.inventory import IpLayout


class PoolSeats:
    """The active IPs of one pool that still have a free slot, least loaded first."""

    __slots__ = ("_heap", "_free", "_load")

    def __init__(
        self, layouts: Iterable[IpLayout], free: dict[str, FreeSlots], load: dict[str, int]
    ) -> None:
        self._free = free
        self._load = load
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
