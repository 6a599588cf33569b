"""``plan``: from the inventory and the previous slices to the next slice set.

The steps, each in its own module:

1. ``inventory``: validate and sort the inputs into one canonical order;
2. ``carryover``: keep, drain or free each previous slice;
3. ``demand``: settle how many slices each machine should hold per pool;
4. ``placement``: seat the missing slices on the least-loaded IPs, base demand
   for every pool first, growth only after all of it fitted;
5. here: assemble the plan, its diff and each pool's capacity.

Whole or nothing: if any active machine cannot get its base slices, ``plan``
raises :class:`CapacityError` and returns no plan at all.
"""

from __future__ import annotations

import gc
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain
from types import MappingProxyType

from allocator.capacity import (
    CapacityError,
    PoolCapacity,
    Shortfall,
    ips_needed,
    slots_per_ip,
    typical_usable,
)
from allocator.carryover import Carried, Owner, carry_over
from allocator.demand import Demand, Want, settle_demand
from allocator.diff import PlanDiff
from allocator.grid import FreeSlots, count_slots
from allocator.inventory import Inventory, IpLayout
from allocator.model import EgressIP, Machine, PoolPolicy, Slice
from allocator.placement import PoolSeats
from allocator.ports import USABLE_PORTS

DEFAULT_DRAIN = timedelta(hours=1)
_NO_POLICIES: Mapping[str, PoolPolicy] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Plan:
    """The next slice set, sorted by IP then port, with its diff and each pool's capacity.

    ``growth_denied`` lists the (machine, pool) pairs that ran hot but found no room.
    """

    slices: tuple[Slice, ...]
    diff: PlanDiff
    capacity: Mapping[str, PoolCapacity]
    growth_denied: tuple[Owner, ...] = ()

    def slices_of(self, machine: str) -> tuple[Slice, ...]:
        return tuple(slice_ for slice_ in self.slices if slice_.machine == machine)


def plan(
    *,
    ips: Iterable[EgressIP],
    machines: Iterable[Machine],
    previous: Iterable[Slice] = (),
    policies: Mapping[str, PoolPolicy] = _NO_POLICIES,
    now: datetime,
    drain_for: timedelta = DEFAULT_DRAIN,
    usage: Mapping[Owner, float] | None = None,
) -> Plan:
    """Plan every pool's slices; see the module docstring for the steps and DESIGN.md §5.

    ``usage`` maps (machine, pool) to utilization 0-1 and drives growth.
    Raises :class:`CapacityError` when some active machine cannot be served,
    ``ValueError`` on inconsistent input (duplicate IPs or machines, a bad
    policy, overlapping previous slices).
    """
    if drain_for < timedelta(0):
        raise ValueError(f"drain_for={drain_for} must not be negative")
    with _collector_paused():
        inventory = Inventory.build(ips, machines, policies)
        return _plan(inventory, previous, now=now, drain_until=now + drain_for, usage=usage)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while planning.

    A plan allocates a few hundred thousand small objects, none in a reference
    cycle; as they pile up the collector rescans the whole heap again and again,
    which more than doubled a re-plan of 100,000 slices (see docs/benchmarks.md).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _plan(
    inventory: Inventory,
    previous: Iterable[Slice],
    *,
    now: datetime,
    drain_until: datetime,
    usage: Mapping[Owner, float] | None,
) -> Plan:
    carried = carry_over(previous, inventory, now=now, drain_until=drain_until)
    demand = settle_demand(inventory, carried, usage, drain_until)
    kept = _without(carried.kept, demand.trimmed)
    free = _free_slots(inventory, carried)
    load = _active_on_ip(carried, demand)
    seats = {pool: PoolSeats(layouts, free, load) for pool, layouts in inventory.pools.items()}
    added, missing = _seat_base(demand.wants, seats, inventory)
    if missing:
        raise CapacityError(_shortfalls(missing, inventory, carried, kept + demand.revived))
    grown, growth_denied = _seat_growth(demand.wants, seats, inventory)
    slices, diff = _assemble(inventory, carried, demand, kept, added + grown)
    return Plan(
        slices=slices,
        diff=diff,
        capacity=_capacity(inventory, diff, load, free),
        growth_denied=growth_denied,
    )


def _without(slices: list[Slice], dropped: Sequence[Slice]) -> list[Slice]:
    """``slices`` minus those at the same IP and port as one of ``dropped``."""
    if not dropped:
        return slices
    places = {(slice_.ip, slice_.lo) for slice_ in dropped}
    return [slice_ for slice_ in slices if (slice_.ip, slice_.lo) not in places]


def _active_on_ip(carried: Carried, demand: Demand) -> dict[str, int]:
    """Active slices per IP before seating: the load placement balances."""
    load = dict(carried.active_on_ip)
    for slice_ in demand.trimmed:
        load[slice_.ip] -= 1
    for slice_ in demand.revived:
        load[slice_.ip] += 1
    return load


