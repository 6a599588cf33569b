"""How full each pool is, and what to tell the operator when one is too small."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from allocator.grid import count_slots, grid_origin
from allocator.model import EgressIP
from allocator.ports import USABLE_PORTS, PortRange

# A CapacityError names at most this many machines per pool; the rest are counted.
MACHINES_NAMED = 10


@dataclass(frozen=True, slots=True)
class PoolCapacity:
    """Slots of one pool after a plan. Only active IPs count: draining ones take nothing new.

    ``slots_total`` is what the active IPs hold with nothing allocated (reserved
    ports left out); ``slots_used`` includes the ports held by draining slices.
    """

    pool: str
    slice_size: int
    ips: int
    ips_active: int
    slots_total: int
    slots_free: int
    machines_served: int
    slices_active: int
    slices_draining: int

    @property
    def slots_used(self) -> int:
        return self.slots_total - self.slots_free

    @property
    def utilization(self) -> float:
        return self.slots_used / self.slots_total if self.slots_total else 0.0


@dataclass(frozen=True, slots=True)
class Shortfall:
    """One pool that cannot serve all its active machines.

    ``ips_needed`` counts IPs shaped like the pool's typical one (its most common
    usable range, no reserved ports) that would hold the ``slices_missing``.
    ``slots_freed_by_drains`` is what the pool gains once its draining slices end.
    """

    pool: str
    machines_unserved: tuple[str, ...]
    slices_missing: int
    slots_per_ip: int
    ips_needed: int
    slots_freed_by_drains: int = 0

    def __str__(self) -> str:
        count = len(self.machines_unserved)
        names = ", ".join(self.machines_unserved[:MACHINES_NAMED])
        if count > MACHINES_NAMED:
            names += f", and {count - MACHINES_NAMED} more"
        text = (
            f"pool {self.pool!r}: {_counted(count, 'machine')} left without slices ({names}); "
            f"you need at least {_counted(self.ips_needed, 'more IP address', 'es')}"
        )
        if self.slots_freed_by_drains:
            text += f" ({_counted(self.slots_freed_by_drains, 'slot')} free up as slices drain)"
        return text


class CapacityError(Exception):
    """Some active machine cannot be served; no plan was made. One :class:`Shortfall` per pool."""

    def __init__(self, shortfalls: Sequence[Shortfall]) -> None:
        self.shortfalls = tuple(shortfalls)
        super().__init__("\n".join(str(shortfall) for shortfall in self.shortfalls))


def _counted(count: int, noun: str, plural_suffix: str = "s") -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}{plural_suffix}"


def typical_usable(ips: Iterable[EgressIP]) -> PortRange:
    """The pool's most common usable range (the widest wins a tie); 1024-65535 for no IPs."""
    counts = Counter(ip.usable for ip in ips)
    if not counts:
        return USABLE_PORTS
    return max(counts, key=lambda usable: (counts[usable], usable.size, -usable.lo))


def slots_per_ip(usable: PortRange, slice_size: int) -> int:
    return count_slots(usable, (), slice_size, grid_origin(slice_size, usable))


def ips_needed(slices_missing: int, per_ip: int) -> int:
    return -(-slices_missing // per_ip) if per_ip else 0
