"""Capacity maths and the shortfall message operators read."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from allocator import (
    USABLE_PORTS,
    CapacityError,
    EgressIP,
    Machine,
    PoolPolicy,
    PortRange,
    Shortfall,
    Slice,
    headroom,
    headroom_of_counts,
    plan,
)
from allocator.capacity import ips_needed, slots_per_ip, typical_usable
from tests.allocator.strategies import (
    EXAMPLES,
    Stage,
    Story,
    egress_ips,
    machine_pools,
    policies,
    stories,
)


def shortfall(machines: int, ips: int, freed: int = 0) -> Shortfall:
    return Shortfall(
        pool="fra1/warp/DE",
        machines_unserved=tuple(f"m{n}" for n in range(machines)),
        slices_missing=machines,
        slots_per_ip=31,
        ips_needed=ips,
        slots_freed_by_drains=freed,
    )


def test_it_reads_like_cloud_nat_in_the_singular() -> None:
    assert str(shortfall(1, 1)) == (
        "pool 'fra1/warp/DE': 1 machine left without slices (m0); "
        "you need at least 1 more IP address"
    )


def test_it_names_ten_machines_and_counts_the_rest() -> None:
    text = str(shortfall(12, 2))
    assert (
        "12 machines left without slices (m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, and 2 more)"
        in text
    )
    assert text.endswith("you need at least 2 more IP addresses")


def test_it_mentions_slots_that_drains_will_free() -> None:
    assert str(shortfall(1, 1, freed=1)).endswith("(1 slot free up as slices drain)")


def test_it_puts_one_line_per_pool_in_the_error() -> None:
    error = CapacityError([shortfall(1, 1), shortfall(2, 1)])
    assert str(error).count("\n") == 1
    assert error.shortfalls[1].slices_missing == 2


def test_it_rounds_ips_needed_up() -> None:
    assert ips_needed(1, 31) == 1
    assert ips_needed(31, 31) == 1
    assert ips_needed(32, 31) == 2


def test_it_counts_slots_per_ip_on_the_grid() -> None:
    assert slots_per_ip(USABLE_PORTS, 2048) == 31
    assert slots_per_ip(PortRange(1024, 4095), 2048) == 1
    assert slots_per_ip(PortRange(1024, 2047), 2048) == 0


def test_it_takes_the_most_common_usable_range_as_typical() -> None:
    narrow = PortRange(1024, 9999)
    ips = [
        EgressIP("10.0.0.1", "p", narrow),
        EgressIP("10.0.0.2", "p", narrow),
        EgressIP("10.0.0.3", "p"),
    ]
    assert typical_usable(ips) == narrow
    assert typical_usable(ips[1:]) == USABLE_PORTS  # a tie: the widest wins
    assert typical_usable([]) == USABLE_PORTS


# --- headroom: the planner's scrape-time figures, held to what planning does ----------

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    ips=st.integers(1, 5).flatmap(egress_ips),
    policy=policies(),
    members=st.lists(st.tuples(machine_pools(), st.integers(1, 3)), max_size=30),
)
def test_headroom_agrees_with_a_plan_and_with_its_shortfall(
    ips: list[EgressIP],
    policy: dict[str, PoolPolicy],
    members: list[tuple[frozenset[str], int]],
) -> None:
    machines = [Machine(f"m{n}", pools, weight) for n, (pools, weight) in enumerate(members)]
    try:
        result = plan(ips=ips, machines=machines, policies=policy, now=NOW)
    except CapacityError as error:
        # Nothing is placed yet: the free slots are the empty IPs', and the
        # IPs needed are exactly what the planner's refusal says.
        room = headroom(ips=ips, machines=machines, slices=(), policies=policy)
        for short in error.shortfalls:
            assert room[short.pool].ips_needed == short.ips_needed
            assert room[short.pool].slots_per_ip == short.slots_per_ip
        short_pools = {short.pool for short in error.shortfalls}
        assert all(room[p].ips_needed == 0 for p in room if p not in short_pools)
        return
    room = headroom(ips=ips, machines=machines, slices=result.slices, policies=policy)
    for pool, capacity in result.capacity.items():
        assert room[pool].slots_free == capacity.slots_free
        assert room[pool].slots_total == capacity.slots_total
        assert room[pool].slices_missing == 0 and room[pool].ips_needed == 0


def test_headroom_counts_weights_and_reserved_ports() -> None:
    pool = "fra1/warp/DE"
    # 2048-10239 holds four 2,048-port slots; a reserved port spoils one of them.
    ips = [EgressIP("192.0.2.1", pool, PortRange(2048, 10239), frozenset({5000}))]
    machines = [Machine("a", frozenset({pool}), weight=2), Machine("b", frozenset({pool}))]
    policy = {pool: PoolPolicy(slice_size=2048)}
    room = headroom(ips=ips, machines=machines, slices=(), policies=policy)[pool]
    assert (room.slots_total, room.slots_free) == (3, 3)
    assert (room.machines_unserved, room.slices_missing, room.ips_needed) == (2, 3, 0)
    machines.append(Machine("c", frozenset({pool}), weight=2))
    room = headroom(ips=ips, machines=machines, slices=(), policies=policy)[pool]
    # 5 slices due, 3 free slots; an IP like this one holds 3 empty: 1 more IP.
    assert (room.slices_missing, room.ips_needed) == (5, 1)


# --- headroom from counts: what the planner's pages compute in the database ---------


def merged_runs(slices: list[Slice]) -> dict[str, list[tuple[int, int]]]:
    """Per IP, its slices' port runs with touching runs joined: what the database
    returns (gaps and islands), not the per-slice runs :func:`headroom` makes."""
    runs: dict[str, list[tuple[int, int]]] = {}
    for slice_ in sorted(slices, key=lambda s: (s.ip, s.lo)):
        ip_runs = runs.setdefault(slice_.ip, [])
        if ip_runs and slice_.lo <= ip_runs[-1][1] + 1:
            ip_runs[-1] = (ip_runs[-1][0], max(ip_runs[-1][1], slice_.hi))
        else:
            ip_runs.append((slice_.lo, slice_.hi))
    return runs


def member_counts(stage: Stage, slices: list[Slice]) -> dict[str, Counter[tuple[int, int]]]:
    """Per pool served by any machine: active members counted by (weight, slices held
    on the pool's IPs), as the database's GROUP BY counts them."""
    pool_of = {ip.address: ip.pool for ip in stage.ips}
    held = Counter((s.machine, pool_of[s.ip]) for s in slices if s.ip in pool_of)
    counts: dict[str, Counter[tuple[int, int]]] = {}
    for machine in stage.machines:
        for pool in machine.pools:
            shapes = counts.setdefault(pool, Counter())
            if machine.state == "active":
                shapes[(machine.weight, held[(machine.name, pool)])] += 1
    return counts


def live_slices(story: Story) -> list[Slice]:
    """Slices of planning the first stages, as far as capacity lets: some drain."""
    slices: list[Slice] = []
    at = NOW
    for stage in story.stages[:-1]:
        at += stage.step
        try:
            result = plan(
                ips=stage.ips,
                machines=stage.machines,
                previous=slices,
                policies=story.policies,
                now=at,
            )
        except CapacityError:
            break
        slices = list(result.slices)
    return slices


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(story=stories(length=3))
def test_headroom_of_counts_equals_headroom_of_the_slices(story: Story) -> None:
    """Slices planned for earlier inventories (draining ones, some on IPs gone or
    owned by machines gone, retired or re-weighted) counted against the last one:
    the counts give every pool's figures exactly as the objects do."""
    slices = live_slices(story)
    stage = story.stages[-1]
    expected = headroom(
        ips=stage.ips, machines=stage.machines, slices=slices, policies=story.policies
    )
    counted = headroom_of_counts(
        ips=stage.ips,
        policies=story.policies,
        taken=merged_runs(slices),
        members=member_counts(stage, slices),
    )
    assert counted == expected
    assert list(counted) == sorted(counted)


def test_headroom_of_counts_takes_merged_runs_and_counts_shapes() -> None:
    pool = "fra1/warp/DE"
    ips = [EgressIP("192.0.2.1", pool, PortRange(2048, 10239), frozenset({9000}))]
    policy = {pool: PoolPolicy(slice_size=2048)}
    # 2048-6143 held as one merged run; 8192-10239 is spoilt by port 9000: 1 slot free.
    room = headroom_of_counts(
        ips=ips,
        policies=policy,
        taken={"192.0.2.1": [(2048, 6143)]},
        members={pool: {(1, 1): 2, (2, 0): 1, (1, 3): 1}, "fra1/other/DE": {}},
    )
    assert (room[pool].slots_total, room[pool].slots_free) == (3, 1)
    # Two machines hold their one, one of weight 2 lacks 2, one holds more than due.
    assert (room[pool].machines_unserved, room[pool].slices_missing) == (1, 2)
    assert room[pool].ips_needed == 1  # 1 more slice than free slots; 3 per IP like this
    assert room["fra1/other/DE"].slots_total == 0  # served by no active machine, no IP
