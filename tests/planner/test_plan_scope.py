"""Plan by scope: an inventory change marks the pools it affects, a plan covers only
those (and those with ended drains), and what it gives them is exactly a full plan's."""

from __future__ import annotations

from contextlib import suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import allocator as alloc
from planner.models import ConfigBundle, EgressIP, EgressPool, Machine, PortSlice
from planner.services import inventory
from planner.services.keys import signing_key_generate
from planner.services.plans import (
    PlanConflict,
    PlanPreview,
    plan_apply,
    plan_apply_current,
    plan_preview,
)
from tests.planner.factories import make_datacenter, make_ip, make_machine, make_pool

pytestmark = pytest.mark.django_db

NOW = timezone.now().replace(microsecond=0)
POOLS = ("warp", "cdn", "int")


def _site(machines: list[tuple[int, ...]], ips_per_pool: int, size: int) -> dict[str, EgressPool]:
    """Three pools of ``ips_per_pool`` IPs; machine n serves the pools listed at n."""
    dc = make_datacenter(code="ams1", country="NL")
    pools = {
        purpose: make_pool(datacenter=dc, purpose=purpose, country="NL", slice_size=size)
        for purpose in POOLS
    }
    for p, pool in enumerate(pools.values()):
        for n in range(ips_per_pool):
            make_ip(f"198.51.{p}.{n + 1}", pool=pool)
    for n, served in enumerate(machines):
        machine = make_machine(f"h{n}.ams1.example.net", datacenter=dc)
        machine.pools.set([pools[POOLS[i]] for i in served])
    return pools


def _by_pool(preview: PlanPreview, ip_pool: dict[str, str]) -> dict[str, list[alloc.Slice]]:
    assert preview.plan is not None
    found: dict[str, list[alloc.Slice]] = {}
    for slice_ in preview.plan.slices:
        found.setdefault(ip_pool[slice_.ip], []).append(slice_)
    return found


def _place(slice_: alloc.Slice) -> tuple[str, int]:
    return (slice_.ip, slice_.lo)


def _stored_by_pool(ip_pool: dict[str, str]) -> dict[str, list[alloc.Slice]]:
    found: dict[str, list[alloc.Slice]] = {}
    rows = PortSlice.objects.values_list(
        "ip__address", "lo", "hi", "machine__hostname", "state", "drain_until"
    )
    for row in rows:
        found.setdefault(ip_pool[row[0]], []).append(alloc.Slice(*row))
    return {pool: sorted(slices, key=_place) for pool, slices in found.items()}


CHANGES = st.sampled_from(
    [
        "join",
        "retire",
        "weight",
        "leave pool",
        "more per machine",
        "reserve a port",
        "drain an IP",
        "add an IP",
        "drain ends",
    ]
)


