"""The allocation rules of docs/design.md as checks on one ``plan`` call.

Written from the rules, not from the allocator's code: the checks recompute
what they need by brute force (walk every grid slot, compare every pair) so a
bug in the allocator's shortcuts cannot hide itself. The property tests and
the state machine both call :func:`check_plan` and :func:`check_shortfall`.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TypeVar

from allocator import (
    USABLE_PORTS,
    CapacityError,
    EgressIP,
    Machine,
    Plan,
    PoolPolicy,
    PortRange,
    Slice,
    plan,
)

HOT, COLD = 0.8, 0.2
T = TypeVar("T")


@dataclass(frozen=True)
class Inputs:
    """The arguments of one ``plan`` call, kept so checks can look at them."""

    ips: tuple[EgressIP, ...]
    machines: tuple[Machine, ...]
    previous: tuple[Slice, ...] = ()
    policies: Mapping[str, PoolPolicy] = field(default_factory=dict)
    now: datetime = datetime(2025, 1, 1, 12, 0)
    drain_for: timedelta = timedelta(hours=1)
    usage: Mapping[tuple[str, str], float] | None = None

    def plan(self) -> Plan:
        return plan(
            ips=self.ips,
            machines=self.machines,
            previous=self.previous,
            policies=self.policies,
            now=self.now,
            drain_for=self.drain_for,
            usage=self.usage,
        )

    def shuffled(self, rng: random.Random) -> Inputs:
        """The same inputs in another order (and as other container types)."""

        def mixed(items: Iterable[T]) -> list[T]:
            listed = list(items)
            rng.shuffle(listed)
            return listed

        return replace(
            self,
            ips=tuple(mixed(self.ips)),
            machines=tuple(mixed(self.machines)),
            previous=tuple(mixed(self.previous)),
            policies=dict(mixed(self.policies.items())),
            usage=None if self.usage is None else dict(mixed(self.usage.items())),
        )

    # Facts about the inputs, from the rules' point of view.

    def policy(self, pool: str) -> PoolPolicy:
        return self.policies.get(pool, PoolPolicy())

    def ip(self, address: str) -> EgressIP | None:
        return next((ip for ip in self.ips if ip.address == address), None)

    def pool_of(self, slice_: Slice) -> str:
        ip = self.ip(slice_.ip)
        assert ip is not None, f"{slice_} is on an unknown IP"
        return ip.pool

    def active_machines(self) -> list[Machine]:
        return [machine for machine in self.machines if machine.state == "active"]

    def base(self, machine: Machine, pool: str) -> int:
        return self.policy(pool).slices_per_machine * machine.weight

    def ceiling(self, machine: Machine, pool: str) -> int:
        policy = self.policy(pool)
        most = policy.max_slices_per_machine or policy.slices_per_machine
        return most * machine.weight

    def fits_grid(self, slice_: Slice) -> bool:
        """Whether a slice is a whole slot of its IP's grid, inside usable, clear of reserved."""
        ip = self.ip(slice_.ip)
        if ip is None:
            return False
        size = self.policy(ip.pool).slice_size
        origin = 0 if size & (size - 1) == 0 else ip.usable.lo
        return (
            slice_.size == size
            and (slice_.lo - origin) % size == 0
            and ip.usable.lo <= slice_.lo
            and slice_.hi <= ip.usable.hi
            and not any(slice_.lo <= port <= slice_.hi for port in ip.reserved)
        )

    def keepable(self, old: Slice) -> bool:
        ip = self.ip(old.ip)
        machine = next((m for m in self.machines if m.name == old.machine), None)
        return (
            old.state == "active"
            and ip is not None
            and ip.state == "active"
            and machine is not None
            and machine.state == "active"
            and ip.pool in machine.pools
            and self.fits_grid(old)
        )


def ip_order(slice_: Slice) -> tuple[int, int]:
    return int(ipaddress.ip_address(slice_.ip)), slice_.lo


def place(slice_: Slice) -> tuple[str, int, int, str]:
    return slice_.ip, slice_.lo, slice_.hi, slice_.machine


def check_plan(inputs: Inputs, result: Plan) -> None:
    check_no_overlap(inputs, result)
    check_served(inputs, result)
    check_aligned(inputs, result)
    check_stable(inputs, result)
    check_make_before_break(inputs, result)
    check_balanced_additions(inputs, result)
    check_diff_partition(inputs, result)
    check_capacity_report(inputs, result)
    check_deterministic(inputs, result)


