"""Reads of the planner's tables, shaped for the views, the API and commands."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, F, Max, Min, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Trunc
from django.utils import timezone

import allocator as alloc
from planner import constants, forecast, signing
from planner.choices import AgentStatus, BundleStatus, MachineState, RevisionStatus, SliceState
from planner.constants import USABLE_PORT_COUNT
from planner.headroom import datacenter_headroom
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
    #: Each pool's ``plan_version`` as read (planner/plan_triggers.py): what a
    #: preview's digest is over.
    versions: dict[str, int] = field(default_factory=dict)


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
    *, datacenter: Datacenter, pool_ids: Collection[int] | None = None, lock: bool = False
) -> PlannerInputs:
    """The allocator's inputs for the datacenter, or for the pools ``pool_ids`` only.

    Scoped, a machine appears with the pools of the scope it serves, and the
    slices are those on the scope's IPs: pools share nothing in the allocator,
    so the plan of these inputs is the full plan's for these pools.

    Read lean, as a plan reads 100,000 slices: tuples rather than model
    instances, no default ordering (the allocator sorts), ids rather than
    joins, each pool's key computed once.

    With ``lock`` (inside a transaction), the pools' rows are locked first: a
    write to any of their inputs bumps its pool's row (planner/plan_triggers.py),
    so it waits for this transaction, and the versions read are those of the
    inputs read after them.
    """
    pools = pool_inputs(datacenter=datacenter, pool_ids=pool_ids, lock=lock)
    names: dict[int, str] = {}
    machines = []
    serving = _serving_machines(datacenter, pools.keys, pool_ids)
    for pk, hostname, weight, state, served in serving:
        names[pk] = hostname
        machines.append(alloc.Machine(hostname, frozenset(served), weight, state))
    previous = _scope_slices(pools.addresses, names)
    return PlannerInputs(pools.ips, tuple(machines), previous, pools.policies, pools.versions)


@dataclass(frozen=True)
class PoolInputs:
    """A datacenter's pools (or some) and their IPs, as the allocator takes them."""

    keys: dict[int, str]  # pool id -> pool key
    policies: dict[str, alloc.PoolPolicy]
    versions: dict[str, int]  # pool key -> plan_version as read
    addresses: dict[int, str]  # IP id -> address
    ips: tuple[alloc.EgressIP, ...]


def pool_inputs(
    *, datacenter: Datacenter, pool_ids: Collection[int] | None = None, lock: bool = False
) -> PoolInputs:
    """The pools of ``datacenter`` (those of ``pool_ids`` only, if given) with their
    policies and versions, and their IPs: what a plan and a headroom count both start
    from. ``lock``: see :func:`planner_inputs`."""
    pools = EgressPool.objects.filter(datacenter=datacenter).order_by()
    if pool_ids is not None:
        pools = pools.filter(pk__in=list(pool_ids))
    if lock:  # in id order, as every locker of several pools
        pools = pools.order_by("pk").select_for_update()
    keys: dict[int, str] = {}
    policies: dict[str, alloc.PoolPolicy] = {}
    versions: dict[str, int] = {}
    for pk, version, purpose, country, region, city, *policy in pools.values_list(
        "pk", "plan_version", *POOL_NAME_FIELDS, *constants.POLICY_FIELDS
    ):
        keys[pk] = pool_key(datacenter.code, purpose, country, region, city)
        named = dict(zip(constants.POLICY_FIELDS, policy, strict=True))
        policies[keys[pk]] = alloc.PoolPolicy(**named)
        versions[keys[pk]] = version
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
    return PoolInputs(keys, policies, versions, addresses, tuple(ips))