def _taken_ports(layout: IpLayout, slice_runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    if not layout.reserved_runs:
        return slice_runs
    return sorted([*layout.reserved_runs, *slice_runs])


def _free_slots(inventory: Inventory, carried: Carried) -> dict[str, FreeSlots]:
    free = {}
    for address, layout in inventory.ips.items():
        usable = layout.ip.usable
        # A draining IP offers no slot: as if its whole usable range were taken.
        taken = (
            _taken_ports(layout, carried.taken[address])
            if layout.is_active
            else [(usable.lo, usable.hi)]
        )
        free[address] = FreeSlots(usable, taken, layout.slice_size, layout.origin)
    return free


def _seat_base(
    wants: list[Want], seats: dict[str, PoolSeats], inventory: Inventory
) -> tuple[list[Slice], dict[str, dict[str, int]]]:
    """Seat every machine's base demand; return the new slices and, per pool, the slices
    each machine could not get."""
    added: list[Slice] = []
    missing: dict[str, dict[str, int]] = defaultdict(dict)
    for want in wants:
        pool_seats = seats[want.pool]
        size = inventory.policies[want.pool].slice_size
        for seated in range(want.base):
            seat = pool_seats.take()
            if seat is None:
                missing[want.pool][want.machine] = want.base - seated
                break
            address, start = seat
            added.append(Slice(ip=address, lo=start, hi=start + size - 1, machine=want.machine))
    return added, missing


def _seat_growth(
    wants: list[Want], seats: dict[str, PoolSeats], inventory: Inventory
) -> tuple[list[Slice], tuple[Owner, ...]]:
    """Best effort: a hot machine gets its extra slice only if the pool still has room."""
    grown: list[Slice] = []
    denied: list[Owner] = []
    for want in wants:
        size = inventory.policies[want.pool].slice_size
        for _ in range(want.growth):
            seat = seats[want.pool].take()
            if seat is None:
                denied.append((want.machine, want.pool))
                break
            address, start = seat
            grown.append(Slice(ip=address, lo=start, hi=start + size - 1, machine=want.machine))
    return grown, tuple(denied)


def _shortfalls(
    missing: dict[str, dict[str, int]],
    inventory: Inventory,
    carried: Carried,
    active: list[Slice],
) -> list[Shortfall]:
    active_runs: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for slice_ in active:
        active_runs[slice_.ip].append((slice_.lo, slice_.hi))
    shortfalls = []
    for pool in sorted(missing):
        layouts = inventory.pools[pool]
        size = inventory.policies[pool].slice_size
        per_ip = slots_per_ip(typical_usable(layout.ip for layout in layouts), size)
        per_ip = per_ip or slots_per_ip(USABLE_PORTS, size)
        slices_missing = sum(missing[pool].values())
        shortfalls.append(
            Shortfall(
                pool=pool,
                machines_unserved=tuple(sorted(missing[pool])),
                slices_missing=slices_missing,
                slots_per_ip=per_ip,
                ips_needed=ips_needed(slices_missing, per_ip),
                slots_freed_by_drains=_slots_freed_by_drains(layouts, carried, active_runs),
            )
        )
    return shortfalls


def _slots_freed_by_drains(
    layouts: Iterable[IpLayout],
    carried: Carried,
    active_runs: Mapping[str, list[tuple[int, int]]],
) -> int:
    """Free slots the pool would have if every draining slice had ended already."""
    gained = 0
    for layout in layouts:
        if not layout.is_active:
            continue
        usable, size, origin = layout.ip.usable, layout.slice_size, layout.origin
        without_drains = sorted(active_runs.get(layout.address, []))
        with_drains = carried.taken[layout.address]
        gained += count_slots(usable, _taken_ports(layout, without_drains), size, origin)
        gained -= count_slots(usable, _taken_ports(layout, with_drains), size, origin)
    return gained


def _assemble(
    inventory: Inventory,
    carried: Carried,
    demand: Demand,
    kept: list[Slice],
    added: list[Slice],
) -> tuple[tuple[Slice, ...], PlanDiff]:
    rank_bits = {address: layout.rank << 16 for address, layout in inventory.ips.items()}

    def canonical(slice_: Slice) -> int:
        return rank_bits[slice_.ip] | slice_.lo

    still_draining = _without(carried.still_draining, demand.revived)
    draining = sorted(carried.draining + demand.trimmed, key=canonical)
    revived = sorted(demand.revived, key=canonical)
    added = sorted(added, key=canonical)
    slices = _merge_into_sorted(kept, [*still_draining, *draining, *revived, *added], canonical)
    diff = PlanDiff(
        added=tuple(added),
        revived=tuple(revived),
        draining=tuple(draining),
        freed=tuple(carried.freed),
        kept=tuple(kept),
        still_draining=tuple(still_draining),
    )
    return tuple(slices), diff


def _merge_into_sorted(
    ordered: list[Slice], others: list[Slice], key: Callable[[Slice], int]
) -> list[Slice]:
    """``ordered`` (already sorted by ``key``) with ``others`` merged in.

    A re-plan keeps nearly every slice and changes a few, so rather than sort
    100,000 slices again it bisects for each of the few and copies the runs in
    between, which Python does in C.
    """
    merged: list[Slice] = []
    start = 0
    for slice_ in sorted(others, key=key):
        cut = bisect_left(ordered, key(slice_), lo=start, key=key)
        merged.extend(ordered[start:cut])
        merged.append(slice_)
        start = cut
    merged.extend(ordered[start:])
    return merged


def _capacity(
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
