"""How many slices each active machine should hold in each pool it serves.

Base demand is ``slices_per_machine x weight`` and must be met. Growth, like
Cloud NAT's dynamic port allocation, is one slice at a time and best-effort:
a machine running hot gets one more while the pool has room and the pool's
ceiling allows; one running cold gives one back (its highest slice drains).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from allocator.carryover import Carried, Owner, revive, start_draining
from allocator.inventory import Inventory
from allocator.model import Slice

HOT = 0.8  # utilization above which a machine gets one more slice
COLD = 0.2  # utilization below which a machine above its base gives one back


class Want(NamedTuple):
    """Slices one machine still needs in one pool after keeping and reviving what it can.

    A named tuple, not a dataclass: a plan from nothing makes one per machine and pool.
    """

    machine: str
    pool: str
    base: int
    growth: int


@dataclass(slots=True)
class Demand:
    wants: list[Want] = field(default_factory=list)
    trimmed: list[Slice] = field(default_factory=list)
    revived: list[Slice] = field(default_factory=list)


def target_count(have: int, base: int, ceiling: int, utilization: float | None) -> int:
    """Slices a machine should hold, given how many it has and how hot they run."""
    wanted = have
    if utilization is not None and not math.isnan(utilization):
        if utilization > HOT:
            wanted = have + 1
        elif utilization < COLD:
            wanted = have - 1
    return min(max(wanted, base), ceiling)


def settle_demand(
    inventory: Inventory,
    carried: Carried,
    usage: Mapping[Owner, float] | None,
    drain_until: datetime,
) -> Demand:
    """Trim machines holding too many slices, revive or ask for more for those holding too few."""
    demand = Demand()
    usage = usage or {}
    trim_to: dict[Owner, int] = {}
    for pool, members in inventory.members.items():
        policy = inventory.policies[pool]
        kept_count = carried.kept_count[pool]
        for machine in members:
            have = kept_count.get(machine.name, 0)
            base = policy.slices_per_machine * machine.weight
            owner = (machine.name, pool)
            utilization = usage.get(owner) if usage else None
            if have == base and utilization is None:
                continue  # the common case on a re-plan: nothing to change
            ceiling = policy.growth_ceiling * machine.weight
            target = target_count(have, base, ceiling, utilization)
            if have > target:
                trim_to[owner] = target
            elif have < target:
                _top_up(demand, carried, owner, have=have, base=base, target=target)
    if trim_to:
        demand.trimmed = _trim(carried.kept, trim_to, inventory, drain_until)
    return demand


def _trim(
    kept: list[Slice], trim_to: dict[Owner, int], inventory: Inventory, drain_until: datetime
) -> list[Slice]:
    """Drain each over-served machine's highest slices.

    ``kept`` is in canonical order, so each machine's first ``trim_to`` slices stay:
    under lowest-first packing those are its oldest.
    """
    trimmed = []
    seen: dict[Owner, int] = {}
    for slice_ in kept:
        owner = (slice_.machine, inventory.ips[slice_.ip].pool)
        if owner in trim_to:
            seen[owner] = seen.get(owner, 0) + 1
            if seen[owner] > trim_to[owner]:
                trimmed.append(start_draining(slice_, drain_until))
    return trimmed


def _top_up(
    demand: Demand, carried: Carried, owner: Owner, *, have: int, base: int, target: int
) -> None:
    """Revive the machine's own draining slices first (no new ports), then ask for the rest."""
    revivable = carried.revivable_by_owner.get(owner, [])
    revived = [revive(slice_) for slice_ in revivable[: target - have]]
    demand.revived.extend(revived)
    holding = have + len(revived)
    base_missing = max(0, base - holding)
    growth = target - holding - base_missing
    if base_missing or growth:
        demand.wants.append(Want(machine=owner[0], pool=owner[1], base=base_missing, growth=growth))
