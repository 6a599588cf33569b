"""Aligned pools: each machine holds one contiguous port range, the same on every IP.

An unmodified program cannot choose its source port: the kernel picks it from
the network namespace's ``ip_local_port_range``, which is one range. So in an
aligned pool a machine holds ``k`` adjacent slots of the pool's grid on every
active IP of the pool, and the agent can hand the kernel that range as it is
(docs/agent.md, exact-range mode). ``k`` follows the demand rules of every
pool (``slices_per_machine`` x weight, growth one slot at a time up to the
ceiling), counted in slots of the range: a 2-slot range on 4 IPs is 8 slices.

Beyond the rules of every pool:

- a machine whose range is whole on every active IP keeps it as it is; on an
  IP that joined the pool its range is filled in when those ports are free;
- growth widens the range into the adjacent free slots (above, else below);
  where there are none the machine moves: a range of the new width is granted
  and the old one drains (make-before-break), so nobody else is renumbered;
- shrinking drains the range's highest slots; a range that cannot be made
  whole moves, at base width.

What it costs: every range takes its ports on every IP, so a pool serves at
most as many base ranges as one IP has slots. More IPs give each machine more
ports (one range per address), not room for more machines.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from allocator.carryover import Owner, revive, start_draining
from allocator.demand import target_count
from allocator.grid import FreeSlots, slots_in_gap
from allocator.inventory import IpLayout
from allocator.model import ACTIVE, Machine, PoolPolicy, Slice
from allocator.ports import PortRange, free_gaps

Range = tuple[int, int]  # (lo, hi) of a machine's range, inclusive


@dataclass(slots=True)
class AlignedPlan:
    """One aligned pool planned: the diff's parts, what base demand could not get
    ({machine: slots missing}), and the per-IP load and free slots for capacity."""

    kept: list[Slice] = field(default_factory=list)
    added: list[Slice] = field(default_factory=list)
    revived: list[Slice] = field(default_factory=list)
    draining: list[Slice] = field(default_factory=list)
    still_draining: list[Slice] = field(default_factory=list)
    freed: list[Slice] = field(default_factory=list)
    missing: dict[str, int] = field(default_factory=dict)
    growth_denied: list[Owner] = field(default_factory=list)
    load: dict[str, int] = field(default_factory=dict)
    free: dict[str, FreeSlots] = field(default_factory=dict)


class _Space:
    """The live port runs, by owner, of one aligned pool's active IPs.

    A run is one live slice (or a slot just granted): ``(lo, hi, machine)``.
    Lists are scanned whole: an aligned pool holds at most one IP's slots of
    ranges, a few hundred at most, and plans are rare.
    """

    def __init__(self, active: Sequence[IpLayout], size: int) -> None:
        self.active = active
        self.size = size
        self.runs: dict[str, list[tuple[int, int, str]]] = {lay.address: [] for lay in active}

    def hold(self, address: str, lo: int, hi: int, machine: str) -> None:
        self.runs[address].append((lo, hi, machine))

    def claim(self, span: Range, machine: str) -> None:
        """Hold ``span`` for ``machine`` on every active IP, one run per slot like a slice."""
        for layout in self.active:
            for lo in range(span[0], span[1] + 1, self.size):
                self.hold(layout.address, lo, lo + self.size - 1, machine)

    def whole_slots(self, span: Range) -> bool:
        """Whether ``span`` is whole grid slots on every active IP, clear of reserved ports."""
        lo, hi = span
        if (hi - lo + 1) % self.size:
            return False
        return all(layout.holds_slice(lo, lo + self.size - 1) for layout in self.active) and all(
            layout.usable_hi >= hi and not layout.touches_reserved(lo, hi) for layout in self.active
        )

    def free_for(self, span: Range, machine: str) -> bool:
        """Whether ``machine`` may hold ``span`` on every active IP: whole slots that
        no one else's live slice touches (its own whole slots, active or draining, are fine)."""
        lo, hi = span
        return self.whole_slots(span) and not any(
            run[0] <= hi and lo <= run[1] and not self._own_slot(layout, run, machine)
            for layout in self.active
            for run in self.runs[layout.address]
        )

    def _own_slot(self, layout: IpLayout, run: tuple[int, int, str], machine: str) -> bool:
        # Only a whole slot of its own can be kept or revived in place; anything
        # else of its own (a slice cut for another slice size) must drain first.
        lo, hi, owner = run
        return (
            owner == machine and hi - lo + 1 == self.size and (lo - layout.origin) % self.size == 0
        )

    def lowest_free(self, slots: int) -> Range | None:
        """The lowest ``slots`` adjacent slots free on every active IP, if any."""
        if not self.active:
            return None
        size = self.size
        first = self.active[0]
        if any((layout.origin - first.origin) % size for layout in self.active):
            return None  # grids that never line up: no slot is a slot on every IP
        common = (
            max(lay.usable_lo for lay in self.active),
            min(lay.usable_hi for lay in self.active),
        )
        if common[0] > common[1]:
            return None
        taken = sorted(
            [(lo, hi) for runs in self.runs.values() for lo, hi, _ in runs]
            + [run for layout in self.active for run in layout.reserved_runs]
        )
        for gap_lo, gap_hi in free_gaps(PortRange(*common), taken):
            start, count = slots_in_gap(gap_lo, gap_hi, size, first.origin)
            if count >= slots:
                return start, start + slots * size - 1
        return None