def check_no_overlap(inputs: Inputs, result: Plan) -> None:
    """Rule 1: live slices of one IP never share a port, stay in usable, skip reserved."""
    by_ip: dict[str, list[Slice]] = defaultdict(list)
    for slice_ in result.slices:
        by_ip[slice_.ip].append(slice_)
    for address, slices in by_ip.items():
        ip = inputs.ip(address)
        assert ip is not None, f"plan has slices on unknown IP {address}"
        for index, one in enumerate(slices):
            assert ip.usable.lo <= one.lo and one.hi <= ip.usable.hi, f"{one} outside {ip.usable}"
            assert not any(one.lo <= port <= one.hi for port in ip.reserved), f"{one} hits reserved"
            for other in slices[index + 1 :]:
                assert one.hi < other.lo or other.hi < one.lo, f"{one} overlaps {other}"


def _actives(result: Plan, inputs: Inputs, machine: str, pool: str) -> list[Slice]:
    return [
        slice_
        for slice_ in result.slices
        if slice_.state == "active" and slice_.machine == machine and inputs.pool_of(slice_) == pool
    ]


def expected_count(inputs: Inputs, machine: Machine, pool: str, have: int) -> int:
    """Rules 2 and 8: base demand, clamped growth one slice at a time."""
    wanted = have
    utilization = (inputs.usage or {}).get((machine.name, pool))
    if utilization is not None and utilization > HOT:
        wanted = have + 1
    elif utilization is not None and utilization < COLD:
        wanted = have - 1
    return min(max(wanted, inputs.base(machine, pool)), inputs.ceiling(machine, pool))


def check_served(inputs: Inputs, result: Plan) -> None:
    """Rules 2 and 8: every active machine holds its slices in every pool, of the pool's size;
    nothing active belongs to anyone else; growth only fails where the pool is full."""
    owners = set()
    for machine in inputs.active_machines():
        for pool in machine.pools:
            owners.add((machine.name, pool))
            if inputs.policy(pool).aligned:
                check_served_aligned(inputs, result, machine, pool)
                continue
            actives = _actives(result, inputs, machine.name, pool)
            size = inputs.policy(pool).slice_size
            assert all(slice_.size == size for slice_ in actives), f"{machine.name} wrong size"
            have = sum(
                1
                for old in inputs.previous
                if old.machine == machine.name
                and inputs.keepable(old)
                and inputs.pool_of(old) == pool
            )
            expected = expected_count(inputs, machine, pool, have)
            if len(actives) == expected:
                continue
            assert len(actives) == expected - 1, (
                f"{machine.name}/{pool}: {len(actives)} != {expected}"
            )
            assert (machine.name, pool) in result.growth_denied
            assert result.capacity[pool].slots_free == 0
            assert len(actives) >= inputs.base(machine, pool)
    for slice_ in result.slices:
        if slice_.state == "active":
            assert (slice_.machine, inputs.pool_of(slice_)) in owners, f"{slice_} has no owner"


def check_aligned(inputs: Inputs, result: Plan) -> None:
    """Rule 3: power-of-two slices start at a multiple of their size; others pack from usable.lo."""
    for slice_ in result.slices:
        if slice_.state == "active":
            assert inputs.fits_grid(slice_), f"{slice_} is not a slot of its IP's grid"


def check_stable(inputs: Inputs, result: Plan) -> None:
    """Rule 4: a machine that stays keeps its ports; if it wants fewer, its highest drain."""
    now_active = {place(slice_) for slice_ in result.slices if slice_.state == "active"}
    for machine in inputs.active_machines():
        for pool in machine.pools:
            if inputs.policy(pool).aligned:
                check_stable_aligned(inputs, result, machine, pool)
                continue
            kept_before = sorted(
                (
                    old
                    for old in inputs.previous
                    if old.machine == machine.name
                    and inputs.keepable(old)
                    and inputs.pool_of(old) == pool
                ),
                key=ip_order,
            )
            ours = {place(slice_) for slice_ in _actives(result, inputs, machine.name, pool)}
            if len(ours) >= len(kept_before):
                assert {place(old) for old in kept_before} <= ours, f"{machine.name} renumbered"
            else:
                assert ours == {place(old) for old in kept_before[: len(ours)]}, (
                    f"{machine.name}/{pool} gave back other than its highest slices"
                )
    for old in inputs.previous:
        if old.state == "active" and place(old) in now_active:
            continue
        if inputs.ip(old.ip) is not None and inputs.policy(inputs.pool_of(old)).aligned:
            continue  # a range that grows may move; check_stable_aligned holds the rest
        assert not inputs.keepable(old) or _wants_fewer(inputs, result, old), f"{old} lost"


