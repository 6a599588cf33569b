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
        draining = [
            *carried.draining,
            *demand.trimmed,
            *_without(carried.still_draining, demand.revived),
        ]
        raise CapacityError(_shortfalls(missing, inventory, kept + demand.revived, draining))
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
        usable, size = layout.ip.usable, layout.slice_size
        if address in carried.free_starts:
            free[address] = FreeSlots.among(carried.free_starts[address], size)
        elif layout.is_active:
            taken = _taken_ports(layout, carried.taken[address])
            free[address] = FreeSlots.around(usable, taken, size, layout.origin)
        else:  # a draining IP offers no slot
            free[address] = FreeSlots([], size)
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
    active: list[Slice],
    draining: list[Slice],
) -> list[Shortfall]:
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
                slots_freed_by_drains=_slots_freed_by_drains(layouts, active, draining),
            )
        )
    return shortfalls


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
        without_drains = _taken_ports(layout, active_runs.get(layout.address, []))
        with_drains = _taken_ports(layout, live_runs.get(layout.address, []))
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
    changed = sorted([*still_draining, *draining, *revived], key=canonical)
    slices = _merge_sorted(_merge_sorted(kept, changed, canonical), added, canonical)
    diff = PlanDiff(
        added=tuple(added),
        revived=tuple(revived),
        draining=tuple(draining),
        freed=tuple(carried.freed),
        kept=tuple(kept),
        still_draining=tuple(still_draining),
    )
    return tuple(slices), diff


def _merge_sorted(one: list[Slice], other: list[Slice], key: Callable[[Slice], int]) -> list[Slice]:
    """Two lists sorted by ``key`` (no key in both) merged into one.

    A re-plan keeps nearly every slice and changes a few, so rather than sort
    100,000 slices again, each slice of the shorter list is bisected into the
    longer one and the runs in between are copied, which Python does in C.
    """
    short, long = sorted((one, other), key=len)
    merged: list[Slice] = []
    start = 0
    for slice_ in short:
        cut = bisect_left(long, key(slice_), lo=start, key=key)
        merged.extend(long[start:cut])
        merged.append(slice_)
        start = cut
    merged.extend(long[start:])
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
