"""What becomes of the previous plan's slices: kept, put to drain, or freed.

Make-before-break: a slice that leaves its machine is not cut, it drains. It
keeps steering to its old owner until ``drain_until``, and its ports stay taken
until then. A slice whose IP is no longer in the inventory at all is freed at
once: the address is gone, nothing can steer to it any more, and holding its
ports would only hold ports of an IP that does not exist. Operators who want
an address to wind down gracefully set it to ``draining`` first.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from operator import attrgetter, sub

from allocator.inventory import Inventory, IpLayout, address_order
from allocator.model import ACTIVE, DRAINING, Slice

Owner = tuple[str, str]  # (machine, pool)

_by_lo = _lo = attrgetter("lo")
_machine = attrgetter("machine")
_hi = attrgetter("hi")
_state = attrgetter("state")


@dataclass(slots=True)
class Carried:
    """The previous slices sorted out, each list in canonical (IP, port) order.

    ``kept`` are the active slices that may stay as they are (if their machine
    does not want fewer); ``kept_count`` counts them per pool and machine, and
    ``active_on_ip`` per IP. Counts rather than lists per owner: one small list
    per owner would be 100,000 containers on a large datacenter, and allocating
    that many is what a re-plan would spend most of its time on.

    Per IP, either ``free_starts`` lists the free slots (the IP was filed whole,
    see ``_file_whole_ip``) or ``taken`` holds the port runs of every slice still
    live on it, sorted by lo.
    """

    kept: list[Slice] = field(default_factory=list)
    kept_count: dict[str, Counter[str]] = field(default_factory=dict)
    active_on_ip: dict[str, int] = field(default_factory=dict)
    revivable_by_owner: dict[Owner, list[Slice]] = field(default_factory=lambda: defaultdict(list))
    draining: list[Slice] = field(default_factory=list)
    still_draining: list[Slice] = field(default_factory=list)
    freed: list[Slice] = field(default_factory=list)
    taken: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    free_starts: dict[str, list[int]] = field(default_factory=dict)


def carry_over(
    previous: Iterable[Slice], inventory: Inventory, *, now: datetime, drain_until: datetime
) -> Carried:
    by_ip: dict[str, list[Slice]] = defaultdict(list)
    for slice_ in previous:
        by_ip[slice_.ip].append(slice_)
    carried = Carried(kept_count={pool: Counter() for pool in inventory.pools})
    for address, layout in inventory.ips.items():
        slices = by_ip.pop(address, [])
        slices.sort(key=_by_lo)
        if not _file_whole_ip(carried, layout, slices, inventory):
            carried.taken[address] = _file_one_by_one(
                carried, layout, slices, inventory, now, drain_until
            )
    for address in sorted(by_ip, key=address_order):
        carried.freed.extend(sorted(by_ip[address], key=_by_lo))
    return carried


def _file_whole_ip(
    carried: Carried, layout: IpLayout, slices: list[Slice], inventory: Inventory
) -> bool:
    """Keep every slice of an active IP at once, if every one of them may stay.

    The common case of a re-plan: all slices active, each owned by a machine
    that still serves the pool, each a distinct slot of the grid. Checked with
    set operations, which run in C, then filed in bulk; the IP's free slots
    fall out as the slots not taken. Returns False, having changed nothing,
    when any slice needs a decision of its own (``_file_one_by_one`` then).
    """
    slots = layout.slot_starts
    if slots is None or not layout.is_active:
        return False
    los = list(map(_lo, slices))
    machines = list(map(_machine, slices))
    if not (
        slots.issuperset(los)
        and len(set(los)) == len(los)
        and set(map(sub, map(_hi, slices), los)) <= {layout.slice_size - 1}
        and set(map(_state, slices)) <= {ACTIVE}
        and inventory.member_names[layout.pool].issuperset(machines)
    ):
        return False
    carried.kept.extend(slices)
    carried.kept_count[layout.pool].update(machines)
    carried.active_on_ip[layout.address] = len(slices)
    carried.free_starts[layout.address] = sorted(slots.difference(los))
    return True


def _file_one_by_one(
    carried: Carried,
    layout: IpLayout,
    slices: list[Slice],
    inventory: Inventory,
    now: datetime,
    drain_until: datetime,
) -> list[tuple[int, int]]:
    """File each previous slice of one IP (sorted by lo); return the port runs still taken."""
    pool = layout.pool
    members = inventory.member_names[pool] if layout.is_active else frozenset()
    holds_slice = layout.holds_slice
    size, origin = layout.slice_size, layout.origin
    usable_lo, usable_hi = layout.usable_lo, layout.usable_hi
    reserved = layout.reserved_ports
    kept = carried.kept
    kept_count = carried.kept_count[pool]
    kept_before = len(kept)
    taken: list[tuple[int, int]] = []
    reach = -1  # the highest port of the slices seen so far, to refuse overlaps
    for slice_ in slices:
        lo, hi = slice_.lo, slice_.hi
        if lo <= reach:
            raise ValueError(f"previous slices overlap on {layout.address}: {slice_} and another")
        if hi > reach:
            reach = hi
        machine = slice_.machine
        if slice_.state == ACTIVE:
            if (
                machine in members
                # IpLayout.holds_slice, inlined: it is most of this loop's time.
                and hi - lo + 1 == size
                and (lo - origin) % size == 0
                and usable_lo <= lo
                and hi <= usable_hi
                and not (reserved and layout.touches_reserved(lo, hi))
            ):
                kept.append(slice_)
                kept_count[machine] += 1
            else:
                carried.draining.append(start_draining(slice_, drain_until))
        elif slice_.drain_until is not None and slice_.drain_until <= now:
            carried.freed.append(slice_)
            continue
        else:
            if slice_.drain_until is None:
                slice_ = replace(slice_, drain_until=drain_until)
            carried.still_draining.append(slice_)
            if machine in members and holds_slice(lo, hi):
                carried.revivable_by_owner[(machine, pool)].append(slice_)
        taken.append((lo, hi))
    carried.active_on_ip[layout.address] = len(kept) - kept_before
    return taken


def start_draining(slice_: Slice, drain_until: datetime) -> Slice:
    return replace(slice_, state=DRAINING, drain_until=drain_until)


def revive(slice_: Slice) -> Slice:
    """Its own machine wants it back before the drain ended: same ports, active again."""
    return replace(slice_, state=ACTIVE, drain_until=None)