def plan_aligned(
    *,
    layouts: Sequence[IpLayout],
    members: Sequence[Machine],
    policy: PoolPolicy,
    previous: Sequence[Slice],
    usage: Mapping[Owner, float],
    now: datetime,
    drain_until: datetime,
) -> AlignedPlan:
    """Plan one aligned pool from its previous slices (those on its IPs); see the module doc."""
    result = AlignedPlan()
    space = _Space([layout for layout in layouts if layout.is_active], policy.slice_size)
    live = _carry_live(previous, space, result, now)
    pool = layouts[0].pool if layouts else ""
    ranges, targets = _settle_ranges(space, live, members, policy, usage, pool)
    for machine in members:  # base demand first, for everyone
        base = policy.slices_per_machine * machine.weight
        had = _width(ranges[machine.name], policy)
        if had < base:
            ranges[machine.name] = _resize(space, ranges[machine.name], base, machine.name)
            if ranges[machine.name] is None:
                result.missing[machine.name] = base - had
    if result.missing:
        return result
    for machine in members:  # then growth, best effort
        if _width(ranges[machine.name], policy) < targets[machine.name]:
            grown = _resize(space, ranges[machine.name], targets[machine.name], machine.name)
            if grown is None:
                result.growth_denied.append((machine.name, pool))
            else:
                ranges[machine.name] = grown
    _materialize(result, layouts, live, ranges, policy.slice_size, drain_until)
    return result


def _settle_ranges(
    space: _Space,
    live: Mapping[str, list[Slice]],
    members: Sequence[Machine],
    policy: PoolPolicy,
    usage: Mapping[Owner, float],
    pool: str,
) -> tuple[dict[str, Range | None], dict[str, int]]:
    """Each member's range as it stands (None: none, or one that must move), cut to
    its target when it runs cold, and claimed; and each member's target width."""
    ranges: dict[str, Range | None] = {}
    targets: dict[str, int] = {}
    for machine in members:
        span = _current_range(space, live.get(machine.name, []), machine.name)
        have = _width(span, policy)
        base = policy.slices_per_machine * machine.weight
        ceiling = policy.growth_ceiling * machine.weight
        target = target_count(have, base, ceiling, usage.get((machine.name, pool)))
        if span is not None:
            span = span if have <= target else (span[0], span[0] + target * policy.slice_size - 1)
            space.claim(span, machine.name)
        ranges[machine.name], targets[machine.name] = span, target
    return ranges, targets


def _carry_live(
    previous: Sequence[Slice], space: _Space, result: AlignedPlan, now: datetime
) -> dict[str, list[Slice]]:
    """Free the slices whose drain ended; hold every other on the space; group by machine."""
    live: dict[str, list[Slice]] = defaultdict(list)
    for slice_ in previous:
        if slice_.state != ACTIVE and slice_.drain_until is not None and slice_.drain_until <= now:
            result.freed.append(slice_)
            continue
        live[slice_.machine].append(slice_)
        if slice_.ip in space.runs:
            space.hold(slice_.ip, slice_.lo, slice_.hi, slice_.machine)
    return live