def _change(kind: str, pools: dict[str, EgressPool], pick: int) -> None:
    """One inventory change of ``kind`` to pool ``pick`` (or a machine of it), raw:
    the database marks the pools, whoever writes."""
    pool = list(pools.values())[pick % len(pools)]
    members = list(Machine.objects.filter(pools=pool).order_by("hostname"))
    machine = members[pick % len(members)] if members else None
    ip = EgressIP.objects.filter(pool=pool).order_by("address").first()
    assert ip is not None
    if kind == "join":
        joined = Machine.objects.filter(hostname__startswith="new").count()
        make_machine(f"new{joined}.ams1.example.net", datacenter=pool.datacenter).pools.add(pool)
    elif kind == "retire" and machine:
        Machine.objects.filter(pk=machine.pk).update(state="retired")
    elif kind == "weight" and machine:
        Machine.objects.filter(pk=machine.pk).update(weight=2)
    elif kind == "leave pool" and machine:
        machine.pools.remove(pool)
    elif kind == "more per machine":
        EgressPool.objects.filter(pk=pool.pk).update(slices_per_machine=2)
    elif kind == "reserve a port":
        EgressIP.objects.filter(pk=ip.pk).update(reserved_ports=[1100])
    elif kind == "drain an IP":
        EgressIP.objects.filter(pk=ip.pk).update(state="draining")
    elif kind == "add an IP":
        make_ip(f"198.51.9.{EgressIP.objects.count()}", pool=pool)
    elif kind == "drain ends":
        PortSlice.objects.filter(ip__pool=pool).update(
            state="draining", drain_until=NOW - timedelta(seconds=1)
        )


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    machines=st.lists(
        st.lists(st.integers(0, 2), min_size=0, max_size=3, unique=True).map(tuple),
        min_size=1,
        max_size=7,
    ),
    ips_per_pool=st.integers(1, 3),
    size=st.sampled_from([8192, 16384, 32256]),
    changes=st.lists(st.tuples(CHANGES, st.integers(0, 50)), min_size=0, max_size=3),
)
# Each kind of change at least once, whatever the random draw finds.
@example(machines=[(0,), (0, 1), (1,), (2,)], ips_per_pool=2, size=8192, changes=[])
@example(machines=[(0,), (0, 1), (1,), (2,)], ips_per_pool=2, size=8192, changes=[("join", 1)])
@example(machines=[(0,), (0, 1), (1,), (2,)], ips_per_pool=2, size=8192, changes=[("retire", 1)])
@example(machines=[(0,), (0, 1), (1,), (2,)], ips_per_pool=2, size=8192, changes=[("weight", 1)])
@example(
    machines=[(0,), (0, 1), (1,), (2,)], ips_per_pool=2, size=8192, changes=[("leave pool", 1)]
)
@example(
    machines=[(0,), (0, 1), (1,), (2,)],
    ips_per_pool=2,
    size=8192,
    changes=[("more per machine", 1)],
)
@example(
    machines=[(0,), (0, 1), (1,), (2,)], ips_per_pool=2, size=8192, changes=[("reserve a port", 1)]
)
@example(
    machines=[(0,), (0, 1), (1,), (2,)], ips_per_pool=2, size=8192, changes=[("drain an IP", 1)]
)
@example(machines=[(0,), (0, 1), (1,), (2,)], ips_per_pool=2, size=8192, changes=[("add an IP", 1)])
@example(
    machines=[(0,), (0, 1), (1,), (2,)], ips_per_pool=2, size=8192, changes=[("drain ends", 1)]
)
def test_it_gives_the_changed_pools_exactly_what_a_full_plan_gives_them(
    machines: list[tuple[int, ...]],
    ips_per_pool: int,
    size: int,
    changes: list[tuple[str, int]],
) -> None:
    with transaction.atomic():
        pools = _site(machines, ips_per_pool, size)
        dc = next(iter(pools.values())).datacenter
        # Short from the start: every pool stays dirty, still comparable.
        with suppress(alloc.CapacityError):
            plan_apply_current(datacenter=dc, reason="first", now=NOW, full=True)
        for kind, pick in changes:
            _change(kind, pools, pick)
        full = plan_preview(datacenter=dc, now=NOW, full=True)
        scoped = plan_preview(datacenter=dc, now=NOW)
        dirty = {p.key for p in EgressPool.objects.filter(datacenter=dc, plan_dirty=True)}
        assert dirty <= set(scoped.scope)
        if full.ok:
            assert scoped.ok
        if scoped.ok and full.ok:
            assert scoped.plan is not None and full.plan is not None
            ip_pool = {ip.address: ip.pool.key for ip in EgressIP.objects.select_related("pool")}
            full_slices = _by_pool(full, ip_pool)
            scoped_slices = _by_pool(scoped, ip_pool)
            assert set(scoped_slices) <= set(scoped.scope)
            for pool in scoped.scope:
                assert scoped_slices.get(pool, []) == full_slices.get(pool, [])
                assert scoped.plan.capacity[pool] == full.plan.capacity[pool]
            # And the scope misses nothing: a full plan changes no pool outside it.
            stored = _stored_by_pool(ip_pool)
            for pool in {p.key for p in pools.values()} - set(scoped.scope):
                assert sorted(full_slices.get(pool, []), key=_place) == stored.get(pool, [])
            assert {ip_pool.get(s.ip) for s in full.plan.diff.freed} <= set(scoped.scope)
        if not scoped.ok:
            assert not full.ok
            assert {s.pool for s in scoped.shortfalls} <= {s.pool for s in full.shortfalls}
        transaction.set_rollback(True)