def _serving_machines(
    datacenter: Datacenter, keys: dict[int, str], pool_ids: Collection[int] | None
) -> Iterable[tuple[int, str, int, str, list[str]]]:
    """(id, hostname, weight, state, keys of the pools it serves) of each machine
    serving a pool of ``keys``: a machine serving none of them plans nothing here
    (the owner of a slice it still drains is named by _scope_slices).

    Every pool: the memberships as pairs of ids (100,000 at 100,000 slices) and
    the datacenter's machines once. A few pools: one joined row per membership,
    which reads a pool of 20,000 machines in two thirds of the time.
    """
    memberships = Machine.pools.through.objects.filter(egresspool_id__in=list(keys)).order_by()
    served: dict[int, list[str]] = {}
    if pool_ids is None:
        for machine_id, pool_id in memberships.values_list("machine_id", "egresspool_id"):
            served.setdefault(machine_id, []).append(keys[pool_id])
        rows = Machine.objects.filter(datacenter=datacenter).order_by()
        for pk, hostname, weight, state in rows.values_list("pk", "hostname", "weight", "state"):
            if pk in served:
                yield pk, hostname, weight, state, served[pk]
        return
    found: dict[int, tuple[str, int, str]] = {}
    for machine_id, pool_id, hostname, weight, state in memberships.values_list(
        "machine_id", "egresspool_id", "machine__hostname", "machine__weight", "machine__state"
    ):
        served.setdefault(machine_id, []).append(keys[pool_id])
        found[machine_id] = (hostname, weight, state)
    for pk, (hostname, weight, state) in found.items():
        yield pk, hostname, weight, state, served[pk]


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
    return alloc.PoolPolicy(**{name: getattr(pool, name) for name in constants.POLICY_FIELDS})


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
    address) collapsed into prefixes, IPv4 first: what every host's guard covers.

    Every apply signs bundles with these, so on PostgreSQL the database finds the
    runs of consecutive IPv4 addresses (a window over its ``inet`` column) and
    sends only those: a datacenter of 34,000 IPs is a few runs, not 34,000 rows
    to read and sort here (0.06 s of every join at 1,000,000 slices).
    """
    ids = list(datacenter_ids)
    ips = EgressIP.objects.filter(pool__datacenter_id__in=ids).order_by()
    v4_runs: dict[int, list[tuple[int, int]]] = {dc: [] for dc in ids}
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_V4_RUNS_SQL, [ids])
            for dc, first, last in cursor.fetchall():
                v4_runs[dc].append((first, last))
        ips = ips.filter(address__contains=":")  # IPv6, if any: counted here
    addresses: dict[int, list[str]] = {}
    for dc, address in ips.values_list("pool__datacenter_id", "address"):
        addresses.setdefault(dc, []).append(address)
    result = {}
    for dc in ids:
        # IPv4 first: the database's runs (PostgreSQL), or every address here.
        prefixes = _prefixes(sorted(v4_runs[dc]), 4) + collapsed_prefixes(addresses.get(dc, []))
        if prefixes:
            result[dc] = prefixes
    return result


# Gaps and islands: consecutive addresses less their rank are constant along a run.
_V4_RUNS_SQL = """
SELECT datacenter_id, min(n), max(n) FROM (
    SELECT p.datacenter_id, i.address - '0.0.0.0'::inet AS n,
           (i.address - '0.0.0.0'::inet)
           - row_number() OVER (PARTITION BY p.datacenter_id ORDER BY i.address) AS island
    FROM planner_egressip i JOIN planner_egresspool p ON p.id = i.pool_id
    WHERE p.datacenter_id = ANY(%s) AND family(i.address) = 4
) numbered
GROUP BY datacenter_id, island
"""


def collapsed_prefixes(addresses: Iterable[str]) -> list[str]:
    """The fewest prefixes covering exactly ``addresses``, IPv4 first, each family in
    order: what ``ipaddress.collapse_addresses`` gives, from integers rather than one
    address object per address (a bundle for a datacenter of 10,000 IPs paid 0.7 s
    for those). Each run of consecutive addresses is summarized on its own."""
    addresses = list(addresses)
    prefixes = []
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        numbers = sorted(
            {
                int.from_bytes(socket.inet_pton(family, address), "big")
                for address in addresses
                if (":" in address) == (version == 6)
            }
        )
        runs: list[tuple[int, int]] = []
        for number in numbers:
            if runs and runs[-1][1] == number - 1:
                runs[-1] = (runs[-1][0], number)
            else:
                runs.append((number, number))
        prefixes += _prefixes(runs, version)
    return prefixes


def _prefixes(runs: Iterable[tuple[int, int]], version: int) -> list[str]:
    """Each run (first, last) of consecutive addresses as its fewest prefixes, in order."""
    make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return [
        str(net)
        for first, last in runs
        for net in ipaddress.summarize_address_range(make(first), make(last))
    ]


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

    The allocator's own counting (:func:`allocator.headroom_of_counts`: reserved
    ports, weights, IP states and the slot grid), fed by counts the database
    makes (:mod:`planner.headroom`); four queries per datacenter, no slice
    loaded, and cached until the next audited write: cheap enough for every scrape.
    """
    result: list[alloc.PoolHeadroom] = []
    for datacenter in Datacenter.objects.order_by("code"):
        found = datacenter_headroom(datacenter=datacenter)
        result.extend(found[pool] for pool in sorted(found))
    return result


