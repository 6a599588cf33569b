"""Reads of the planner's tables, shaped for the views, the API and commands."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

import allocator as alloc
from planner import signing
from planner.choices import BundleStatus, MachineState, RevisionStatus
from planner.inventory_io import GeofeedEntry
from planner.models import (
    ConfigBundle,
    Datacenter,
    EgressIP,
    EgressPool,
    Gateway,
    Machine,
    PlanRevision,
    PortSlice,
    RebalancePolicy,
    RebalanceRun,
    UsageSample,
)
from planner.steering import SteeringRow


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


def next_revision_number(*, datacenter: Datacenter) -> int:
    """Drafts take numbers too, so a new revision follows the highest of any status."""
    latest = (
        PlanRevision.objects.filter(datacenter=datacenter)
        .order_by("-number")
        .values_list("number", flat=True)
        .first()
    )
    return (latest or 0) + 1


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
        _alloc_ip(ip, pools[ip.pool_id])
        for ip in EgressIP.objects.filter(pool__datacenter=datacenter)
    )
    served: dict[int, set[str]] = {}
    for machine_id, pool_id in Machine.pools.through.objects.filter(
        machine__datacenter=datacenter, egresspool__datacenter=datacenter
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
    previous = _alloc_slices(live_slices(datacenter=datacenter))
    policies = {pool.key: _alloc_policy(pool) for pool in pools.values()}
    return PlannerInputs(ips, machines, previous, policies)


def slice_fit_inputs(
    *, ips: QuerySet[EgressIP]
) -> tuple[list[alloc.EgressIP], dict[str, alloc.PoolPolicy], tuple[alloc.Slice, ...]]:
    """``ips`` with their pools' policies and live slices, for :func:`allocator.misfits`."""
    rows = list(ips.select_related("pool__datacenter"))
    policies = {ip.pool.key: _alloc_policy(ip.pool) for ip in rows}
    slices = _alloc_slices(PortSlice.objects.filter(ip__in=[ip.pk for ip in rows]))
    return [_alloc_ip(ip, ip.pool) for ip in rows], policies, slices


def _alloc_ip(ip: EgressIP, pool: EgressPool) -> alloc.EgressIP:
    return alloc.EgressIP(
        address=ip.address,
        pool=pool.key,
        usable=alloc.PortRange(ip.usable_lo, ip.usable_hi),
        reserved=frozenset(ip.reserved_ports),
        state=ip.state,
    )


def _alloc_policy(pool: EgressPool) -> alloc.PoolPolicy:
    return alloc.PoolPolicy(
        slice_size=pool.slice_size,
        slices_per_machine=pool.slices_per_machine,
        max_slices_per_machine=pool.max_slices_per_machine,
        aligned=pool.aligned,
    )


def _alloc_slices(slices: QuerySet[PortSlice]) -> tuple[alloc.Slice, ...]:
    return tuple(
        alloc.Slice(ip=ip, lo=lo, hi=hi, machine=machine, state=state, drain_until=until)
        for ip, lo, hi, machine, state, until in slices.values_list(
            "ip__address", "lo", "hi", "machine__hostname", "state", "drain_until"
        )
    )


def live_slices(*, datacenter: Datacenter) -> QuerySet[PortSlice]:
    return PortSlice.objects.filter(ip__pool__datacenter=datacenter)