def _wants_fewer(inputs: Inputs, result: Plan, old: Slice) -> bool:
    pool = inputs.pool_of(old)
    mine = [o for o in inputs.previous if o.machine == old.machine and inputs.keepable(o)]
    mine = [o for o in mine if inputs.pool_of(o) == pool]
    return len(_actives(result, inputs, old.machine, pool)) < len(mine)


def check_make_before_break(inputs: Inputs, result: Plan) -> None:
    """Rule 5: leaving slices drain with their ports until drain_until; only then are freed."""
    new = {place(slice_): slice_ for slice_ in result.slices}
    freed = {place(slice_) for slice_ in result.diff.freed}
    for old in inputs.previous:
        ip = inputs.ip(old.ip)
        expired = (
            old.state == "draining"
            and old.drain_until is not None
            and old.drain_until <= inputs.now
        )
        if ip is None or expired:
            assert place(old) in freed, f"{old} should be freed"
            # Once free, the ports may go to anyone: even, anew, to the same machine.
            again = new.get(place(old))
            assert again is None or again in result.diff.added, f"{old} kept after its drain"
            continue
        assert place(old) in new, f"{old} vanished before its drain ended"
        now = new[place(old)]
        if now.state == "draining":
            until = old.drain_until if old.state == "draining" and old.drain_until else None
            assert now.drain_until == (until or inputs.now + inputs.drain_for), f"{now} drain time"
        elif old.state == "draining":
            assert inputs.keepable(replace(old, state="active")), f"{now} revived for nobody"
    previous = {place(old) for old in inputs.previous}
    for slice_ in result.slices:
        if place(slice_) in previous:
            continue
        ip = inputs.ip(slice_.ip)
        assert slice_.state == "active", f"{slice_} new yet draining"
        assert ip is not None and ip.state == "active", f"{slice_} new on a draining IP"