#: The first resend of an unacknowledged bundle waits this long; each further one
#: twice as long as the one before, up to RESEND_MAX. An agent that is not there
#: costs a few messages an hour, not one a minute (reconcile runs every minute).
RESEND_AFTER = timedelta(minutes=2)
RESEND_MAX = timedelta(hours=1)


def resend_delay(*, attempts: int) -> timedelta:
    """How long after its ``attempts``-th send a bundle is due again: doubling, capped."""
    if attempts <= 0:
        return timedelta(0)
    return min(RESEND_AFTER * 2 ** min(attempts - 1, 32), RESEND_MAX)


def bundles_due(*, now: datetime | None = None) -> QuerySet[ConfigBundle]:
    """Each machine's newest bundle that its agent has not applied yet and that is
    due: never sent, or sent or failed and past its ``next_send_at`` (the resend
    delay doubles with each send, see :func:`resend_delay`). A rejected bundle is
    not resent: it would be rejected again."""
    now = now or timezone.now()
    before = now - RESEND_AFTER
    waiting = Q(status__in=[BundleStatus.SENT, BundleStatus.FAILED])
    return (
        ConfigBundle.objects.filter(serial=F("machine__bundle_serial"))
        .exclude(machine__state=MachineState.RETIRED)
        .filter(
            Q(status=BundleStatus.PENDING)
            | (waiting & Q(next_send_at__lte=now))
            # Rows sent before the backoff existed have no next_send_at.
            | (waiting & Q(next_send_at__isnull=True, sent_at__lt=before))
        )
        .select_related("machine")
    )


def machines_never_seen_count() -> dict[str, int]:
    """Per datacenter, machines that were sent a bundle and never answered: no agent
    has reported for them (``last_seen`` empty). Their resends back off to
    ``RESEND_MAX``; ``/metrics`` shows them as ``portslice_machines_never_seen``."""
    rows = (
        Machine.objects.filter(last_seen__isnull=True, bundles__attempts__gt=0)
        .exclude(state=MachineState.RETIRED)
        .values_list("datacenter__code")
        .annotate(n=Count("id", distinct=True))
        .order_by()
    )
    return dict(rows)


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


# --- a machine's status: derived here once, shown the same everywhere ---------------------------

#: The parts of enforcement an agent reports, in the words a person reads.
ENFORCEMENT_PARTS: dict[str, str] = {
    "port_range": "port range",
    "nftables": "nftables guard",
    "addresses": "egress addresses",
}
PART_STATES = frozenset({"on", "off", "failed"})
NO_REPORT = "the agent has not reported this part"


@dataclass(frozen=True)
class EnforcementPart:
    """One part of what the host enforces: ``state`` is on, off, failed or unknown."""

    part: str
    name: str
    state: str
    detail: str


@dataclass(frozen=True)
class MachineStatus:
    """A machine's status (an :class:`AgentStatus`), why in words, and what it rests on."""

    status: str
    reason: str
    bundle_status: str | None
    enforcement: tuple[EnforcementPart, ...]

    @property
    def label(self) -> str:
        return AgentStatus(self.status).label

    @property
    def ok(self) -> bool:
        return self.status == AgentStatus.ENFORCING