def bundle_slices(*, machine_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Each machine's live slices as bundle claims, in one query."""
    rows = (
        PortSlice.objects.filter(machine_id__in=machine_ids)
        .order_by("ip__address", "lo")
        .values_list(
            "machine_id",
            "ip__address",
            "lo",
            "hi",
            "state",
            "ip__pool__datacenter__code",
            "ip__pool__purpose",
            "ip__pool__country",
            "ip__pool__region",
            "ip__pool__city",
        )
    )
    result: dict[int, list[dict[str, Any]]] = {}
    for machine_id, ip, lo, hi, state, dc, purpose, country, region, city in rows:
        pool = "/".join(part for part in (dc, purpose, country, region, city) if part)
        result.setdefault(machine_id, []).append(
            {
                "ip": ip,
                "lo": lo,
                "hi": hi,
                "state": state,
                "pool": pool,
                "purpose": purpose,
                "country": country,
            }
        )
    return result


def shared_prefixes(*, datacenter_ids: Iterable[int]) -> dict[int, list[str]]:
    """Each datacenter's egress addresses (every state: a drained IP is still someone's
    address) collapsed into prefixes, IPv4 first: what every host's guard covers."""
    addresses: dict[int, list[Any]] = {}  # Any: collapse_addresses takes one version at a time
    rows = EgressIP.objects.filter(pool__datacenter_id__in=list(datacenter_ids)).values_list(
        "pool__datacenter_id", "address"
    )
    for dc, address in rows:
        addresses.setdefault(dc, []).append(ipaddress.ip_network(address))
    return {
        dc: [
            str(prefix)
            for version in (4, 6)
            for prefix in ipaddress.collapse_addresses(n for n in nets if n.version == version)
        ]
        for dc, nets in addresses.items()
    }


def bundle_claims(
    *,
    machine: Machine,
    serial: int,
    revision: PlanRevision | None,
    slices: list[dict[str, Any]],
    shared: list[str],
    now: datetime,
) -> dict[str, Any]:
    """The claims of the bundle contract (docs/design.md) for one machine; ``shared`` from
    :func:`shared_prefixes`."""
    issued = int(now.timestamp())
    return {
        "iss": signing.ISSUER,
        "aud": signing.AUDIENCE,
        "sub": machine.hostname,
        "iat": issued,
        "exp": issued + settings.BUNDLE_TTL_SECONDS,
        "serial": serial,
        "revision": revision.number if revision else 0,
        "datacenter": machine.datacenter.code,
        "slices": slices,
        "shared": shared,
    }


def steering_table(*, datacenter: Datacenter) -> list[SteeringRow]:
    """Every live slice of the datacenter with its owner's address, by IP then port."""
    rows = (
        live_slices(datacenter=datacenter)
        .order_by("ip__address", "lo")
        .values_list(
            "ip__address",
            "lo",
            "hi",
            "machine__hostname",
            "machine__address",
            "state",
            "machine__steering_mark",
        )
    )
    # Mark 0: none yet, until planner.services.steering.steering_rows allocates it.
    return [SteeringRow(*row[:6], mark=row[6] or 0) for row in rows]


def gateways(*, datacenter: Datacenter | None = None) -> QuerySet[Gateway]:
    """The gateways that have reported, and the steering revision each runs."""
    found = Gateway.objects.select_related("datacenter")
    return found.filter(datacenter=datacenter) if datacenter is not None else found


def pool_headroom() -> list[alloc.PoolHeadroom]:
    """Per pool: its slots, free slots, machines short of slices and IPs needed.

    The allocator's own counting (:func:`allocator.headroom`: reserved ports,
    weights and the slot grid), over each datacenter's planner inputs; a few
    queries per datacenter and no planning, cheap enough for every scrape.
    """
    result: list[alloc.PoolHeadroom] = []
    for datacenter in Datacenter.objects.order_by("code"):
        inputs = planner_inputs(datacenter=datacenter)
        found = alloc.headroom(
            ips=inputs.ips,
            machines=inputs.machines,
            slices=inputs.previous,
            policies=inputs.policies,
        )
        result.extend(found[pool] for pool in sorted(found))
    return result


RESEND_AFTER = timedelta(minutes=2)


def bundles_due(*, now: datetime | None = None) -> QuerySet[ConfigBundle]:
    """Each machine's newest bundle that its agent has not applied yet and that is
    due: never sent, or sent or failed more than ``RESEND_AFTER`` ago. A rejected
    bundle is not resent: it would be rejected again."""
    before = (now or timezone.now()) - RESEND_AFTER
    return (
        ConfigBundle.objects.filter(serial=F("machine__bundle_serial"))
        .exclude(machine__state=MachineState.RETIRED)
        .filter(
            Q(status=BundleStatus.PENDING)
            | Q(status=BundleStatus.SENT, sent_at__lt=before)
            | Q(status=BundleStatus.FAILED, acked_at__lt=before)
        )
        .select_related("machine")
    )


def stale_cutoff(*, now: datetime | None = None) -> datetime:
    """An agent last heard from before this is stale."""
    return (now or timezone.now()) - timedelta(minutes=settings.AGENT_STALE_MINUTES)


def stale_hostnames(*, datacenter: Datacenter, now: datetime | None = None) -> set[str]:
    """Machines of the datacenter whose agent reported once, then went silent.

    Computed from ``last_seen`` (not from the ``stale_since`` mark, which the
    ``planner.mark_stale`` job sets once a minute) so rebalance never acts on a
    mark that is a minute late.
    """
    return set(
        Machine.objects.filter(
            datacenter=datacenter, last_seen__lt=stale_cutoff(now=now)
        ).values_list("hostname", flat=True)
    )


def machines_stale_count(*, now: datetime | None = None) -> dict[str, int]:
    """Stale machines per datacenter code (the same test as :func:`stale_hostnames`)."""
    rows = (
        Machine.objects.filter(last_seen__lt=stale_cutoff(now=now))
        .values_list("datacenter__code")
        .annotate(n=Count("id"))
        .order_by()
    )
    return dict(rows)


def rebalance_policy(*, datacenter: Datacenter) -> RebalancePolicy:
    """The datacenter's policy; an unsaved one with the defaults if it has none."""
    policy = RebalancePolicy.objects.filter(datacenter=datacenter).first()
    return policy or RebalancePolicy(datacenter=datacenter)


def usage_high_water(*, datacenter: Datacenter, since: datetime) -> dict[tuple[str, str], float]:
    """Per (machine, pool): the highest utilization reported since ``since``.

    Utilization at one report is the sockets in the slices the machine holds
    now in that pool, over the ports those slices hold; the high-water mark
    over the window keeps one quiet sample from shrinking a busy machine.
    Machines with no report in the window are absent: they keep what they have.
    """
    held: dict[tuple[str, str, int, int], tuple[str, str, int]] = {}
    ports: dict[tuple[str, str], int] = {}
    for ip, lo, hi, host, dc, purpose, country, region, city in live_slices(
        datacenter=datacenter
    ).values_list(
        "ip__address",
        "lo",
        "hi",
        "machine__hostname",
        "ip__pool__datacenter__code",
        "ip__pool__purpose",
        "ip__pool__country",
        "ip__pool__region",
        "ip__pool__city",
    ):
        pool = "/".join(part for part in (dc, purpose, country, region, city) if part)
        held[(host, ip, lo, hi)] = (host, pool, hi - lo + 1)
        ports[(host, pool)] = ports.get((host, pool), 0) + hi - lo + 1
    in_use: dict[tuple[str, str, datetime], int] = {}
    samples = UsageSample.objects.filter(machine__datacenter=datacenter, at__gte=since)
    for host, ip, lo, hi, at, sockets in samples.values_list(
        "machine__hostname", "ip", "lo", "hi", "at", "sockets"
    ):
        slice_ = held.get((host, ip, lo, hi))
        if slice_ is not None:
            key = (host, slice_[1], at)
            in_use[key] = in_use.get(key, 0) + sockets
    levels: dict[tuple[str, str], float] = {}
    for (host, pool, _), sockets in in_use.items():
        level = sockets / ports[(host, pool)]
        levels[(host, pool)] = max(level, levels.get((host, pool), 0.0))
    return levels


def draft_revisions(*, datacenter: Datacenter | None = None) -> QuerySet[PlanRevision]:
    drafts = PlanRevision.objects.filter(status=RevisionStatus.DRAFT)
    return drafts.filter(datacenter=datacenter) if datacenter else drafts


def rebalance_runs(*, datacenter: Datacenter) -> QuerySet[RebalanceRun]:
    return RebalanceRun.objects.filter(datacenter=datacenter).select_related("revision", "draft")
