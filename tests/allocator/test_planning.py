"""Each allocation rule on a concrete, hand-checked example."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta

import pytest

from allocator import (
    USABLE_PORTS,
    CapacityError,
    EgressIP,
    Machine,
    Plan,
    PolicyError,
    PoolPolicy,
    PortRange,
    Slice,
    plan,
)

NOW = datetime(2025, 3, 1, 9, 0)
HOUR = timedelta(hours=1)
POOL = "fra1/warp/DE"
WARP = frozenset({POOL})


def ips(
    count: int,
    pool: str = POOL,
    usable: PortRange = USABLE_PORTS,
    reserved: frozenset[int] = frozenset(),
) -> list[EgressIP]:
    return [EgressIP(f"10.0.0.{n + 1}", pool, usable, reserved) for n in range(count)]


def machines(count: int, pools: frozenset[str] = WARP, prefix: str = "m") -> list[Machine]:
    return [Machine(f"{prefix}{n:02d}", pools) for n in range(count)]


def ports_of(result: Plan, machine: str) -> set[tuple[str, int, int, str]]:
    return {(s.ip, s.lo, s.hi, s.state) for s in result.slices if s.machine == machine}


def active(slices: Iterable[Slice]) -> list[Slice]:
    return [s for s in slices if s.state == "active"]


# Served, spread, aligned.


def test_it_gives_each_machine_one_aligned_2048_port_slice_by_default() -> None:
    result = plan(ips=ips(1), machines=machines(2), now=NOW)
    assert result.slices == (
        Slice("10.0.0.1", 2048, 4095, "m00"),
        Slice("10.0.0.1", 4096, 6143, "m01"),
    )
    assert result.diff.summary() == {
        "added": 2,
        "revived": 0,
        "draining": 0,
        "freed": 0,
        "kept": 0,
        "still_draining": 0,
    }


def test_it_fits_31_machines_per_ip_at_2048_ports_and_no_more() -> None:
    full = plan(ips=ips(1), machines=machines(31), now=NOW)
    assert len(full.slices) == 31
    assert full.slices[-1] == Slice("10.0.0.1", 63488, 65535, "m30")
    capacity = full.capacity[POOL]
    assert (capacity.slots_total, capacity.slots_free, capacity.machines_served) == (31, 0, 31)
    ports = sum(s.size for s in full.slices)
    assert ports / 64512 == pytest.approx(0.984, abs=0.001)
    with pytest.raises(CapacityError):
        plan(ips=ips(1), machines=machines(32), now=NOW)


def test_it_spreads_machines_evenly_over_the_ips_of_a_pool() -> None:
    result = plan(ips=ips(3), machines=machines(7), now=NOW)
    assert sorted(Counter(s.ip for s in result.slices).values()) == [2, 2, 3]


def test_it_serves_weight_times_slices_per_machine_in_every_pool() -> None:
    pools = {POOL: PoolPolicy(slices_per_machine=2), "ams1/warp/NL": PoolPolicy(slice_size=4096)}
    heavy = Machine("heavy", frozenset(pools), weight=3)
    result = plan(
        ips=[*ips(2), EgressIP("10.9.0.1", "ams1/warp/NL")],
        machines=[heavy],
        policies=pools,
        now=NOW,
    )
    in_fra = [s for s in result.slices if s.ip.startswith("10.0.")]
    in_ams = [s for s in result.slices if s.ip == "10.9.0.1"]
    assert len(in_fra) == 6 and {s.size for s in in_fra} == {2048}
    assert len(in_ams) == 3 and {s.size for s in in_ams} == {4096}
    assert all(s.lo % 4096 == 0 for s in in_ams)


def test_it_uses_the_default_policy_for_pools_without_one() -> None:
    result = plan(ips=ips(1), machines=machines(1), policies={"other": PoolPolicy(512)}, now=NOW)
    assert result.slices[0].size == 2048


def test_it_packs_sizes_that_are_not_powers_of_two_from_usable_lo() -> None:
    usable = PortRange(1500, 9999)
    result = plan(
        ips=ips(1, usable=usable),
        machines=machines(2),
        policies={POOL: PoolPolicy(slice_size=3000)},
        now=NOW,
    )
    assert [(s.lo, s.hi) for s in result.slices] == [(1500, 4499), (4500, 7499)]


def test_it_skips_reserved_ports() -> None:
    reserved = frozenset({2100, 8000})  # inside the first and the third slot
    result = plan(ips=ips(1, reserved=reserved), machines=machines(3), now=NOW)
    assert [s.lo for s in result.slices] == [4096, 8192, 10240]


def test_it_sorts_the_plan_by_ip_numerically_then_port() -> None:
    many = [EgressIP(f"10.0.0.{n}", POOL) for n in (10, 9, 100)]
    result = plan(ips=many, machines=machines(3), now=NOW)
    assert [s.ip for s in result.slices] == ["10.0.0.9", "10.0.0.10", "10.0.0.100"]


# Stable.


def test_it_keeps_everyones_ports_when_a_machine_joins_or_leaves() -> None:
    first = plan(ips=ips(2), machines=machines(10), now=NOW)
    joined = plan(ips=ips(2), machines=machines(11), previous=first.slices, now=NOW)
    assert set(first.slices) <= set(joined.slices)
    assert len(joined.diff.added) == 1 and len(joined.diff.kept) == 10
    left = plan(ips=ips(2), machines=machines(10)[1:], previous=first.slices, now=NOW)
    assert all(s in left.slices for s in first.slices if s.machine != "m00")
    assert left.diff.added == () and len(left.diff.draining) == 1


def test_it_keeps_ports_when_ips_are_added() -> None:
    first = plan(ips=ips(1), machines=machines(10), now=NOW)
    grown = plan(ips=ips(3), machines=machines(12), previous=first.slices, now=NOW)
    assert set(first.slices) <= set(grown.slices)
    assert {s.ip for s in grown.diff.added} == {"10.0.0.2", "10.0.0.3"}


def test_it_plans_nothing_new_when_nothing_changed() -> None:
    first = plan(ips=ips(2), machines=machines(5), now=NOW)
    again = plan(ips=ips(2), machines=machines(5), previous=first.slices, now=NOW + HOUR)
    assert again.slices == first.slices
    assert again.diff.machines_touched() == frozenset()


# Make-before-break.


def test_it_drains_a_leaving_machine_then_frees_its_ports() -> None:
    first = plan(ips=ips(1), machines=machines(2), now=NOW)
    gone = plan(ips=ips(1), machines=machines(1), previous=first.slices, now=NOW)
    draining = Slice("10.0.0.1", 4096, 6143, "m01", "draining", NOW + HOUR)
    assert gone.diff.draining == (draining,)
    assert draining in gone.slices
    newcomer = [Machine("new", WARP)]
    before_end = plan(
        ips=ips(1), machines=machines(1) + newcomer, previous=gone.slices, now=NOW + HOUR / 2
    )
    assert ports_of(before_end, "new") == {("10.0.0.1", 6144, 8191, "active")}
    assert draining in before_end.diff.still_draining
    after_end = plan(ips=ips(1), machines=machines(1), previous=gone.slices, now=NOW + HOUR)
    assert after_end.diff.freed == (draining,)
    assert draining not in after_end.slices


def test_it_keeps_a_drain_deadline_once_set() -> None:
    until = NOW + timedelta(minutes=5)
    previous = [Slice("10.0.0.1", 2048, 4095, "old", "draining", until)]
    result = plan(ips=ips(1), machines=[], previous=previous, now=NOW, drain_for=HOUR)
    assert result.slices == (previous[0],)


def test_it_sets_a_deadline_on_a_draining_slice_that_has_none() -> None:
    previous = [Slice("10.0.0.1", 2048, 4095, "old", "draining")]
    result = plan(ips=ips(1), machines=[], previous=previous, now=NOW)
    assert result.slices[0].drain_until == NOW + HOUR


@pytest.mark.parametrize("state", ["draining", "retired"])
def test_it_drains_the_slices_of_a_machine_that_stops_being_active(state: str) -> None:
    first = plan(ips=ips(1), machines=machines(1), now=NOW)
    stopping = [Machine("m00", WARP, state=state)]
    result = plan(ips=ips(1), machines=stopping, previous=first.slices, now=NOW)
    assert [s.state for s in result.slices] == ["draining"]
    assert result.capacity[POOL].machines_served == 0


def test_it_drains_slices_of_a_pool_the_machine_no_longer_serves() -> None:
    both = frozenset({POOL, "ams1/warp/NL"})
    two_pools = [*ips(1), EgressIP("10.9.0.1", "ams1/warp/NL")]
    first = plan(ips=two_pools, machines=[Machine("m", both)], now=NOW)
    result = plan(ips=two_pools, machines=[Machine("m", WARP)], previous=first.slices, now=NOW)
    assert {(s.ip, s.state) for s in result.slices} == {
        ("10.0.0.1", "active"),
        ("10.9.0.1", "draining"),
    }


def test_it_moves_machines_off_a_draining_ip_before_breaking_them() -> None:
    first = plan(ips=ips(1), machines=machines(2), now=NOW)
    draining_ip = EgressIP("10.0.0.1", POOL, state="draining")
    result = plan(
        ips=[draining_ip, EgressIP("10.0.0.2", POOL)],
        machines=machines(2),
        previous=first.slices,
        now=NOW,
    )
    assert ports_of(result, "m00") == {
        ("10.0.0.1", 2048, 4095, "draining"),
        ("10.0.0.2", 2048, 4095, "active"),
    }
    assert {s.ip for s in result.diff.added} == {"10.0.0.2"}


def test_it_frees_the_slices_of_an_ip_that_is_gone_at_once() -> None:
    first = plan(ips=ips(2), machines=machines(2), now=NOW)
    result = plan(ips=ips(2)[1:], machines=machines(2), previous=first.slices, now=NOW)
    assert {s.ip for s in result.diff.freed} == {"10.0.0.1"}
    assert {s.ip for s in result.slices} == {"10.0.0.2"}


def test_it_drains_slices_that_no_longer_fit_the_pool_policy() -> None:
    first = plan(ips=ips(1), machines=machines(2), now=NOW)
    bigger = {POOL: PoolPolicy(slice_size=4096)}
    result = plan(ips=ips(1), machines=machines(2), previous=first.slices, policies=bigger, now=NOW)
    assert ports_of(result, "m00") == {
        ("10.0.0.1", 2048, 4095, "draining"),
        ("10.0.0.1", 8192, 12287, "active"),
    }
    # 4096 is on the new grid, but the slice is still 2,048 ports wide.
    assert ports_of(result, "m01") == {
        ("10.0.0.1", 4096, 6143, "draining"),
        ("10.0.0.1", 12288, 16383, "active"),
    }


def test_it_drains_the_highest_slice_when_a_machine_wants_fewer() -> None:
    heavy = [Machine("m", WARP, weight=3)]
    first = plan(ips=ips(1), machines=heavy, now=NOW)
    lighter = [Machine("m", WARP, weight=2)]
    result = plan(ips=ips(1), machines=lighter, previous=first.slices, now=NOW)
    assert [(s.lo, s.state) for s in result.slices] == [
        (2048, "active"),
        (4096, "active"),
        (6144, "draining"),
    ]


def test_it_hands_a_draining_slice_back_to_its_machine_before_it_ends() -> None:
    first = plan(ips=ips(1), machines=machines(1), now=NOW)
    paused = plan(
        ips=ips(1),
        machines=[Machine("m00", WARP, state="draining")],
        previous=first.slices,
        now=NOW,
    )
    back = plan(ips=ips(1), machines=machines(1), previous=paused.slices, now=NOW + HOUR / 2)
    assert back.slices == first.slices
    assert back.diff.revived == first.slices and back.diff.added == ()


# Growth.


def grow_policy(most: int | None = 3) -> dict[str, PoolPolicy]:
    return {POOL: PoolPolicy(slices_per_machine=1, max_slices_per_machine=most)}


def test_it_gives_a_hot_machine_one_more_slice_per_plan_up_to_the_ceiling() -> None:
    hot = {("m00", POOL): 0.95}
    result = plan(ips=ips(1), machines=machines(1), policies=grow_policy(), now=NOW)
    counts = []
    for _ in range(4):
        result = plan(
            ips=ips(1),
            machines=machines(1),
            previous=result.slices,
            policies=grow_policy(),
            usage=hot,
            now=NOW,
        )
        counts.append(len(active(result.slices)))
    assert counts == [2, 3, 3, 3]


def test_it_does_not_grow_without_a_ceiling() -> None:
    hot = {("m00", POOL): 0.95}
    first = plan(ips=ips(1), machines=machines(1), now=NOW)
    result = plan(ips=ips(1), machines=machines(1), previous=first.slices, usage=hot, now=NOW)
    assert result.slices == first.slices


def test_it_takes_a_slice_back_from_a_cold_machine_above_its_base() -> None:
    policy = grow_policy()
    grown = [Slice("10.0.0.1", lo, lo + 2047, "m00") for lo in (2048, 4096, 6144)]
    cold = {("m00", POOL): 0.1}
    result = plan(
        ips=ips(1), machines=machines(1), previous=grown, policies=policy, usage=cold, now=NOW
    )
    assert [s.lo for s in active(result.slices)] == [2048, 4096]
    assert result.diff.draining == (Slice("10.0.0.1", 6144, 8191, "m00", "draining", NOW + HOUR),)
    at_base = plan(
        ips=ips(1),
        machines=machines(1),
        previous=active(result.slices)[:1],
        policies=policy,
        usage=cold,
        now=NOW,
    )
    assert len(active(at_base.slices)) == 1


def test_it_gives_base_demand_first_and_denies_growth_when_the_pool_is_full() -> None:
    usable = PortRange(2048, 8191)  # three slots
    first = plan(ips=ips(1, usable=usable), machines=machines(2), policies=grow_policy(), now=NOW)
    hot = {("m00", POOL): 0.9, ("m01", POOL): 0.9}
    result = plan(
        ips=ips(1, usable=usable),
        machines=machines(2),
        previous=first.slices,
        policies=grow_policy(),
        usage=hot,
        now=NOW,
    )
    assert len(active(result.slices)) == 3
    assert result.growth_denied == (("m01", POOL),)
    crowded = plan(
        ips=ips(1, usable=usable),
        machines=machines(3),
        previous=first.slices,
        policies=grow_policy(),
        usage=hot,
        now=NOW,
    )
    assert sorted(s.machine for s in crowded.slices) == ["m00", "m01", "m02"]


# Whole or nothing.


def test_it_raises_like_cloud_nat_naming_machines_and_ips_needed() -> None:
    pool = "fra1/warp/DE"
    with pytest.raises(CapacityError) as caught:
        plan(ips=ips(1, pool), machines=machines(34, frozenset({pool})), now=NOW)
    assert str(caught.value) == (
        "pool 'fra1/warp/DE': 3 machines left without slices (m31, m32, m33); "
        "you need at least 1 more IP address"
    )
    (shortfall,) = caught.value.shortfalls
    assert (shortfall.slices_missing, shortfall.slots_per_ip, shortfall.ips_needed) == (3, 31, 1)


def test_it_names_every_short_pool_and_plans_nothing() -> None:
    pools = frozenset({"a", "b"})
    with pytest.raises(CapacityError) as caught:
        plan(ips=[EgressIP("10.0.0.1", "a")], machines=machines(40, pools), now=NOW)
    shortfalls = {s.pool: s for s in caught.value.shortfalls}
    assert shortfalls["a"].machines_unserved == tuple(f"m{n}" for n in range(31, 40))
    assert len(shortfalls["b"].machines_unserved) == 40
    assert shortfalls["b"].ips_needed == 2  # 40 slices, 31 per IP


def test_it_counts_the_ips_needed_in_ips_like_the_pools_own() -> None:
    small = PortRange(2048, 10239)  # four 2048-port slots
    pool_ips = [*ips(2, usable=small), EgressIP("10.0.1.1", POOL)]
    with pytest.raises(CapacityError) as caught:
        plan(ips=pool_ips, machines=machines(31 + 8 + 9), now=NOW)
    (shortfall,) = caught.value.shortfalls
    assert (shortfall.slots_per_ip, shortfall.slices_missing, shortfall.ips_needed) == (4, 9, 3)


def test_it_says_how_many_slots_free_up_when_drains_end() -> None:
    first = plan(ips=ips(1), machines=machines(31), now=NOW)
    newcomers = machines(31)[2:] + machines(3, prefix="n")
    with pytest.raises(CapacityError) as caught:
        plan(ips=ips(1), machines=newcomers, previous=first.slices, now=NOW)
    (shortfall,) = caught.value.shortfalls
    assert shortfall.machines_unserved == ("n00", "n01", "n02")  # m00, m01 still drain
    assert shortfall.slots_freed_by_drains == 2
    assert str(shortfall).endswith("(2 slots free up as slices drain)")


def test_it_counts_a_pool_with_no_ip_as_short() -> None:
    with pytest.raises(CapacityError, match="you need at least 1 more IP address"):
        plan(ips=[], machines=machines(1), now=NOW)


def test_it_grows_without_ever_raising_for_growth() -> None:
    first = plan(ips=ips(1), machines=machines(31), policies=grow_policy(), now=NOW)
    hot = {(f"m{n:02d}", POOL): 0.99 for n in range(31)}
    result = plan(
        ips=ips(1),
        machines=machines(31),
        previous=first.slices,
        policies=grow_policy(),
        usage=hot,
        now=NOW,
    )
    assert result.slices == first.slices and len(result.growth_denied) == 31


# Input errors and reports.


@pytest.mark.parametrize(
    "second",
    [Slice("10.0.0.1", 4000, 6143, "b"), Slice("10.0.0.1", 2048, 4095, "b")],
    ids=["overlapping", "same slot"],
)
def test_it_refuses_overlapping_previous_slices(second: Slice) -> None:
    previous = [Slice("10.0.0.1", 2048, 4095, "a"), second]
    with pytest.raises(ValueError, match="previous slices overlap on 10.0.0.1"):
        plan(
            ips=ips(1),
            machines=machines(1, prefix="a") + [Machine("b", WARP)],
            previous=previous,
            now=NOW,
        )


def test_it_refuses_duplicate_ips_and_machines() -> None:
    with pytest.raises(ValueError, match="IP 10.0.0.1 is listed twice"):
        plan(ips=ips(1) * 2, machines=[], now=NOW)
    with pytest.raises(ValueError, match="machine m00 is listed twice"):
        plan(ips=ips(1), machines=machines(1) * 2, now=NOW)


def test_it_refuses_a_bad_policy_and_a_negative_drain() -> None:
    with pytest.raises(PolicyError, match="slice_size=0"):
        plan(ips=ips(1), machines=[], policies={POOL: PoolPolicy(slice_size=0)}, now=NOW)
    with pytest.raises(ValueError, match="drain_for"):
        plan(ips=ips(1), machines=[], now=NOW, drain_for=-HOUR)


def test_it_reports_capacity_per_pool() -> None:
    first = plan(ips=ips(2), machines=machines(3), now=NOW)
    result = plan(ips=ips(2), machines=machines(2), previous=first.slices, now=NOW)
    capacity = result.capacity[POOL]
    assert (capacity.ips, capacity.ips_active, capacity.slots_total) == (2, 2, 62)
    assert (capacity.slices_active, capacity.slices_draining) == (2, 1)
    assert (capacity.slots_used, capacity.slots_free, capacity.machines_served) == (3, 59, 2)
    assert capacity.utilization == pytest.approx(3 / 62)


def test_it_lists_the_machines_whose_slices_changed() -> None:
    first = plan(ips=ips(1), machines=machines(3), now=NOW)
    changed = machines(3)[1:] + [Machine("new", WARP)]
    result = plan(ips=ips(1), machines=changed, previous=first.slices, now=NOW)
    assert result.diff.machines_touched() == frozenset({"m00", "new"})
    assert [s.machine for s in result.by_machine()["new"]] == ["new"]
    assert [s.state for s in result.by_machine()["m00"]] == ["draining"]


def test_it_plans_tiny_slices_without_listing_every_slot() -> None:
    tiny = {POOL: PoolPolicy(slice_size=8)}  # 8,064 slots per IP: too many to list
    first = plan(ips=ips(1), machines=machines(3), policies=tiny, now=NOW)
    assert [(s.lo, s.hi) for s in first.slices] == [(1024, 1031), (1032, 1039), (1040, 1047)]
    result = plan(
        ips=ips(1), machines=machines(3)[1:], previous=first.slices, policies=tiny, now=NOW
    )
    assert [s.state for s in result.slices] == ["draining", "active", "active"]
    assert result.capacity[POOL].slots_free == 8064 - 3


def test_it_counts_slots_freed_by_slices_drained_for_a_lighter_weight() -> None:
    """Regression: on an IP filed whole, a slice trimmed in the same plan was not counted."""
    three_slots = ips(1, usable=PortRange(2048, 8191))
    first = plan(ips=three_slots, machines=[Machine("m", WARP, weight=3)], now=NOW)
    lighter = [Machine("m", WARP, weight=2), Machine("n", WARP)]
    with pytest.raises(CapacityError) as caught:
        plan(ips=three_slots, machines=lighter, previous=first.slices, now=NOW)
    assert caught.value.shortfalls[0].slots_freed_by_drains == 1
