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
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from types import MappingProxyType

from allocator.aligned import AlignedPlan, plan_aligned
from allocator.capacity import (
    CapacityError,
    PoolCapacity,
    Shortfall,
    pool_capacities,
    shortfalls,
    slots_per_ip,
    typical_usable,
)
from allocator.carryover import Carried, Owner, carry_over
from allocator.demand import Demand, settle_demand
from allocator.diff import PlanDiff
from allocator.grid import FreeSlots
from allocator.inventory import Inventory, address_order
from allocator.model import EgressIP, Machine, PoolPolicy, Slice
from allocator.placement import PoolSeats, seat_base, seat_growth

# How long a slice that leaves its machine keeps steering there (make-before-break).
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

    def by_machine(self) -> dict[str, tuple[Slice, ...]]:
        """Each machine's slices, active and draining: what its config bundle lists."""
        grouped: dict[str, list[Slice]] = defaultdict(list)
        for slice_ in self.slices:
            grouped[slice_.machine].append(slice_)
        return {machine: tuple(slices) for machine, slices in sorted(grouped.items())}


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
    """Plan every pool's slices; see the module docstring and docs/design.md.

    ``usage`` maps (machine, pool) to utilization 0-1 and drives growth.
    Leaving slices drain for ``drain_for``; those of an IP missing from ``ips``
    are freed at once (``carryover`` says why).

    Raises :class:`CapacityError` when some active machine cannot be served,
    ``ValueError`` on inconsistent input (duplicate IPs or machines, a bad
    policy, overlapping previous slices).
    """
    if drain_for < timedelta(0):
        raise ValueError(f"drain_for={drain_for} must not be negative")
    with collector_paused():
        inventory = Inventory.build(ips, machines, policies)
        aligned = frozenset(pool for pool, policy in inventory.policies.items() if policy.aligned)
        if not aligned:
            return _plan(inventory, previous, now=now, drain_until=now + drain_for, usage=usage)
        return _plan_with_aligned(
            inventory, aligned, previous, now=now, drain_until=now + drain_for, usage=usage
        )


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while planning.

    A plan allocates a few hundred thousand small objects, none in a reference
    cycle; as they pile up the collector rescans the whole heap again and again,
    which more than doubled a re-plan of 100,000 slices (see docs/benchmarks.md).
    The planner pauses it the same way while it reads a plan's inputs.
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
    seats = {
        pool: PoolSeats(layouts, free, load, inventory.policies[pool].slice_size)
        for pool, layouts in inventory.pools.items()
    }
    added, missing = seat_base(demand.wants, seats)
    if missing:
        draining = [
            *carried.draining,
            *demand.trimmed,
            *_without(carried.still_draining, demand.revived),
        ]
        raise CapacityError(shortfalls(missing, inventory, kept + demand.revived, draining))
    grown, growth_denied = seat_growth(demand.wants, seats)
    slices, diff = _assemble(inventory, carried, demand, kept, added + grown)
    return Plan(
        slices=slices,
        diff=diff,
        capacity=pool_capacities(inventory, diff, load, free),
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


def _free_slots(inventory: Inventory, carried: Carried) -> dict[str, FreeSlots]:
    free = {}
    for address, layout in inventory.ips.items():
        usable, size = layout.ip.usable, layout.slice_size
        if address in carried.free_starts:
            free[address] = FreeSlots.among(carried.free_starts[address], size)
        elif layout.is_active:
            taken = layout.taken_with_reserved(carried.taken[address])
            free[address] = FreeSlots.around(usable, taken, size, layout.origin)
        else:  # a draining IP offers no slot
            free[address] = FreeSlots([], size)
    return free


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


def _plan_with_aligned(
    inventory: Inventory,
    aligned: frozenset[str],
    previous: Iterable[Slice],
    *,
    now: datetime,
    drain_until: datetime,
    usage: Mapping[Owner, float] | None,
) -> Plan:
    """Plan the aligned pools (:mod:`allocator.aligned`) beside the others and join
    the two: a pool is one or the other, and no slice is in two pools."""
    machines = list(inventory.machines.values())
    rest = Inventory.build(
        [layout.ip for layout in inventory.ips.values() if layout.pool not in aligned],
        [replace(machine, pools=machine.pools - aligned) for machine in machines],
        {pool: policy for pool, policy in inventory.policies.items() if pool not in aligned},
    )
    ours = Inventory.build(
        [layout.ip for layout in inventory.ips.values() if layout.pool in aligned],
        [replace(machine, pools=machine.pools & aligned) for machine in machines],
        {pool: inventory.policies[pool] for pool in aligned},
    )
    own_previous: dict[str, list[Slice]] = {pool: [] for pool in aligned}
    rest_previous = []
    for slice_ in previous:
        layout = inventory.ips.get(slice_.ip)
        if layout is not None and layout.pool in aligned:
            own_previous[layout.pool].append(slice_)
        else:
            rest_previous.append(slice_)
    short: list[Shortfall] = []
    try:
        others = _plan(rest, rest_previous, now=now, drain_until=drain_until, usage=usage)
    except CapacityError as error:
        short.extend(error.shortfalls)
    planned = {
        pool: plan_aligned(
            layouts=ours.pools[pool],
            members=ours.members[pool],
            policy=ours.policies[pool],
            previous=sorted(own_previous[pool], key=lambda s: (inventory.ips[s.ip].rank, s.lo)),
            usage=usage or {},
            now=now,
            drain_until=drain_until,
        )
        for pool in sorted(aligned)
    }
    short.extend(_aligned_shortfall(pool, result, ours) for pool, result in planned.items())
    short = [shortfall for shortfall in short if shortfall.machines_unserved]
    if short:
        raise CapacityError(sorted(short, key=lambda shortfall: shortfall.pool))
    return _joined(ours, others, list(planned.values()))


def _aligned_shortfall(pool: str, result: AlignedPlan, inventory: Inventory) -> Shortfall:
    per_ip = slots_per_ip(
        typical_usable(layout.ip for layout in inventory.pools[pool]),
        inventory.policies[pool].slice_size,
    )
    # With no active IP a first one helps; beyond that, only free ports on every IP do.
    has_ip = any(layout.is_active for layout in inventory.pools[pool])
    return Shortfall(
        pool=pool,
        machines_unserved=tuple(sorted(result.missing)),
        slices_missing=sum(result.missing.values()),
        slots_per_ip=per_ip,
        ips_needed=0 if has_ip else 1,
        aligned=has_ip,
    )


def _joined(ours: Inventory, others: Plan, planned: list[AlignedPlan]) -> Plan:
    """One plan from the other pools' and the aligned pools', in canonical order."""

    def canonical(slice_: Slice) -> tuple[tuple[int, bytes, str], int]:
        return address_order(slice_.ip), slice_.lo  # freed slices may be on gone IPs

    parts = {
        kind.name: sorted(
            [
                *getattr(others.diff, kind.name),
                *(s for p in planned for s in getattr(p, kind.name)),
            ],
            key=canonical,
        )
        for kind in fields(PlanDiff)
    }
    diff = PlanDiff(**{name: tuple(slices) for name, slices in parts.items()})
    live = [*diff.added, *diff.revived, *diff.kept, *diff.draining, *diff.still_draining]
    load = {address: n for p in planned for address, n in p.load.items()}
    free = {address: room for p in planned for address, room in p.free.items()}
    aligned_diff = PlanDiff(
        **{name: tuple(s for p in planned for s in getattr(p, name)) for name in parts}
    )
    capacity = {**others.capacity, **pool_capacities(ours, aligned_diff, load, free)}
    return Plan(
        slices=tuple(sorted(live, key=canonical)),
        diff=diff,
        capacity={pool: capacity[pool] for pool in sorted(capacity)},
        growth_denied=others.growth_denied + tuple(o for p in planned for o in p.growth_denied),
    )