@pytest.fixture
def signed(settings: Any, tmp_path: Path) -> None:
    from planner import signing

    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    signing._loaded.clear()
    signing_key_generate()


def test_it_moves_and_re_signs_nothing_in_pools_nobody_touched(signed: None) -> None:
    pools = _site([(0,), (1,), (2,), (0, 1)], ips_per_pool=2, size=8192)
    dc = pools["warp"].datacenter
    first = plan_apply_current(datacenter=dc, reason="first", now=NOW)
    untouched = list(
        PortSlice.objects.exclude(ip__pool=pools["int"])
        .order_by("pk")
        .values_list("pk", "ip_id", "lo", "hi", "machine_id", "state", "revision_id")
    )
    serials = dict(Machine.objects.values_list("hostname", "bundle_serial"))
    joiner = make_machine("join.ams1.example.net", datacenter=dc)
    joiner.pools.add(pools["int"])
    preview = plan_preview(datacenter=dc, now=NOW)
    assert preview.scope == ("ams1/int/NL",)
    revision = plan_apply(datacenter=dc, inputs_digest=preview.inputs_digest, now=NOW)
    assert revision.number == first.number + 1
    assert revision.diff_summary["added"] == 1 and revision.diff_summary["kept"] == 1
    after = list(
        PortSlice.objects.exclude(ip__pool=pools["int"])
        .order_by("pk")
        .values_list("pk", "ip_id", "lo", "hi", "machine_id", "state", "revision_id")
    )
    assert after == untouched  # same rows, same revision: nothing moved or rewritten
    resigned = {
        host
        for host, serial in Machine.objects.values_list("hostname", "bundle_serial")
        if serial != serials.get(host)
    }
    assert resigned == {"join.ams1.example.net"}
    assert not ConfigBundle.objects.filter(revision=revision).exclude(machine=joiner).exists()
    assert not EgressPool.objects.filter(datacenter=dc, plan_dirty=True).exists()


def test_a_planned_ip_removal_frees_its_slices_in_a_scoped_plan(signed: None) -> None:
    pools = _site([(0,), (0,), (1,)], ips_per_pool=2, size=32256)
    dc = pools["warp"].datacenter
    plan_apply_current(datacenter=dc, reason="first", now=NOW)
    gone = EgressIP.objects.get(address="198.51.0.1")
    held = PortSlice.objects.filter(ip=gone).count()
    change = inventory.InventoryChange(gone, delete=True)
    preview = inventory.inventory_plan_preview(change=change, now=NOW)
    assert preview.scope == ("ams1/warp/NL",)
    assert preview.plan is not None and len(preview.plan.diff.freed) == held > 0
    # A fresh change, as a second request makes: the rolled-back delete left the first without a pk.
    change = inventory.InventoryChange(EgressIP.objects.get(address="198.51.0.1"), delete=True)
    inventory.inventory_plan_apply(change=change, inputs_digest=preview.inputs_digest, now=NOW)
    assert not EgressIP.objects.filter(address="198.51.0.1").exists()
    after = plan_preview(datacenter=dc, now=NOW, full=True).plan
    assert after is not None and after.diff.summary()["added"] == 0