def enforcement_parts(*, enforcement: object) -> tuple[EnforcementPart, ...]:
    """The agent's enforcement report as named parts; whatever it left out is "unknown"."""
    report = enforcement if isinstance(enforcement, dict) else {}
    parts = []
    for key, name in ENFORCEMENT_PARTS.items():
        value = report.get(key)
        value = value if isinstance(value, dict) else {}
        state, detail = value.get("state"), value.get("detail")
        parts.append(
            EnforcementPart(
                part=key,
                name=name,
                state=state if state in PART_STATES else "unknown",
                detail=detail if isinstance(detail, str) and detail else NO_REPORT,
            )
        )
    return tuple(parts)


def machines_with_bundle_status(queryset: QuerySet[Machine]) -> QuerySet[Machine]:
    """``queryset`` annotated with its newest bundle's status and error (one subquery each),
    what :func:`machine_status` needs besides the machine's own columns."""
    # (machine, serial) is unique: no ordering (the default one joined machines to sort).
    newest = ConfigBundle.objects.filter(
        machine=OuterRef("pk"), serial=OuterRef("bundle_serial")
    ).order_by()
    return queryset.annotate(
        newest_bundle_status=Subquery(newest.values("status")[:1]),
        newest_bundle_error=Subquery(newest.values("error")[:1]),
    )


def machine_status(*, machine: Machine, now: datetime | None = None) -> MachineStatus:
    """What the host does with its newest bundle, from the machine row (annotated by
    :func:`machines_with_bundle_status`, else one query here).

    In order: retired; never seen; stale (silent for ``AGENT_STALE_MINUTES``); its
    newest bundle rejected or failed; pending (signed, not applied yet); applied
    partially (a part of enforcement off, or one the agent did not report); applied
    and enforcing, the only healthy one.
    """
    if not hasattr(machine, "newest_bundle_status"):
        found = ConfigBundle.objects.filter(machine=machine, serial=machine.bundle_serial)
        row = found.values_list("status", "error").first()
        machine.newest_bundle_status, machine.newest_bundle_error = row or (None, None)  # type: ignore[attr-defined]
    bundle_status: str | None = machine.newest_bundle_status  # type: ignore[attr-defined]
    error: str = machine.newest_bundle_error or ""  # type: ignore[attr-defined]
    parts = enforcement_parts(enforcement=machine.enforcement)

    def status(value: AgentStatus, reason: str) -> MachineStatus:
        return MachineStatus(value.value, reason, bundle_status, parts)

    serial = machine.bundle_serial
    if machine.state == MachineState.RETIRED:
        return status(AgentStatus.RETIRED, "retired: it holds no slices")
    if machine.last_seen is None:
        return status(AgentStatus.NEVER_SEEN, "its agent has never reported")
    if machine.last_seen < stale_cutoff(now=now):
        silent = settings.AGENT_STALE_MINUTES
        return status(AgentStatus.STALE, f"its agent has been silent for over {silent} minutes")
    if bundle_status == BundleStatus.REJECTED:
        return status(AgentStatus.REJECTED, f"bundle {serial} rejected: {error or 'no reason'}")
    if bundle_status == BundleStatus.FAILED:
        return status(AgentStatus.FAILED, f"bundle {serial} failed: {error or 'no reason'}")
    if serial == 0 or machine.applied_serial < serial:
        return status(AgentStatus.PENDING, f"bundle {serial} signed, not applied yet")
    failed = [f"{p.name}: {p.detail}" for p in parts if p.state == "failed"]
    if failed:  # an ack said applied, a later report says otherwise
        return status(AgentStatus.FAILED, "; ".join(failed))
    off = [f"{p.name} {p.state}: {p.detail}" for p in parts if p.state != "on"]
    if off:
        return status(AgentStatus.PARTIAL, "; ".join(off))
    return status(AgentStatus.ENFORCING, f"bundle {serial} applied, every part enforcing")


def machine_status_counts(*, datacenter: Datacenter | None = None) -> dict[str, dict[str, int]]:
    """Machines per status, per datacenter code (every status present, zeros included)."""
    machines = Machine.objects.select_related("datacenter").only(
        "state", "last_seen", "applied_serial", "bundle_serial", "enforcement", "datacenter__code"
    )
    if datacenter is not None:
        machines = machines.filter(datacenter=datacenter)
    now = timezone.now()
    counts: dict[str, dict[str, int]] = {}
    for machine in machines_with_bundle_status(machines):
        zeros = dict.fromkeys(AgentStatus.values, 0)
        per_status = counts.setdefault(machine.datacenter.code, zeros)
        per_status[machine_status(machine=machine, now=now).status] += 1
    return counts


