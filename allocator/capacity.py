"""How full each pool is, and what to tell the operator when one is too small."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain

from allocator.diff import PlanDiff
from allocator.grid import FreeSlots, count_slots, grid_origin
from allocator.inventory import DEFAULT_POLICY, Inventory, IpLayout
from allocator.model import EgressIP, Machine, PoolPolicy, Slice, validate_policy
from allocator.ports import USABLE_PORTS, PortRange

# A CapacityError names at most this many machines per pool; the rest are counted.
MACHINES_NAMED = 10
ALIGNED_SHORT = (
    "pool %(pool)r: %(machines)s left without a port range (%(names)s); the pool is "
    "aligned, so every machine's range takes the same ports on every IP and more IP "
    "addresses do not help: %(slots)s must be free on every IP (fewer machines, "
    "a smaller slice_size or slices_per_machine, or a pool that is not aligned)"
)


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
    An ``aligned`` pool needs no IPs but room on every IP (``ips_needed`` is 0):
    its ``slices_missing`` count slots of the machines' ranges.
    """

    pool: str
    machines_unserved: tuple[str, ...]
    slices_missing: int
    slots_per_ip: int
    ips_needed: int
    slots_freed_by_drains: int = 0
    aligned: bool = False

    def __str__(self) -> str:
        count = len(self.machines_unserved)
        names = ", ".join(self.machines_unserved[:MACHINES_NAMED])
        if count > MACHINES_NAMED:
            names += f", and {count - MACHINES_NAMED} more"
        if self.aligned:
            return ALIGNED_SHORT % {
                "pool": self.pool,
                "machines": _counted(count, "machine"),
                "names": names,
                "slots": _counted(self.slices_missing, "more slot"),
            }
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


def pool_capacities(
    inventory: Inventory,
    diff: PlanDiff,
    load: Mapping[str, int],
    free: Mapping[str, FreeSlots],
) -> dict[str, PoolCapacity]:
    """Each pool's capacity, from per-IP counts: no pass over every slice."""
    draining = Counter(
        inventory.ips[slice_.ip].pool for slice_ in chain(diff.draining, diff.still_draining)
    )
    return {
        pool: PoolCapacity(
            pool=pool,
            slice_size=inventory.policies[pool].slice_size,
            ips=len(layouts),
            ips_active=sum(1 for layout in layouts if layout.is_active),
            slots_total=sum(_empty_slots(layout) for layout in layouts if layout.is_active),
            slots_free=sum(free[layout.address].remaining for layout in layouts),
            # After a plan every active machine holds its slices in every pool it serves.
            machines_served=len(inventory.members[pool]),
            slices_active=sum(load.get(layout.address, 0) for layout in layouts),
            slices_draining=draining[pool],
        )
        for pool, layouts in inventory.pools.items()
    }


def _empty_slots(layout: IpLayout) -> int:
    return count_slots(layout.ip.usable, layout.reserved_runs, layout.slice_size, layout.origin)


@dataclass(frozen=True, slots=True)
class PoolHeadroom:
    """How much room a pool has now, from its live slices, without planning.

    Counted by the same grid and reserved-port rules the planner places with:
    ``slots_free`` are whole free slots of its active IPs (draining slices and
    reserved ports taken); ``slices_missing`` is what its active machines lack
    of what they are due (``weight`` x ``slices_per_machine``, a machine's own
    draining slices counted as given back to it); ``ips_needed`` is how many
    IPs shaped like the pool's typical one would hold what the free slots cannot.
    """

    pool: str
    slots_total: int
    slots_free: int
    machines_unserved: int
    slices_missing: int
    slots_per_ip: int
    ips_needed: int


#: Per pool: how many of the active machines serving it have each ``(weight, slices
#: held in the pool)``; the one summary of machines and slices headroom needs.
MemberCounts = Mapping[str, Mapping[tuple[int, int], int]]


def headroom(
    *,
    ips: Iterable[EgressIP],
    machines: Iterable[Machine],
    slices: Iterable[Slice],
    policies: Mapping[str, PoolPolicy],
) -> dict[str, PoolHeadroom]:
    """Each pool's :class:`PoolHeadroom` given the live ``slices``: cheap enough to scrape.

    The counts :func:`headroom_of_counts` takes, made from the objects: the
    planner's pages compute the same counts in the database instead.
    """
    inventory = Inventory.build(ips, machines, policies)
    live = [s for s in slices if s.ip in inventory.ips]
    held: Counter[tuple[str, str]] = Counter((s.machine, inventory.ips[s.ip].pool) for s in live)
    members: dict[str, Counter[tuple[int, int]]] = {pool: Counter() for pool in inventory.pools}
    for pool, serving in inventory.members.items():
        for machine in serving:
            members[pool][(machine.weight, held[(machine.name, pool)])] += 1
    return _headroom(inventory.pools, inventory.policies, _runs_by_ip(live), members)