def test_each_kind_of_change_marks_its_pools_dirty_and_bumps_their_versions() -> None:
    """A scoped plan covers the dirty pools, and the digest is over the versions: a
    change that marked or bumped none would go unplanned or be applied over unseen;
    one that touched an untouched pool would plan it, or refuse applies, for nothing."""
    pools = _site([(0,), (1,)], ips_per_pool=1, size=8192)
    EgressPool.objects.update(plan_dirty=False)
    seen = dict(EgressPool.objects.values_list("purpose", "plan_version"))

    def dirty() -> set[str]:
        found = {p.purpose for p in EgressPool.objects.filter(plan_dirty=True)}
        EgressPool.objects.update(plan_dirty=False)
        return found

    def bumped() -> set[str]:
        now = dict(EgressPool.objects.values_list("purpose", "plan_version"))
        changed = {purpose for purpose, version in now.items() if version != seen[purpose]}
        seen.update(now)
        return changed

    def marked() -> tuple[set[str], set[str]]:
        return dirty(), bumped()

    h0 = Machine.objects.get(hostname="h0.ams1.example.net")
    Machine.objects.filter(pk=h0.pk).update(last_seen=NOW, applied_serial=3)
    assert marked() == (set(), set())  # agent reports change no plan
    Machine.objects.filter(pk=h0.pk).update(weight=3)
    assert marked() == ({"warp"}, {"warp"})
    h0.pools.add(pools["int"])
    assert marked() == ({"int"}, {"int"})
    EgressIP.objects.filter(pool=pools["cdn"]).update(usable_hi=60000)
    assert marked() == ({"cdn"}, {"cdn"})
    EgressIP.objects.filter(pool=pools["cdn"]).update(pool=pools["int"])
    assert marked() == ({"cdn", "int"}, {"cdn", "int"})
    EgressIP.objects.filter(address="198.51.1.1").update(pool=pools["cdn"])  # back
    assert marked() == ({"cdn", "int"}, {"cdn", "int"})
    EgressPool.objects.filter(purpose="warp").update(max_slices_per_machine=4)
    assert marked() == ({"warp"}, {"warp"})
    EgressPool.objects.filter(purpose="warp").update(max_slices_per_machine=4)
    assert marked() == (set(), set())  # the same value again changes nothing
    EgressPool.objects.filter(purpose="warp").update(aligned=True)
    assert marked() == ({"warp"}, {"warp"})

    # Slices too, whoever writes them: the plan's own writes, and a raw UPDATE.
    # They are the plan's output: writing them bumps, it does not ask for a plan.
    plan_apply_current(datacenter=h0.datacenter, reason="test", full=True)
    assert marked() == (set(), {"warp", "cdn", "int"})
    PortSlice.objects.filter(ip__pool=pools["warp"]).update(lo=F("lo") + 1)
    assert marked() == (set(), {"warp"})
    PortSlice.objects.filter(ip__pool=pools["int"]).delete()
    assert marked() == (set(), {"int"})


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite bumps per row")
def test_a_statement_of_many_rows_bumps_its_pool_once() -> None:
    """10,000 memberships in one import must not update the pool row 10,000 times."""
    pools = _site([], ips_per_pool=1, size=8192)
    dc = pools["warp"].datacenter
    machines = Machine.objects.bulk_create(
        Machine(hostname=f"b{n}.ams1.example.net", datacenter=dc, address="10.0.0.2")
        for n in range(300)
    )
    before = EgressPool.objects.get(purpose="warp").plan_version
    Machine.pools.through.objects.bulk_create(
        Machine.pools.through(machine_id=m.pk, egresspool_id=pools["warp"].pk) for m in machines
    )
    assert EgressPool.objects.get(purpose="warp").plan_version == before + 1
    Machine.pools.through.objects.filter(egresspool_id=pools["warp"].pk).delete()
    assert EgressPool.objects.get(purpose="warp").plan_version == before + 2


def test_a_slice_written_behind_the_planners_back_refuses_the_previewed_apply() -> None:
    _site([(0,), (0, 1)], ips_per_pool=1, size=8192)
    dc = Machine.objects.get(hostname="h0.ams1.example.net").datacenter
    plan_apply_current(datacenter=dc, reason="test", full=True)
    preview = plan_preview(datacenter=dc, full=True)
    PortSlice.objects.filter(ip__pool__purpose="cdn").update(hi=F("hi") - 1)
    with pytest.raises(PlanConflict):
        plan_apply(datacenter=dc, inputs_digest=preview.inputs_digest, reason="test", full=True)
    fresh = plan_preview(datacenter=dc, full=True)
    assert fresh.inputs_digest != preview.inputs_digest
    plan_apply(datacenter=dc, inputs_digest=fresh.inputs_digest, reason="test", full=True)