def free_slots(inputs: Inputs, ip: EgressIP, live: Iterable[Slice]) -> int:
    """Brute force: grid slots of ``ip`` clear of reserved ports and of every live slice."""
    size = inputs.policy(ip.pool).slice_size
    origin = 0 if size & (size - 1) == 0 else ip.usable.lo
    first = origin + -(-(ip.usable.lo - origin) // size) * size
    taken = [(slice_.lo, slice_.hi) for slice_ in live if slice_.ip == ip.address]
    taken += [(port, port) for port in ip.reserved]
    return sum(
        1
        for start in range(first, ip.usable.hi - size + 2, size)
        if all(hi < start or start + size - 1 < lo for lo, hi in taken)
    )


def check_balanced_additions(inputs: Inputs, result: Plan) -> None:
    """Rule 2, spread: a new slice went to a least-loaded IP with room. So an IP that got a
    new slice carries at most one more active slice than any IP of its pool with room left."""
    load = Counter(slice_.ip for slice_ in result.slices if slice_.state == "active")
    with_room = [
        ip for ip in inputs.ips if ip.state == "active" and free_slots(inputs, ip, result.slices)
    ]
    for address in {slice_.ip for slice_ in result.diff.added}:
        pool = inputs.pool_of(next(s for s in result.diff.added if s.ip == address))
        if inputs.policy(pool).aligned:
            continue  # every range is on every IP: nothing to spread
        for other in with_room:
            if other.pool == pool:
                assert load[address] - 1 <= load[other.address], (
                    f"{address} got a slice with {load[address] - 1} while "
                    f"{other.address} had room and only {load[other.address]}"
                )


def check_diff_partition(inputs: Inputs, result: Plan) -> None:
    diff = result.diff
    parts = [*diff.added, *diff.revived, *diff.kept, *diff.draining, *diff.still_draining]
    assert sorted(parts, key=ip_order) == list(result.slices)
    assert list(result.slices) == sorted(result.slices, key=ip_order)
    assert all(s.state == "active" for s in [*diff.added, *diff.revived, *diff.kept])
    assert all(s.state == "draining" for s in [*diff.draining, *diff.still_draining])
    counted = len(parts) + len(diff.freed)
    assert counted == len(inputs.previous) + len(diff.added), "a slice was lost or doubled"
    summary = diff.summary()
    assert summary["added"] == len(diff.added) and summary["freed"] == len(diff.freed)


def check_capacity_report(inputs: Inputs, result: Plan) -> None:
    for pool, report in result.capacity.items():
        members = [ip for ip in inputs.ips if ip.pool == pool]
        active_ips = [ip for ip in members if ip.state == "active"]
        in_pool = [s for s in result.slices if inputs.pool_of(s) == pool]
        assert report.ips == len(members) and report.ips_active == len(active_ips)
        assert report.slots_free == sum(free_slots(inputs, ip, result.slices) for ip in active_ips)
        assert report.slots_total == sum(free_slots(inputs, ip, ()) for ip in active_ips)
        assert report.slices_active == sum(1 for s in in_pool if s.state == "active")
        assert report.slices_draining == sum(1 for s in in_pool if s.state == "draining")
        served = {s.machine for s in in_pool if s.state == "active"}
        assert report.machines_served == len(served)


def check_deterministic(inputs: Inputs, result: Plan) -> None:
    """Rule 7: the same inputs in another order give the same plan."""
    rng = random.Random(len(inputs.previous) * 7919 + len(inputs.machines))
    assert inputs.shuffled(rng).plan() == result


def typical_usable(inputs: Inputs, pool: str) -> PortRange:
    counts = Counter(ip.usable for ip in inputs.ips if ip.pool == pool)
    if not counts:
        return USABLE_PORTS
    return max(counts, key=lambda usable: (counts[usable], usable.size, -usable.lo))


def with_more_ips(inputs: Inputs, more: Mapping[str, int]) -> Inputs:
    """The same inputs with ``more[pool]`` fresh IPs of the pool's typical shape."""
    fresh = [
        EgressIP(f"198.18.{index}.{n + 1}", pool, usable=typical_usable(inputs, pool))
        for index, (pool, count) in enumerate(sorted(more.items()))
        for n in range(count)
    ]
    return replace(inputs, ips=inputs.ips + tuple(fresh))


def check_shortfall(inputs: Inputs, error: CapacityError) -> None:
    """Rule 6: the shortfall is real and its IP count exact for IPs of the typical shape:
    that many more IPs per short pool serve everyone, one fewer does not."""
    assert error.shortfalls, "a CapacityError must name at least one pool"
    active = {machine.name: machine for machine in inputs.active_machines()}
    aligned = set()
    for shortfall in error.shortfalls:
        assert shortfall.machines_unserved
        assert str(shortfall) in str(error)
        for name in shortfall.machines_unserved:
            assert shortfall.pool in active[name].pools
        if inputs.policy(shortfall.pool).aligned:
            # Past its first IP, more IPs do not help an aligned pool: it says so.
            aligned.add(shortfall.pool)
            if _active_ips(inputs, shortfall.pool):
                assert shortfall.aligned and shortfall.ips_needed == 0
                assert "more IP addresses do not help" in str(shortfall)
            else:
                assert not shortfall.aligned and shortfall.ips_needed == 1
        else:
            assert shortfall.ips_needed >= 1
    needed = {s.pool: s.ips_needed for s in error.shortfalls if s.pool not in aligned}
    _plan_short_only_in(with_more_ips(inputs, needed), aligned)
    for pool in needed:
        one_fewer = {**needed, pool: needed[pool] - 1}
        try:
            with_more_ips(inputs, one_fewer).plan()
        except CapacityError as still_short:
            assert pool in {shortfall.pool for shortfall in still_short.shortfalls}
        else:
            raise AssertionError(f"pool {pool!r} needed fewer IPs than {needed[pool]}")


def _plan_short_only_in(inputs: Inputs, pools: set[str]) -> None:
    """Plan, which may fail only for ``pools`` (aligned ones, which IPs cannot help)."""
    try:
        inputs.plan()
    except CapacityError as error:
        assert {shortfall.pool for shortfall in error.shortfalls} <= pools, str(error)


# Aligned pools: one range per machine, the same ports on every active IP of the pool.


def _active_ips(inputs: Inputs, pool: str) -> list[EgressIP]:
    return [ip for ip in inputs.ips if ip.pool == pool and ip.state == "active"]


def _intact_range(inputs: Inputs, machine: str, pool: str) -> list[int] | None:
    """The slot starts of the machine's previous range if it was whole on every IP
    that is active now (so it needs nothing filled in), else None."""
    ips = _active_ips(inputs, pool)
    held = [
        old
        for old in inputs.previous
        if old.machine == machine and inputs.keepable(old) and inputs.pool_of(old) == pool
    ]
    starts = sorted({old.lo for old in held})
    size = inputs.policy(pool).slice_size
    if not starts or starts != list(range(starts[0], starts[-1] + 1, size)):
        return None
    for ip in ips:
        if sorted(old.lo for old in held if old.ip == ip.address) != starts:
            return None
    return starts


def _range_of(inputs: Inputs, result: Plan, machine: str, pool: str) -> list[int]:
    """The machine's slot starts now, after checking they form one range on every active IP."""
    actives = _actives(result, inputs, machine, pool)
    size = inputs.policy(pool).slice_size
    starts = sorted({slice_.lo for slice_ in actives})
    if starts:
        assert starts == list(range(starts[0], starts[-1] + 1, size)), f"{machine}: {starts}"
    for ip in _active_ips(inputs, pool):
        on_ip = sorted(slice_.lo for slice_ in actives if slice_.ip == ip.address)
        assert on_ip == starts, f"{machine}/{pool}: {ip.address} holds {on_ip}, not {starts}"
    active_ips = {ip.address for ip in _active_ips(inputs, pool)}
    assert all(s.ip in active_ips for s in actives), f"{machine} holds a draining IP"
    return starts


def _common_free_run(inputs: Inputs, result: Plan, pool: str, slots: int) -> bool:
    """Brute force: whether ``slots`` adjacent grid slots are free on every active IP."""
    ips = _active_ips(inputs, pool)
    size = inputs.policy(pool).slice_size
    free_starts = None
    for ip in ips:
        origin = 0 if size & (size - 1) == 0 else ip.usable.lo
        first = origin + -(-(ip.usable.lo - origin) // size) * size
        taken = [(s.lo, s.hi) for s in result.slices if s.ip == ip.address]
        taken += [(port, port) for port in ip.reserved]
        here = {
            start
            for start in range(first, ip.usable.hi - size + 2, size)
            if all(hi < start or start + size - 1 < lo for lo, hi in taken)
        }
        free_starts = here if free_starts is None else free_starts & here
    return any(
        all(start + n * size in (free_starts or set()) for n in range(slots))
        for start in free_starts or set()
    )


def check_served_aligned(inputs: Inputs, result: Plan, machine: Machine, pool: str) -> None:
    """Every active member holds one range of base to ceiling slots on every active IP;
    a range that was whole follows usage, and growth fails only where no range that
    wide is free on every IP."""
    width = len(_range_of(inputs, result, machine.name, pool))
    assert inputs.base(machine, pool) <= width <= inputs.ceiling(machine, pool), (
        f"{machine.name}/{pool}: range of {width} slots"
    )
    before = _intact_range(inputs, machine.name, pool)
    if before is None:
        return
    expected = expected_count(inputs, machine, pool, len(before))
    if width != expected:
        assert width == len(before) < expected, f"{machine.name}/{pool}: {width} != {expected}"
        assert (machine.name, pool) in result.growth_denied
        assert not _common_free_run(inputs, result, pool, expected), "growth denied with room"


def check_stable_aligned(inputs: Inputs, result: Plan, machine: Machine, pool: str) -> None:
    """A whole range stays put; one that shrinks keeps its lowest slots; one that
    grows either keeps every slot (widened) or moves whole (its old slots drain)."""
    before = _intact_range(inputs, machine.name, pool)
    if before is None:
        return
    now = _range_of(inputs, result, machine.name, pool)
    if len(now) <= len(before):
        assert now == before[: len(now)], f"{machine.name}/{pool} renumbered: {before} -> {now}"
    else:
        assert set(before) <= set(now) or not set(before) & set(now), (
            f"{machine.name}/{pool} half moved: {before} -> {now}"
        )
