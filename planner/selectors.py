"""Reads of the planner's tables, shaped for the views, the API and commands."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

import allocator as alloc
from planner.choices import RevisionStatus
from planner.inventory_io import GeofeedEntry
from planner.models import Datacenter, EgressIP, EgressPool, Machine, PlanRevision, PortSlice


def geofeed_entries(*, datacenter: str | None = None) -> list[GeofeedEntry]:
    """Each egress IP with the geolocation of its pool."""
    ips = EgressIP.objects.select_related("pool")
    if datacenter:
        ips = ips.filter(pool__datacenter__code=datacenter)
    return [
        GeofeedEntry(ip.address, ip.pool.country, ip.pool.region, ip.pool.city)
        for ip in ips.order_by("address")
    ]


@dataclass(frozen=True)
class PlannerInputs:
    """A datacenter's inventory and live slices, as the allocator takes them."""

    ips: tuple[alloc.EgressIP, ...]
    machines: tuple[alloc.Machine, ...]
    previous: tuple[alloc.Slice, ...]
    policies: dict[str, alloc.PoolPolicy]


def current_revision(*, datacenter: Datacenter) -> int:
    """The number of the datacenter's applied plan; 0 before the first."""
    latest = (
        PlanRevision.objects.filter(datacenter=datacenter, status=RevisionStatus.APPLIED)
        .order_by("-number")
        .values_list("number", flat=True)
        .first()
    )
    return latest or 0


def planner_inputs(*, datacenter: Datacenter) -> PlannerInputs:
    pools = {p.pk: p for p in EgressPool.objects.filter(datacenter=datacenter)}
    for pool in pools.values():
        pool.datacenter = datacenter  # key needs the code; spare a query per pool
    ips = tuple(
        alloc.EgressIP(
            address=ip.address,
            pool=pools[ip.pool_id].key,
            usable=alloc.PortRange(ip.usable_lo, ip.usable_hi),
            reserved=frozenset(ip.reserved_ports),
            state=ip.state,
        )
        for ip in EgressIP.objects.filter(pool__datacenter=datacenter)
    )
    served: dict[int, set[str]] = {}
    for machine_id, pool_id in Machine.pools.through.objects.filter(
        machine__datacenter=datacenter
    ).values_list("machine_id", "egresspool_id"):
        served.setdefault(machine_id, set()).add(pools[pool_id].key)
    machines = tuple(
        alloc.Machine(
            name=hostname, pools=frozenset(served.get(pk, ())), weight=weight, state=state
        )
        for pk, hostname, weight, state in Machine.objects.filter(
            datacenter=datacenter
        ).values_list("pk", "hostname", "weight", "state")
    )
    previous = tuple(
        alloc.Slice(ip=ip, lo=lo, hi=hi, machine=machine, state=state, drain_until=until)
        for ip, lo, hi, machine, state, until in live_slices(datacenter=datacenter).values_list(
            "ip__address", "lo", "hi", "machine__hostname", "state", "drain_until"
        )
    )
    policies = {
        pool.key: alloc.PoolPolicy(
            slice_size=pool.slice_size,
            slices_per_machine=pool.slices_per_machine,
            max_slices_per_machine=pool.max_slices_per_machine,
        )
        for pool in pools.values()
    }
    return PlannerInputs(ips, machines, previous, policies)


def live_slices(*, datacenter: Datacenter) -> QuerySet[PortSlice]:
    return PortSlice.objects.filter(ip__pool__datacenter=datacenter)
