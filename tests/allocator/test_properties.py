"""The allocation rules (docs/design.md) as Hypothesis properties.

Each example is a short story: a datacenter planned from nothing, then changed
twice (machines and IPs come, go, drain; weights and usage change; time
passes), planned again from the previous slices each time. Every rule is
checked on every plan of the story.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from datetime import datetime
from unittest.mock import patch

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from allocator import CapacityError, EgressIP, Machine, Plan, plan
from tests.allocator import invariants
from tests.allocator.invariants import Inputs
from tests.allocator.strategies import DRAIN_FOR, EXAMPLES, POOLS, Story, stories

START = datetime(2025, 3, 1, 9, 0)
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Outcome = tuple[Inputs, Plan | CapacityError]


def tell(story: Story) -> list[Outcome]:
    """Plan each stage from the slices of the last plan that succeeded."""
    outcomes: list[Outcome] = []
    previous: tuple = ()
    now = START
    for stage in story.stages:
        now += stage.step
        inputs = Inputs(
            ips=stage.ips,
            machines=stage.machines,
            previous=previous,
            policies=story.policies,
            now=now,
            drain_for=DRAIN_FOR,
            usage=stage.usage,
        )
        try:
            result = inputs.plan()
        except CapacityError as error:
            event("capacity short")
            outcomes.append((inputs, error))
            continue
        event("planned")
        outcomes.append((inputs, result))
        previous = result.slices
    return outcomes


def plans(story: Story) -> list[tuple[Inputs, Plan]]:
    return [(inputs, result) for inputs, result in tell(story) if isinstance(result, Plan)]


@PROPERTY
@given(stories())
def test_it_never_overlaps_slices_nor_leaves_usable_ports(story: Story) -> None:
    for inputs, result in plans(story):
        invariants.check_no_overlap(inputs, result)


@PROPERTY
@given(stories())
def test_it_serves_every_active_machine_in_every_pool(story: Story) -> None:
    for inputs, result in plans(story):
        invariants.check_served(inputs, result)


@PROPERTY
@given(stories())
def test_it_puts_new_slices_on_the_least_loaded_ips(story: Story) -> None:
    for inputs, result in plans(story):
        invariants.check_balanced_additions(inputs, result)


@PROPERTY
@given(
    ip_count=st.integers(1, 8),
    machine_count=st.integers(0, 120),
    pool=st.sampled_from(POOLS),
)
def test_it_spreads_machines_evenly_when_planning_from_nothing(
    ip_count: int, machine_count: int, pool: str
) -> None:
    ips = [EgressIP(f"10.1.0.{n + 1}", pool) for n in range(ip_count)]
    machines = [Machine(f"m{n:03d}", frozenset({pool})) for n in range(machine_count)]
    try:
        result = plan(ips=ips, machines=machines, now=START)
    except CapacityError:
        assert machine_count > 31 * ip_count
        return
    per_ip = Counter(slice_.ip for slice_ in result.slices)
    counts = [per_ip[ip.address] for ip in ips]
    assert max(counts) - min(counts) <= 1, counts


@PROPERTY
@given(stories())
def test_it_aligns_slices_to_the_grid(story: Story) -> None:
    for inputs, result in plans(story):
        invariants.check_aligned(inputs, result)


@PROPERTY
@given(stories())
def test_it_keeps_the_ports_of_machines_that_stay(story: Story) -> None:
    for inputs, result in plans(story):
        invariants.check_stable(inputs, result)


@PROPERTY
@given(stories(), st.integers(1, 3), st.integers(0, 1))
def test_it_never_renumbers_a_machine_when_others_come_and_go(
    story: Story, joining: int, leaving: int
) -> None:
    """Only other machines change, so every slice of the machines that stay stays."""
    for inputs, result in plans(story):
        newcomers = tuple(Machine(f"new{n}", frozenset(POOLS[: n % 3 + 1])) for n in range(joining))
        machines = inputs.machines[leaving:] + newcomers
        later = replace(inputs, machines=machines, previous=result.slices, usage=None)
        try:
            after = later.plan()
        except CapacityError:
            continue
        stays = {m.name for m in machines if m.state == "active"}
        before = {invariants.place(s) for s in result.slices if s.state == "active"}
        now_active = {invariants.place(s) for s in after.slices if s.state == "active"}
        for slice_ in before:
            if slice_[3] in stays:
                assert slice_ in now_active, f"{slice_} renumbered"


@PROPERTY
@given(stories())
def test_it_drains_leaving_slices_before_freeing_their_ports(story: Story) -> None:
    for inputs, result in plans(story):
        invariants.check_make_before_break(inputs, result)


@PROPERTY
@given(stories())
def test_it_raises_only_real_shortfalls_with_the_exact_ip_count(story: Story) -> None:
    for inputs, outcome in tell(story):
        if isinstance(outcome, CapacityError):
            invariants.check_shortfall(inputs, outcome)
        else:
            invariants.check_served(inputs, outcome)


@PROPERTY
@given(stories(), st.randoms(use_true_random=False))
def test_it_gives_the_same_plan_for_inputs_in_any_order(story: Story, rng: random.Random) -> None:
    for inputs, outcome in tell(story):
        try:
            again = inputs.shuffled(rng).plan()
        except CapacityError as error:
            assert isinstance(outcome, CapacityError) and str(error) == str(outcome)
        else:
            assert again == outcome


@PROPERTY
@given(stories())
def test_it_grows_hot_machines_and_shrinks_cold_ones(story: Story) -> None:
    """Counts per machine follow usage (checked in check_served), and growth alone
    never makes a plan fail: with and without usage, the same plans fail."""
    for inputs, outcome in tell(story):
        without_usage = replace(inputs, usage=None)
        try:
            without_usage.plan()
        except CapacityError:
            assert isinstance(outcome, CapacityError)
        else:
            assert isinstance(outcome, Plan), "growth caused a CapacityError"
            invariants.check_served(inputs, outcome)


@PROPERTY
@given(stories())
def test_it_reports_a_diff_and_capacity_that_add_up(story: Story) -> None:
    for inputs, result in plans(story):
        invariants.check_diff_partition(inputs, result)
        invariants.check_capacity_report(inputs, result)


@PROPERTY
@given(stories())
def test_it_plans_the_same_whether_it_files_ips_whole_or_slice_by_slice(story: Story) -> None:
    """The bulk path for IPs with listed slots must agree with the slice-by-slice one,
    which is all that IPs with too many slots to list (tiny slices) ever take."""
    for inputs, outcome in tell(story):
        with patch("allocator.inventory.listed_slots", return_value=None):
            try:
                one_by_one: Plan | CapacityError = inputs.plan()
            except CapacityError as error:
                one_by_one = error
        if isinstance(outcome, CapacityError):
            assert isinstance(one_by_one, CapacityError) and str(one_by_one) == str(outcome)
        else:
            assert one_by_one == outcome
