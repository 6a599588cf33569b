"""plan_preview writes nothing; plan_apply writes the whole plan or nothing."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from rest_framework.test import APIClient

import allocator as alloc
from planner.choices import RevisionStatus
from planner.models import (
    AuditEntry,
    Datacenter,
    EgressIP,
    EgressPool,
    Machine,
    PlanRevision,
    PortSlice,
)
from planner.services.plans import PlanConflict, plan_apply, plan_preview
from tests.planner.conftest import Site
from tests.planner.factories import make_datacenter, make_ip, make_machine, make_pool

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _datacenter(machines: int = 3, ips: int = 1, slice_size: int = 16384) -> Datacenter:
    """A small site: one pool whose IPs each hold 3 slices of 16,384 ports."""
    dc = make_datacenter(code="fra1")
    pool = make_pool(datacenter=dc, slice_size=slice_size)
    for n in range(ips):
        make_ip(f"192.0.2.{n + 1}", pool=pool)
    for n in range(machines):
        machine = make_machine(f"m{n}.example.net", datacenter=dc)
        machine.pools.add(pool)
    return dc


def _apply(dc: Datacenter, now: datetime = NOW, reason: str = "") -> PlanRevision:
    """Apply what a preview made at ``now`` showed, as an operator would."""
    digest = plan_preview(datacenter=dc, now=now).inputs_digest
    return plan_apply(datacenter=dc, inputs_digest=digest, reason=reason, now=now)


def _owned() -> dict[str, set[tuple[str, int, int]]]:
    owned: dict[str, set[tuple[str, int, int]]] = {}
    for host, ip, lo, hi in PortSlice.objects.filter(state="active").values_list(
        "machine__hostname", "ip__address", "lo", "hi"
    ):
        owned.setdefault(host, set()).add((ip, lo, hi))
    return owned


def test_a_preview_writes_nothing() -> None:
    dc = _datacenter(machines=3)
    audit_before = AuditEntry.objects.count()
    preview = plan_preview(datacenter=dc, now=NOW)
    assert preview.ok and preview.base_revision == 0
    assert preview.plan is not None and preview.plan.diff.summary()["added"] == 3
    assert not PortSlice.objects.exists() and not PlanRevision.objects.exists()
    assert AuditEntry.objects.count() == audit_before


def test_apply_writes_the_plan_a_revision_and_an_audit_entry() -> None:
    dc = _datacenter(machines=3)
    revision = _apply(dc, reason="first", now=NOW)
    assert (revision.number, revision.status) == (1, RevisionStatus.APPLIED)
    assert revision.diff_summary["added"] == 3
    assert sorted(_owned()) == ["m0.example.net", "m1.example.net", "m2.example.net"]
    assert all(s.revision_id == revision.pk for s in PortSlice.objects.all())
    assert AuditEntry.objects.filter(action="plan_apply", object_pk=str(revision.pk)).exists()


def test_a_stale_preview_is_refused_with_a_fresh_one_and_nothing_is_written() -> None:
    dc = _datacenter(machines=3)
    _apply(dc, now=NOW)
    seen = plan_preview(datacenter=dc, now=NOW)
    assert seen.plan is not None and seen.plan.diff.summary()["draining"] == 0
    Machine.objects.filter(hostname="m0.example.net").update(state="retired")
    with pytest.raises(PlanConflict, match="changed since this preview") as caught:
        plan_apply(datacenter=dc, inputs_digest=seen.inputs_digest, now=NOW)
    assert PlanRevision.objects.count() == 1
    assert not PortSlice.objects.filter(state="draining").exists()
    fresh = caught.value.details["preview"]
    assert isinstance(fresh, dict) and fresh["diff"]["draining"] == 1
    revision = plan_apply(datacenter=dc, inputs_digest=fresh["inputs_digest"], now=NOW)
    assert revision.diff_summary["draining"] == 1


def test_each_input_of_a_plan_changes_the_digest() -> None:
    dc = _datacenter(machines=2)
    _apply(dc, now=NOW)
    digests = [plan_preview(datacenter=dc, now=NOW).inputs_digest]
    pool = EgressPool.objects.get()
    edits = [
        lambda: EgressPool.objects.update(slices_per_machine=2),
        lambda: make_ip("192.0.2.9", pool=pool),
        lambda: EgressIP.objects.filter(address="192.0.2.9").update(reserved_ports=[40000]),
        lambda: Machine.objects.filter(hostname="m0.example.net").update(weight=2),
        lambda: Machine.objects.filter(hostname="m1.example.net").update(state="draining"),
        lambda: Machine.objects.get(hostname="m0.example.net").pools.clear(),
        lambda: EgressIP.objects.filter(address="192.0.2.9").update(state="draining"),
        lambda: EgressIP.objects.filter(address="192.0.2.9").update(usable_lo=4096),
        lambda: EgressPool.objects.update(slice_size=8192),
        lambda: EgressPool.objects.update(city="Offenbach"),
        # A machine counts once it serves a pool: a scoped plan covers only pools.
        lambda: make_machine("m7.example.net", datacenter=dc).pools.add(pool),
        lambda: PortSlice.objects.filter(machine__hostname="m1.example.net").update(
            state="draining", drain_until=NOW + timedelta(minutes=5)
        ),
    ]
    for edit in edits:
        edit()
        digests.append(plan_preview(datacenter=dc, now=NOW).inputs_digest)
    # The same inputs give the same digest; a drain that ends in between does not.
    assert plan_preview(datacenter=dc, now=NOW).inputs_digest == digests[-1]
    digests.append(plan_preview(datacenter=dc, now=NOW + timedelta(minutes=6)).inputs_digest)
    assert len(set(digests)) == len(digests)


def test_a_short_pool_applies_nothing_and_the_preview_says_how_many_ips() -> None:
    dc = _datacenter(machines=7, ips=1)  # 3 slices per IP: 4 machines unserved, 2 IPs short
    preview = plan_preview(datacenter=dc, now=NOW)
    assert not preview.ok
    (shortfall,) = preview.shortfalls
    assert (len(shortfall.machines_unserved), shortfall.ips_needed) == (4, 2)
    with pytest.raises(alloc.CapacityError):
        _apply(dc, now=NOW)
    assert not PortSlice.objects.exists() and not PlanRevision.objects.exists()


def test_a_retired_machine_drains_and_the_others_keep_their_ports() -> None:
    dc = _datacenter(machines=3)
    _apply(dc, now=NOW)
    before = _owned()
    Machine.objects.filter(hostname="m1.example.net").update(state="retired")
    revision = _apply(dc, now=NOW)
    draining = PortSlice.objects.get(state="draining")
    assert draining.machine.hostname == "m1.example.net"
    assert draining.drain_until == NOW + timedelta(hours=1)
    assert revision.diff_summary["draining"] == 1
    after = _owned()
    assert after["m0.example.net"] == before["m0.example.net"]
    assert after["m2.example.net"] == before["m2.example.net"]
    # Once the drain is over the ports are free again.
    _apply(dc, now=NOW + timedelta(hours=2))
    assert not PortSlice.objects.filter(machine__hostname="m1.example.net").exists()


def test_a_joining_machine_takes_free_ports_without_renumbering() -> None:
    dc = _datacenter(machines=2)
    _apply(dc, now=NOW)
    before = _owned()
    newcomer = make_machine("m9.example.net", datacenter=dc)
    newcomer.pools.add(EgressPool.objects.get())
    _apply(dc, now=NOW)
    after = _owned()
    assert {h: after[h] for h in before} == before
    assert not after["m9.example.net"] & set().union(*before.values())


def test_the_previous_revision_is_superseded() -> None:
    dc = _datacenter()
    _apply(dc, now=NOW)
    _apply(dc, now=NOW)
    statuses = dict(PlanRevision.objects.values_list("number", "status"))
    assert statuses == {1: RevisionStatus.SUPERSEDED, 2: RevisionStatus.APPLIED}


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_applies_one_wins_one_conflicts(postgres: None) -> None:
    dc = _datacenter(machines=6, ips=2)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    digest = plan_preview(datacenter=dc, now=NOW).inputs_digest

    def apply() -> None:
        try:
            barrier.wait()
            plan_apply(datacenter=dc, inputs_digest=digest, now=NOW)
            outcomes.append("applied")
        except PlanConflict:
            outcomes.append("conflict")
        finally:
            connection.close()  # each thread has its own connection

    threads = [threading.Thread(target=apply) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["applied", "conflict"]
    assert PlanRevision.objects.count() == 1
    assert PortSlice.objects.count() == 6
    with connection.cursor() as cursor:  # no two slices of one IP share a port
        cursor.execute(
            "SELECT count(*) FROM planner_portslice a JOIN planner_portslice b "
            "ON a.ip_id = b.ip_id AND a.id < b.id AND a.lo <= b.hi AND b.lo <= a.hi"
        )
        assert cursor.fetchone() == (0,)


def test_an_aligned_pool_gives_each_machine_one_range_on_every_ip_once_the_api_turns_it_on(
    clients: dict[str, APIClient], site: Site
) -> None:
    pool = EgressPool.objects.get(datacenter=site.datacenter)
    response = clients["bob"].patch(f"/api/v1/pools/{pool.pk}", {"aligned": True}, "json")
    assert response.status_code == 200 and response.json()["aligned"] is True
    _apply(site.datacenter)
    owned = _owned()
    for machine in site.machines:
        mine = owned[machine.hostname]
        assert len({(lo, hi) for _, lo, hi in mine}) == 1, f"{mine} is not one range"
        assert {ip for ip, _, _ in mine} == {"192.0.2.1", "2001:db8::1"}
    response = clients["bob"].patch(f"/api/v1/pools/{pool.pk}", {"aligned": "maybe"}, "json")
    assert response.status_code == 400 and "aligned" in response.json()
