"""Headroom from SQL aggregates (planner/headroom.py) against the allocator's count
over every slice as an object, on a real database, and its cache's key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

import allocator as alloc
from planner.choices import MachineState, SliceState
from planner.headroom import datacenter_headroom, headroom_counted
from planner.models import Datacenter, EgressIP, Machine, PortSlice
from planner.selectors import planner_inputs
from planner.services.keys import signing_key_generate
from planner.services.plans import plan_apply_current
from tests.planner.factories import make_datacenter, make_ip, make_machine, make_pool

pytestmark = pytest.mark.django_db

NOW = timezone.now().replace(microsecond=0)


def objects_headroom(datacenter: Datacenter) -> dict[str, alloc.PoolHeadroom]:
    inputs = planner_inputs(datacenter=datacenter)
    return alloc.headroom(
        ips=inputs.ips, machines=inputs.machines, slices=inputs.previous, policies=inputs.policies
    )


def busy_datacenter(code: str, net: int) -> Datacenter:
    """Pools of every kind (power-of-two, odd-sized, aligned, one with no IP), IPs
    with reserved ports, a narrow range and a draining state, machines of several
    weights and states, and slices draining after the machines changed."""
    dc = make_datacenter(code=code)
    warp = make_pool(datacenter=dc, purpose="warp", slice_size=2048, slices_per_machine=2)
    odd = make_pool(datacenter=dc, purpose="odd", slice_size=3000)
    aligned = make_pool(datacenter=dc, purpose="aligned", slice_size=1024, aligned=True)
    bare = make_pool(datacenter=dc, purpose="bare")  # served, no IP: all missing
    make_ip(f"198.51.{net}.1", pool=warp, reserved_ports=[5000, 40000])
    make_ip(f"198.51.{net}.2", pool=warp, usable_lo=2048, usable_hi=30000)
    make_ip(f"198.51.{net}.3", pool=warp)
    make_ip(f"198.51.{net}.4", pool=odd)
    make_ip(f"198.51.{net}.5", pool=aligned)
    make_ip(f"198.51.{net}.6", pool=aligned, reserved_ports=[9000])
    machines = []
    for n, (served, weight) in enumerate(
        [((warp, odd), 1), ((warp,), 2), ((warp, aligned), 1), ((odd, aligned), 3), ((warp,), 1)]
    ):
        machine = make_machine(f"h{n}.{code}.example.net", datacenter=dc, weight=weight)
        machine.pools.set(served)
        machines.append(machine)
    plan_apply_current(datacenter=dc, reason="first", now=NOW, full=True)
    # One machine drains, one leaves a pool: the next plan drains their slices.
    Machine.objects.filter(pk=machines[0].pk).update(state=MachineState.DRAINING)
    machines[2].pools.remove(aligned)
    plan_apply_current(datacenter=dc, reason="second", now=NOW + timedelta(minutes=1), full=True)
    # Unplanned since: one machine grows heavier, an IP drains, and the bare pool
    # gets members (one retired), which no plan could serve.
    Machine.objects.filter(pk=machines[4].pk).update(weight=2)
    EgressIP.objects.filter(address=f"198.51.{net}.3").update(state="draining")
    machines[1].pools.add(bare)
    retired = make_machine(f"r.{code}.example.net", datacenter=dc, state=MachineState.RETIRED)
    retired.pools.set([bare])
    # A slice freed from the middle of a packed IP: two runs there (a drain that
    # ended), where the packed IPs are one.
    packed = PortSlice.objects.filter(ip__address=f"198.51.{net}.4").order_by("lo")
    assert packed.count() >= 3
    packed[1].delete()
    return dc


def test_sql_aggregates_count_what_the_objects_count(key_dir: Path) -> None:
    signing_key_generate()
    dc = busy_datacenter("fra1", 100)
    other = busy_datacenter("ams1", 101)  # its slices and members stay out of fra1's counts
    assert PortSlice.objects.filter(state=SliceState.DRAINING, ip__pool__datacenter=dc).exists()
    for datacenter in (dc, other):
        counted = headroom_counted(datacenter=datacenter)
        assert counted == objects_headroom(datacenter)
    room = headroom_counted(datacenter=dc)
    # The cases the counts must get right are there: a draining IP offers nothing,
    # the bare pool misses its active member's due, an aligned pool is in play.
    assert room["fra1/bare/DE"].slices_missing == 2  # h1, weight 2; the retired one not
    assert room["fra1/bare/DE"].ips_needed == 1
    assert room["fra1/warp/DE"].slots_free < room["fra1/warp/DE"].slots_total
    assert set(room) == {"fra1/warp/DE", "fra1/odd/DE", "fra1/aligned/DE", "fra1/bare/DE"}


def test_the_cached_count_follows_each_audited_write(key_dir: Path) -> None:
    signing_key_generate()
    dc = make_datacenter(code="fra1")
    pool = make_pool(datacenter=dc, slice_size=8192)
    make_ip("198.51.100.1", pool=pool)
    machine = make_machine("h1.fra1.example.net", datacenter=dc)
    machine.pools.set([pool])
    before = datacenter_headroom(datacenter=dc)["fra1/warp/DE"]
    assert (before.slots_free, before.slices_missing) == (7, 1)
    plan_apply_current(datacenter=dc, reason="join", now=NOW, full=True)  # audited
    after = datacenter_headroom(datacenter=dc)["fra1/warp/DE"]
    assert (after.slots_free, after.slices_missing) == (6, 0)