def headroom_of_counts(
    *,
    ips: Iterable[EgressIP],
    policies: Mapping[str, PoolPolicy],
    taken: Mapping[str, Sequence[tuple[int, int]]],
    members: MemberCounts,
) -> dict[str, PoolHeadroom]:
    """Each pool's :class:`PoolHeadroom` from counts, by the rules :func:`headroom` uses.

    ``taken``: per IP address, the port runs its live slices cover, sorted by
    ``lo``; touching or overlapping runs may come merged or not, the free
    slots are the same. ``members``: per pool, :data:`MemberCounts`; a pool
    that only machines no longer active serve is listed with no counts. The
    pools are those of ``ips`` and those ``members`` names.
    """
    inventory = Inventory.build(ips, (), policies)
    pools = dict(inventory.pools)
    chosen = dict(inventory.policies)
    for pool in members:
        if pool not in pools:
            pools[pool] = ()
            chosen[pool] = validate_policy(policies.get(pool, DEFAULT_POLICY))
    return _headroom(pools, chosen, taken, members)


def _headroom(
    pools: Mapping[str, Sequence[IpLayout]],
    policies: Mapping[str, PoolPolicy],
    taken: Mapping[str, Sequence[tuple[int, int]]],
    members: MemberCounts,
) -> dict[str, PoolHeadroom]:
    return {
        pool: _pool_headroom(pool, pools[pool], policies[pool], taken, members.get(pool, {}))
        for pool in sorted(pools)
    }


def _pool_headroom(
    pool: str,
    layouts: Sequence[IpLayout],
    policy: PoolPolicy,
    taken: Mapping[str, Sequence[tuple[int, int]]],
    members: Mapping[tuple[int, int], int],
) -> PoolHeadroom:
    active = [layout for layout in layouts if layout.is_active]
    free = sum(
        count_slots(
            layout.ip.usable,
            layout.taken_with_reserved(list(taken.get(layout.address, ()))),
            layout.slice_size,
            layout.origin,
        )
        for layout in active
    )
    # What each machine lacks of what it is due, a machine's draining slices counted as held.
    lacking = {
        (weight, held): weight * policy.slices_per_machine - held for weight, held in members
    }
    missing = sum(n * members[shape] for shape, n in lacking.items() if n > 0)
    per_ip = _typical_slots_per_ip(layouts, policy.slice_size)
    if policy.aligned:  # ranges take every IP's ports: only a first IP helps
        needed = 1 if missing and not active else 0
    else:  # machines short of slices first take the free slots; only the rest needs IPs
        needed = ips_needed(max(missing - free, 0), per_ip)
    return PoolHeadroom(
        pool=pool,
        slots_total=sum(_empty_slots(layout) for layout in active),
        slots_free=free,
        machines_unserved=sum(members[shape] for shape, n in lacking.items() if n > 0),
        slices_missing=missing,
        slots_per_ip=per_ip,
        ips_needed=needed,
    )


def _typical_slots_per_ip(layouts: Iterable[IpLayout], slice_size: int) -> int:
    per_ip = slots_per_ip(typical_usable(layout.ip for layout in layouts), slice_size)
    return per_ip or slots_per_ip(USABLE_PORTS, slice_size)


def shortfalls(
    missing: dict[str, dict[str, int]],
    inventory: Inventory,
    active: list[Slice],
    draining: list[Slice],
) -> list[Shortfall]:
    """One Shortfall per pool with machines ``missing`` slices: {pool: {machine: count}}."""
    found = []
    for pool in sorted(missing):
        layouts = inventory.pools[pool]
        per_ip = _typical_slots_per_ip(layouts, inventory.policies[pool].slice_size)
        slices_missing = sum(missing[pool].values())
        found.append(
            Shortfall(
                pool=pool,
                machines_unserved=tuple(sorted(missing[pool])),
                slices_missing=slices_missing,
                slots_per_ip=per_ip,
                ips_needed=ips_needed(slices_missing, per_ip),
                slots_freed_by_drains=_slots_freed_by_drains(layouts, active, draining),
            )
        )
    return found


def _slots_freed_by_drains(
    layouts: Iterable[IpLayout], active: list[Slice], draining: list[Slice]
) -> int:
    """Free slots the pool would have if every draining slice had ended already."""
    active_runs = _runs_by_ip(active)
    live_runs = _runs_by_ip([*active, *draining])
    gained = 0
    for layout in layouts:
        if not layout.is_active:
            continue  # a draining IP offers nothing, drains or not
        usable, size, origin = layout.ip.usable, layout.slice_size, layout.origin
        without_drains = layout.taken_with_reserved(active_runs.get(layout.address, []))
        with_drains = layout.taken_with_reserved(live_runs.get(layout.address, []))
        gained += count_slots(usable, without_drains, size, origin)
        gained -= count_slots(usable, with_drains, size, origin)
    return gained


def _runs_by_ip(slices: Iterable[Slice]) -> dict[str, list[tuple[int, int]]]:
    runs: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for slice_ in slices:
        runs[slice_.ip].append((slice_.lo, slice_.hi))
    for ip_runs in runs.values():
        ip_runs.sort()
    return runs