def _current_range(space: _Space, mine: list[Slice], machine: str) -> Range | None:
    """The machine's range if its active slices on active IPs make one that can be
    whole on every active IP (filling in an IP that lacks it), else None (it moves)."""
    held = [s for s in mine if s.state == ACTIVE and s.ip in space.runs]
    if not held:
        return None
    span = (min(s.lo for s in held), max(s.hi for s in held))
    return span if space.free_for(span, machine) else None


def _width(span: Range | None, policy: PoolPolicy) -> int:
    return 0 if span is None else (span[1] - span[0] + 1) // policy.slice_size


def _resize(space: _Space, span: Range | None, slots: int, machine: str) -> Range | None:
    """Widen ``span`` to ``slots`` in place (above, else below), else move it to the
    lowest free run of that width; None when neither fits. Claims what it grants."""
    if span is not None:
        extra = slots * space.size - (span[1] - span[0] + 1)
        for wider, added in (
            ((span[0], span[1] + extra), (span[1] + 1, span[1] + extra)),
            ((span[0] - extra, span[1]), (span[0] - extra, span[0] - 1)),
        ):
            if added[0] >= 0 and space.free_for(added, machine):
                space.claim(added, machine)
                return wider
    moved = space.lowest_free(slots)
    if moved is not None:
        space.claim(moved, machine)
    return moved


def _materialize(
    result: AlignedPlan,
    layouts: Sequence[IpLayout],
    live: Mapping[str, list[Slice]],
    ranges: Mapping[str, Range | None],
    size: int,
    drain_until: datetime,
) -> None:
    """Turn each machine's range into slices: keep, revive, add; drain everything else."""
    for machine, slices in sorted(live.items()):
        span = ranges.get(machine)
        wanted = _slot_places(layouts, span, size)
        for slice_ in slices:
            place = (slice_.ip, slice_.lo, slice_.hi)
            if place in wanted and slice_.state == ACTIVE:
                result.kept.append(slice_)
            elif place in wanted:
                result.revived.append(revive(slice_))
            elif slice_.state == ACTIVE:
                result.draining.append(start_draining(slice_, drain_until))
            else:
                result.still_draining.append(
                    slice_ if slice_.drain_until else replace(slice_, drain_until=drain_until)
                )
            wanted.discard(place)
        result.added.extend(Slice(ip, lo, hi, machine) for ip, lo, hi in sorted(wanted))
    for machine, span in sorted(ranges.items()):
        if machine not in live:
            places = _slot_places(layouts, span, size)
            result.added.extend(Slice(ip, lo, hi, machine) for ip, lo, hi in sorted(places))
    _count_room(result, layouts, size)


def _slot_places(
    layouts: Sequence[IpLayout], span: Range | None, size: int
) -> set[tuple[str, int, int]]:
    if span is None:
        return set()
    return {
        (layout.address, lo, lo + size - 1)
        for layout in layouts
        if layout.is_active
        for lo in range(span[0], span[1] + 1, size)
    }


def _count_room(result: AlignedPlan, layouts: Sequence[IpLayout], size: int) -> None:
    """Active slices per IP and the free slots left, as ``pool_capacities`` takes them."""
    runs: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for slice_ in [*result.kept, *result.added, *result.revived]:
        result.load[slice_.ip] = result.load.get(slice_.ip, 0) + 1
        runs[slice_.ip].append((slice_.lo, slice_.hi))
    for slice_ in [*result.draining, *result.still_draining]:
        runs[slice_.ip].append((slice_.lo, slice_.hi))
    for layout in layouts:
        if layout.is_active:
            taken = layout.taken_with_reserved(sorted(runs[layout.address]))
            result.free[layout.address] = FreeSlots.around(
                layout.ip.usable, taken, size, layout.origin
            )
        else:
            result.free[layout.address] = FreeSlots([], size)
