"""Reads of the planner's tables, shaped for the views, the API and commands."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

import allocator as alloc
from planner import signing
from planner.choices import BundleStatus, MachineState, RevisionStatus, SliceState
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
    pool_key,
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


def planner_inputs(
    *, datacenter: Datacenter, pool_ids: Collection[int] | None = None
) -> PlannerInputs:
    """The allocator's inputs for the datacenter, or for the pools ``pool_ids`` only.

    Scoped, a machine appears with the pools of the scope it serves, and the
    slices are those on the scope's IPs: pools share nothing in the allocator,
    so the plan of these inputs is the full plan's for these pools.

    Read lean, as a plan reads 100,000 slices: tuples rather than model
    instances, no default ordering (the allocator sorts), ids rather than
    joins, each pool's key computed once.
    """
    pools = EgressPool.objects.filter(datacenter=datacenter).order_by()
    if pool_ids is not None:
        pools = pools.filter(pk__in=list(pool_ids))
    keys: dict[int, str] = {}
    policies: dict[str, alloc.PoolPolicy] = {}
    for pk, purpose, country, region, city, size, base, ceiling in pools.values_list(
        "pk", *POOL_NAME_FIELDS, "slice_size", "slices_per_machine", "max_slices_per_machine"
    ):
        keys[pk] = pool_key(datacenter.code, purpose, country, region, city)
        policies[keys[pk]] = alloc.PoolPolicy(size, base, ceiling)
    addresses: dict[int, str] = {}
    ips = []
    for pk, address, pool_id, lo, hi, reserved, state in (
        EgressIP.objects.filter(pool_id__in=list(keys))
        .order_by()
        .values_list(
            "pk", "address", "pool_id", "usable_lo", "usable_hi", "reserved_ports", "state"
        )
    ):
        addresses[pk] = address
        ips.append(
            alloc.EgressIP(
                address, keys[pool_id], alloc.PortRange(lo, hi), frozenset(reserved), state
            )
        )
    memberships = Machine.pools.through.objects.filter(egresspool_id__in=list(keys)).order_by()
    served: dict[int, set[str]] = {}
    for machine_id, pool_id in memberships.values_list("machine_id", "egresspool_id"):
        served.setdefault(machine_id, set()).add(keys[pool_id])
    machine_rows = Machine.objects.filter(datacenter=datacenter).order_by()
    if pool_ids is not None:  # a semi-join: thousands of ids are no list to send
        machine_rows = machine_rows.filter(pk__in=memberships.values("machine_id"))
    names: dict[int, str] = {}
    machines = []
    for pk, hostname, weight, state in machine_rows.values_list(
        "pk", "hostname", "weight", "state"
    ):
        names[pk] = hostname
        machines.append(alloc.Machine(hostname, frozenset(served.get(pk, ())), weight, state))
    previous = _scope_slices(addresses, names)
    return PlannerInputs(tuple(ips), tuple(machines), previous, policies)


# The fields a pool's key is made of, after its datacenter's code.
POOL_NAME_FIELDS = ("purpose", "country", "region", "city")


def _scope_slices(addresses: dict[int, str], names: dict[int, str]) -> tuple[alloc.Slice, ...]:
    """The live slices on the IPs ``addresses`` (id -> address); ``names`` maps the
    machine ids known so far to hostnames, and learns those of owners it lacks
    (a machine that left the scope's pools still owns its draining slices)."""
    rows = list(
        PortSlice.objects.filter(ip_id__in=list(addresses))
        .order_by()
        .values_list("ip_id", "lo", "hi", "machine_id", "state", "drain_until")
    )
    unknown = {row[3] for row in rows} - names.keys()
    if unknown:
        names.update(Machine.objects.filter(pk__in=unknown).values_list("pk", "hostname"))
    return tuple(
        alloc.Slice(addresses[ip], lo, hi, names[machine], state, until)
        for ip, lo, hi, machine, state, until in rows
    )


def plan_scope(
    *, datacenter: Datacenter, now: datetime, pool_keys: Collection[str] = ()
) -> set[int]:
    """The pools a scoped plan covers: those an inventory change marked dirty, those
    holding a drain that has ended at ``now``, and those named in ``pool_keys``
    (the pools the usage given to the allocator speaks of)."""
    dirty = set(
        EgressPool.objects.filter(datacenter=datacenter, plan_dirty=True).values_list(
            "pk", flat=True
        )
    )
    ended = PortSlice.objects.filter(
        state=SliceState.DRAINING,
        drain_until__lte=now,
        ip__pool__datacenter=datacenter,
    ).values_list("ip__pool_id", flat=True)
    dirty.update(ended.order_by().distinct())
    if pool_keys:
        wanted = set(pool_keys)
        for pk, purpose, country, region, city in (
            EgressPool.objects.filter(datacenter=datacenter)
            .order_by()
            .values_list("pk", *POOL_NAME_FIELDS)
        ):
            if pool_key(datacenter.code, purpose, country, region, city) in wanted:
                dirty.add(pk)
    return dirty


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
    addresses: dict[int, list[str]] = {}
    rows = (
        EgressIP.objects.filter(pool__datacenter_id__in=list(datacenter_ids))
        .order_by()
        .values_list("pool__datacenter_id", "address")
    )
    for dc, address in rows:
        addresses.setdefault(dc, []).append(address)
    return {dc: collapsed_prefixes(found) for dc, found in addresses.items()}


def collapsed_prefixes(addresses: Iterable[str]) -> list[str]:
    """The fewest prefixes covering exactly ``addresses``, IPv4 first, each family in
    order: what ``ipaddress.collapse_addresses`` gives, from integers rather than one
    address object per address (a bundle for a datacenter of 10,000 IPs paid 0.7 s
    for those). Each run of consecutive addresses is summarized on its own."""
    addresses = list(addresses)
    prefixes = []
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        numbers = sorted(
            {
                int.from_bytes(socket.inet_pton(family, address), "big")
                for address in addresses
                if (":" in address) == (version == 6)
            }
        )
        runs: list[list[int]] = []
        for number in numbers:
            if runs and runs[-1][1] == number - 1:
                runs[-1][1] = number
            else:
                runs.append([number, number])
        for first, last in runs:
            prefixes += [
                str(net) for net in ipaddress.summarize_address_range(make(first), make(last))
            ]
    return prefixes


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