# The exhaustion forecast: demand history per pool, fitted by planner/forecast.py.

# Per machine id: when it joined and its weight.
Members = dict[int, tuple[datetime, int]]
# Per (machine id, step index): the most sockets it had in the pool at one report.
Peaks = dict[tuple[int, int], int]


def pool_demand_history(
    *,
    pool: EgressPool,
    members: Members,
    peaks: Peaks,
    hot: float,
    now: datetime,
    step: timedelta,
    since: datetime,
) -> list[forecast.DemandPoint]:
    """The slices ``pool``'s machines needed at each ``step`` from ``since`` to ``now``.

    At each point every machine that had joined by then (and is not retired now)
    needs its base slices (``weight`` x ``slices_per_machine``), and more when its
    high-water sockets in the pool during that step would run its slices above
    the datacenter's ``hot`` threshold, up to its growth ceiling: what rebalance
    would give it. The history starts at the first join after ``since``.
    """
    if not members:
        return []
    first = min(joined for joined, _ in members.values())
    # Points on the grid of steps from ``since``, so each point's step is its own.
    at = since + step * max((first - since) // step, 0)
    points = []
    while True:
        at = min(at + step, now)
        index = _step_index(at, since, step)
        need = sum(
            _machine_need(pool, weight, peaks.get((pk, index), 0), hot)
            for pk, (joined, weight) in members.items()
            if joined <= at
        )
        points.append(forecast.DemandPoint(at=at, slices=need))
        if at >= now:
            return points


def _step_index(at: datetime, since: datetime, step: timedelta) -> int:
    """The step a time falls in (a step ends at its point: (end - step, end])."""
    return max(-(-(at - since) // step) - 1, 0)


def _machine_need(pool: EgressPool, weight: int, sockets: int, hot: float) -> int:
    base = weight * pool.slices_per_machine
    ceiling = weight * (pool.max_slices_per_machine or pool.slices_per_machine)
    wanted = -(-sockets // max(int(hot * pool.slice_size), 1))
    return max(base, min(wanted, ceiling))


def _forecast_members(pools: QuerySet[EgressPool] | None = None) -> dict[int, Members]:
    """Per pool id: its machines that are not retired, with join time and weight.

    Each machine's join time and weight read once, the memberships as id pairs:
    reading them per membership converted 40,000 timestamps for 1,000 machines.
    """
    links = Machine.pools.through.objects.exclude(machine__state=MachineState.RETIRED)
    if pools is not None:
        links = links.filter(egresspool__in=pools)
    machines = Machine.objects.filter(pk__in=links.values("machine_id")).order_by()
    joined = {
        pk: (at, weight) for pk, at, weight in machines.values_list("pk", "joined_at", "weight")
    }
    members: dict[int, Members] = {}
    for pool_id, machine_id in links.order_by().values_list("egresspool_id", "machine_id"):
        members.setdefault(pool_id, {})[machine_id] = joined[machine_id]
    return members


# The units SQL truncates report times to, largest first: a step is cut into whole units.
TRUNC_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def forecast_unit(step: timedelta) -> tuple[str, int]:
    """The largest truncation unit that divides ``step`` (name, seconds)."""
    seconds = int(step.total_seconds())
    return next((name, size) for name, size in TRUNC_UNITS if seconds % size == 0)


def forecast_since(now: datetime, step: timedelta) -> datetime:
    """Where the history starts: ``USAGE_RETENTION_DAYS`` back, on a unit boundary, so
    every step is whole units and every unit falls in one step."""
    _, size = forecast_unit(step)
    start = (now - timedelta(days=settings.USAGE_RETENTION_DAYS)).timestamp()
    return datetime.fromtimestamp(start - start % size, tz=UTC)


def _forecast_peaks(
    *, since: datetime, step: timedelta, ips: QuerySet[EgressIP]
) -> dict[int, Peaks]:
    """Per pool id: each machine's peak sockets per step.

    The database returns each slice's highest report per unit (an hour for the
    default step), not every report; a machine's peak in a unit is the sum of its
    slices' peaks there (they may come from different reports: it errs high), and
    its peak in a step the highest of its units. ``since`` is on a unit boundary.
    """
    pool_of = dict(ips.values_list("address", "pool_id"))
    unit, size = forecast_unit(step)
    rows = (
        UsageSample.objects.filter(at__gte=since, ip__in=list(pool_of))
        .annotate(unit_start=Trunc("at", unit, tzinfo=UTC))
        .values_list("machine_id", "ip", "lo", "unit_start")
        .annotate(peak=Max("sockets"))
        .order_by()
    )
    per_unit: dict[tuple[int, int, datetime], int] = {}
    for machine_id, ip, _, unit_start, peak in rows:
        key = (pool_of[ip], machine_id, unit_start)
        per_unit[key] = per_unit.get(key, 0) + peak
    peaks: dict[int, Peaks] = {}
    for (pool_id, machine_id, unit_start), sockets in per_unit.items():
        per_pool = peaks.setdefault(pool_id, {})
        # A unit [start, start + size) lies in the step that ends at or after its end.
        slot = (machine_id, _step_index(unit_start + timedelta(seconds=size), since, step))
        per_pool[slot] = max(per_pool.get(slot, 0), sockets)
    return peaks


def _hot_thresholds() -> dict[int, float]:
    """Per datacenter id with a saved policy: its ``hot``; the rest use the default."""
    return dict(RebalancePolicy.objects.values_list("datacenter_id", "hot"))


def pool_outlooks(
    *,
    pools: QuerySet[EgressPool] | None = None,
    headroom: list[alloc.PoolHeadroom] | None = None,
    now: datetime | None = None,
) -> list[tuple[EgressPool, forecast.PoolForecast]]:
    """Each pool (all, or ``pools``) with its exhaustion forecast (settings ``FORECAST_*``),
    ordered by key: a fixed number of queries, however many pools there are.
    ``headroom`` spares a second :func:`pool_headroom` to a caller that has it."""
    now = now or timezone.now()
    chosen = pools if pools is not None else EgressPool.objects.all()
    chosen = chosen.select_related("datacenter")
    step = timedelta(seconds=settings.FORECAST_STEP_SECONDS)
    since = forecast_since(now, step)
    headrooms = {row.pool: row for row in (pool_headroom() if headroom is None else headroom)}
    members = _forecast_members(chosen)
    peaks = _forecast_peaks(since=since, step=step, ips=EgressIP.objects.filter(pool__in=chosen))
    hot = _hot_thresholds()
    default_hot = RebalancePolicy().hot
    result = []
    for pool in sorted(chosen, key=lambda pool: pool.key):
        history = pool_demand_history(
            pool=pool,
            members=members.get(pool.pk, {}),
            peaks=peaks.get(pool.pk, {}),
            hot=hot.get(pool.datacenter_id, default_hot),
            now=now,
            step=step,
            since=since,
        )
        room = headrooms.get(pool.key)  # none: the pool has no IP yet
        outlook = forecast.pool_forecast(
            history=history,
            capacity=room.slots_total if room else 0,
            slots_per_ip=room.slots_per_ip if room else USABLE_PORT_COUNT // pool.slice_size,
            now=now,
            horizon=timedelta(days=settings.FORECAST_HORIZON_DAYS),
            min_span=timedelta(seconds=settings.FORECAST_MIN_HISTORY_SECONDS),
        )
        result.append((pool, outlook))
    return result


RECENT_OUTLOOKS_KEY = "portslice:pool-outlooks"


def pool_outlooks_recent(
    *, headroom: list[alloc.PoolHeadroom] | None = None
) -> list[tuple[EgressPool, forecast.PoolForecast]]:
    """:func:`pool_outlooks` of every pool, reused for one forecast step (at most a
    minute): it reads the whole usage history, and a scrape every 15 seconds or each
    overview need not, since a new demand point comes once a step."""
    found: list[tuple[EgressPool, forecast.PoolForecast]] | None = cache.get(RECENT_OUTLOOKS_KEY)
    if found is None:
        found = pool_outlooks(headroom=headroom)
        cache.set(RECENT_OUTLOOKS_KEY, found, timeout=min(settings.FORECAST_STEP_SECONDS, 60))
    return found


def pool_outlook(*, pool: EgressPool, now: datetime | None = None) -> forecast.PoolForecast:
    """The exhaustion forecast of one pool."""
    ((_, outlook),) = pool_outlooks(pools=EgressPool.objects.filter(pk=pool.pk), now=now)
    return outlook


def pools_running_out(
    *, now: datetime | None = None
) -> list[tuple[EgressPool, forecast.PoolForecast]]:
    """Pools out of free slots now or forecast to run out within ``FORECAST_HORIZON_DAYS``,
    soonest first."""
    found = [
        (pool, outlook)
        for pool, outlook in pool_outlooks_recent()
        if outlook.exhausts_at is not None
        and outlook.horizon_at is not None
        and outlook.exhausts_at <= outlook.horizon_at
    ]
    return sorted(found, key=lambda item: (item[1].exhausts_at, item[0].key))


# Saturation: what the alert rules (deploy/prometheus/alerts.yml) watch.


def pool_high_water(*, now: datetime | None = None) -> dict[str, float]:
    """Per pool key: the highest utilization any machine reached in it over its
    datacenter's rebalance window (the high-water mark rebalance grows by)."""
    now = now or timezone.now()
    windows = dict(RebalancePolicy.objects.values_list("datacenter_id", "window_minutes"))
    default = RebalancePolicy().window_minutes
    peaks: dict[str, float] = {}
    for datacenter in Datacenter.objects.order_by("code"):
        window = timedelta(minutes=windows.get(datacenter.pk, default))
        levels = usage_high_water(datacenter=datacenter, since=now - window)
        for (_, pool), level in levels.items():
            peaks[pool] = max(level, peaks.get(pool, 0.0))
    return peaks


def pool_slices_hot() -> dict[str, int]:
    """Per pool key: live slices whose latest report is above their datacenter's ``hot``."""
    hot = _hot_thresholds()
    default = RebalancePolicy().hot
    counts = {pool.key: 0 for pool in EgressPool.objects.select_related("datacenter")}
    rows = PortSlice.objects.filter(usage__isnull=False).values_list(
        "lo",
        "hi",
        "usage__tcp",
        "usage__udp",
        "ip__pool__datacenter_id",
        "ip__pool__datacenter__code",
        "ip__pool__purpose",
        "ip__pool__country",
        "ip__pool__region",
        "ip__pool__city",
    )
    for lo, hi, tcp, udp, dc_id, *key in rows:
        if (tcp + udp) / (hi - lo + 1) > hot.get(dc_id, default):
            pool = "/".join(part for part in key if part)
            counts[pool] = counts.get(pool, 0) + 1
    return counts


def bundle_oldest_unapplied(*, now: datetime | None = None) -> dict[str, float]:
    """Per datacenter code: seconds since the oldest bundle signed and not yet applied
    by its (not retired) machine was signed; absent when every agent is current."""
    now = now or timezone.now()
    rows = (
        ConfigBundle.objects.filter(serial__gt=F("machine__applied_serial"))
        .exclude(machine__state=MachineState.RETIRED)
        .exclude(status=BundleStatus.APPLIED)
        .values_list("machine__datacenter__code")
        .annotate(oldest=Min("created_at"))
        .order_by()
    )
    return {code: (now - oldest).total_seconds() for code, oldest in rows}


def gateway_revision_lag() -> list[tuple[str, str, int]]:
    """Each gateway (datacenter code, name) and how many revisions it runs behind
    the datacenter's newest applied one."""
    newest = dict(
        PlanRevision.objects.filter(applied_at__isnull=False)
        .values_list("datacenter_id")
        .annotate(n=Max("number"))
        .order_by()
    )
    return [
        (gateway.datacenter.code, gateway.name, max(newest.get(dc, 0) - gateway.revision, 0))
        for gateway in gateways()
        for dc in [gateway.datacenter_id]
    ]


def reconcile_backlog() -> dict[str, int]:
    """Bundles reconcile would resend now, per datacenter code."""
    rows = bundles_due().values_list("machine__datacenter__code").annotate(n=Count("id")).order_by()
    return dict(rows)
