"""Reads for the operator UI: overview cards, the pools table, a machine's state and
usage history, what-if capacity. Reads only; every figure in a fixed number of
queries whatever the size of the datacenter.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.core.cache import cache
from django.db.models import Count, F, Max, Sum
from django.db.models.functions import TruncMinute
from django.utils import timezone

import allocator as alloc
from allocator.capacity import typical_usable
from planner.choices import BundleStatus, MachineState, RevisionStatus
from planner.models import (
    AuditEntry,
    ConfigBundle,
    Datacenter,
    EgressIP,
    EgressPool,
    Machine,
    PlanRevision,
    PortSlice,
    SliceUsage,
    UsageSample,
)
from planner.selectors import planner_inputs, pool_headroom

# An agent that has said nothing for this long is shown as stale.
STALE_AFTER = timedelta(minutes=5)
PEAK_WINDOW = timedelta(hours=1)
HISTORY_WINDOW = timedelta(hours=24)
WHAT_IF_DRAIN = timedelta(hours=1)
HEADROOM_CACHE_SECONDS = 600


@dataclass
class MachineHealth:
    ok: int = 0
    stale: int = 0
    never_seen: int = 0
    rejected: int = 0
    lagging: int = 0
    retired: int = 0

    @property
    def total(self) -> int:
        return self.ok + self.stale + self.never_seen + self.rejected + self.retired


@dataclass
class DatacenterCard:
    datacenter: Datacenter
    machines: MachineHealth
    ips: int
    pools: int
    sockets: int
    ports_handed_out: int
    short_pools: list[alloc.PoolHeadroom]
    last_revision: PlanRevision | None

    @property
    def use(self) -> float:
        return self.sockets / self.ports_handed_out if self.ports_handed_out else 0.0


def machine_status(machine: Machine, *, rejected: bool, now: datetime) -> str:
    """ok, stale, never seen, rejected (its newest bundle was refused) or retired."""
    if machine.state == MachineState.RETIRED:
        return "retired"
    if rejected:
        return "rejected"
    if machine.last_seen is None:
        return "never seen"
    return "stale" if now - machine.last_seen > STALE_AFTER else "ok"


def machine_health(*, datacenter: Datacenter, now: datetime | None = None) -> MachineHealth:
    now = now or timezone.now()
    rejected = set(
        ConfigBundle.objects.filter(
            machine__datacenter=datacenter,
            serial=F("machine__bundle_serial"),
            status=BundleStatus.REJECTED,
        ).values_list("machine_id", flat=True)
    )
    health = MachineHealth()
    for machine in Machine.objects.filter(datacenter=datacenter).only(
        "pk", "state", "last_seen", "applied_serial", "bundle_serial"
    ):
        status = machine_status(machine, rejected=machine.pk in rejected, now=now)
        name = status.replace(" ", "_")
        setattr(health, name, getattr(health, name) + 1)
        if machine.state != MachineState.RETIRED and machine.applied_serial < machine.bundle_serial:
            health.lagging += 1
    return health


def overview_cards(*, now: datetime | None = None) -> list[DatacenterCard]:
    """One card per datacenter: machines, IPs, pools, use, short pools, last plan."""
    headroom = defaultdict(list)
    for row in pool_headroom():
        headroom[row.pool.split("/", 1)[0]].append(row)
    ips = dict(EgressIP.objects.values_list("pool__datacenter").annotate(n=Count("id")).order_by())
    pools = dict(EgressPool.objects.values_list("datacenter").annotate(n=Count("id")).order_by())
    handed = dict(
        PortSlice.objects.values_list("ip__pool__datacenter")
        .annotate(n=Sum(F("hi") - F("lo") + 1))
        .order_by()
    )
    sockets = dict(
        SliceUsage.objects.values_list("slice__ip__pool__datacenter")
        .annotate(n=Sum(F("tcp") + F("udp")))
        .order_by()
    )
    cards = []
    for dc in Datacenter.objects.all():
        cards.append(
            DatacenterCard(
                datacenter=dc,
                machines=machine_health(datacenter=dc, now=now),
                ips=ips.get(dc.pk, 0),
                pools=pools.get(dc.pk, 0),
                sockets=sockets.get(dc.pk) or 0,
                ports_handed_out=handed.get(dc.pk) or 0,
                short_pools=[row for row in headroom[dc.code] if row.ips_needed],
                last_revision=PlanRevision.objects.filter(
                    datacenter=dc, status=RevisionStatus.APPLIED
                )
                .order_by("-number")
                .first(),
            )
        )
    return cards


@dataclass
class PoolRow:
    pool: EgressPool
    ips: int
    machines_served: int
    slices: int
    ports_handed_out: int
    sockets: int
    peak: float | None
    headroom: alloc.PoolHeadroom | None

    @property
    def use(self) -> float | None:
        return self.sockets / self.ports_handed_out if self.ports_handed_out else None


def pool_rows(*, datacenter: Datacenter, now: datetime | None = None) -> list[PoolRow]:
    """The pools table of a datacenter page."""
    now = now or timezone.now()
    pools = list(
        EgressPool.objects.filter(datacenter=datacenter).order_by(
            "purpose", "country", "region", "city", "pk"
        )
    )
    # Two small GROUP BYs, not one join of pools x IPs x machines (4 million rows at scale).
    ips = dict(
        EgressIP.objects.filter(pool__datacenter=datacenter)
        .values_list("pool_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    served = dict(
        Machine.pools.through.objects.filter(
            egresspool__datacenter=datacenter, machine__state=MachineState.ACTIVE
        )
        .values_list("egresspool_id")
        .annotate(n=Count("machine_id"))
        .order_by()
    )
    for pool in pools:
        pool.datacenter = datacenter
    slices = {
        pool_id: (n, ports)
        for pool_id, n, ports in PortSlice.objects.filter(ip__pool__datacenter=datacenter)
        .values_list("ip__pool_id")
        .annotate(n=Count("id"), ports=Sum(F("hi") - F("lo") + 1))
        .order_by()
        .values_list("ip__pool_id", "n", "ports")
    }
    sockets = dict(
        SliceUsage.objects.filter(slice__ip__pool__datacenter=datacenter)
        .values_list("slice__ip__pool_id")
        .annotate(n=Sum(F("tcp") + F("udp")))
        .order_by()
    )
    peaks = _pool_peaks(datacenter, slices, now)
    headroom = datacenter_headroom(datacenter=datacenter)
    return [
        PoolRow(
            pool=pool,
            ips=ips.get(pool.pk, 0),
            machines_served=served.get(pool.pk, 0),
            slices=slices.get(pool.pk, (0, 0))[0],
            ports_handed_out=slices.get(pool.pk, (0, 0))[1] or 0,
            sockets=sockets.get(pool.pk) or 0,
            peak=peaks.get(pool.pk),
            headroom=headroom.get(pool.key),
        )
        for pool in pools
    ]


def datacenter_headroom(*, datacenter: Datacenter) -> dict[str, alloc.PoolHeadroom]:
    """Room per pool key now, counted by the allocator (no planning).

    Counting means loading every live slice (over a second at 80,000), so the
    answer is cached under the newest audit entry: every write it depends on
    (inventory rows, pools served, slices written by a plan) is audited, and
    a new entry makes a new key. Usage and agent acks do not change it.
    """
    newest = AuditEntry.objects.aggregate(newest=Max("id"))["newest"] or 0
    key = f"portslice:headroom:{datacenter.pk}:{newest}"
    found: dict[str, alloc.PoolHeadroom] | None = cache.get(key)
    if found is None:
        inputs = planner_inputs(datacenter=datacenter)
        found = dict(
            alloc.headroom(
                ips=inputs.ips,
                machines=inputs.machines,
                slices=inputs.previous,
                policies=inputs.policies,
            )
        )
        cache.set(key, found, HEADROOM_CACHE_SECONDS)
    return found


def _pool_peaks(
    datacenter: Datacenter, slices: dict[int, tuple[int, int]], now: datetime
) -> dict[int, float]:
    """The highest pool-wide use of any minute in the last ``PEAK_WINDOW``."""
    pool_of = dict(
        EgressIP.objects.filter(pool__datacenter=datacenter).values_list("address", "pool_id")
    )
    per_minute: dict[tuple[int, datetime], int] = defaultdict(int)
    for ip, minute, sockets in (
        UsageSample.objects.filter(machine__datacenter=datacenter, at__gte=now - PEAK_WINDOW)
        .annotate(minute=TruncMinute("at"))
        .values_list("ip", "minute")
        .annotate(n=Sum("sockets"))
        .order_by()
        .values_list("ip", "minute", "n")
    ):
        if ip in pool_of:
            per_minute[(pool_of[ip], minute)] += sockets
    peaks: dict[int, float] = {}
    for (pool_id, _), sockets in per_minute.items():
        ports = slices.get(pool_id, (0, 0))[1]
        if ports:
            peaks[pool_id] = max(peaks.get(pool_id, 0.0), sockets / ports)
    return peaks


@dataclass
class BundleState:
    signed: int
    sent: int | None
    applied: int
    latest: ConfigBundle | None
    rejected: ConfigBundle | None


def bundle_state(*, machine: Machine) -> BundleState:
    bundles = ConfigBundle.objects.filter(machine=machine).defer("token")
    sent = bundles.filter(sent_at__isnull=False).aggregate(n=Max("serial"))["n"]
    return BundleState(
        signed=machine.bundle_serial,
        sent=sent,
        applied=machine.applied_serial,
        latest=bundles.order_by("-serial").first(),
        rejected=bundles.filter(status=BundleStatus.REJECTED).order_by("-serial").first(),
    )


def machine_slices(*, machine: Machine) -> list[PortSlice]:
    """Its live slices with their latest usage; ``use`` is sockets ÷ ports, or None."""
    slices = list(
        PortSlice.objects.filter(machine=machine)
        .select_related("ip__pool", "usage")
        .order_by("ip__pool__purpose", "ip__pool__country", "ip__address", "lo")
    )
    for slice_ in slices:
        usage = getattr(slice_, "usage", None)
        sockets = usage.tcp + usage.udp if usage else None
        slice_.sockets = sockets  # type: ignore[attr-defined]
        slice_.use = sockets / slice_.size if sockets is not None else None  # type: ignore[attr-defined]
    return slices


def usage_history(
    *, machine: Machine, now: datetime | None = None
) -> list[tuple[str, list[datetime], list[float]]]:
    """Per slice (ip:lo-hi): sample times and sockets in use ÷ ports, oldest first."""
    since = (now or timezone.now()) - HISTORY_WINDOW
    series: dict[str, tuple[list[datetime], list[float]]] = {}
    for ip, lo, hi, at, sockets in (
        UsageSample.objects.filter(machine=machine, at__gte=since)
        .order_by("at")
        .values_list("ip", "lo", "hi", "at", "sockets")
    ):
        times, values = series.setdefault(f"{ip}:{lo}-{hi}", ([], []))
        times.append(at)
        values.append(round(sockets / (hi - lo + 1), 4))
    return [(name, times, values) for name, (times, values) in sorted(series.items())]


# What-if: the allocator on a copy of the inputs, writing nothing.


@dataclass(frozen=True)
class WhatIf:
    pool: EgressPool
    add_machines: int = 0
    add_ips: int = 0
    slice_size: int | None = None
    slices_per_machine: int | None = None


@dataclass
class WhatIfResult:
    question: WhatIf
    capacity: dict[str, alloc.PoolCapacity] = field(default_factory=dict)
    shortfalls: tuple[alloc.Shortfall, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.shortfalls and not self.error

    @property
    def ips_needed(self) -> int:
        return sum(s.ips_needed for s in self.shortfalls if s.pool == self.question.pool.key)


def what_if(*, datacenter: Datacenter, question: WhatIf, now: datetime | None = None) -> Any:
    """Capacity and IPs needed if the question's change were made: planned, not written."""
    inputs = planner_inputs(datacenter=datacenter)
    key = question.pool.key
    machines = list(inputs.machines) + [
        alloc.Machine(name=f"what-if-machine-{n}", pools=frozenset({key}))
        for n in range(1, question.add_machines + 1)
    ]
    usable = typical_usable(ip for ip in inputs.ips if ip.pool == key)
    ips = list(inputs.ips) + [
        alloc.EgressIP(address=f"what-if-ip-{n}", pool=key, usable=usable)
        for n in range(1, question.add_ips + 1)
    ]
    policies = dict(inputs.policies)
    changes: dict[str, Any] = {
        name: value
        for name, value in (
            ("slice_size", question.slice_size),
            ("slices_per_machine", question.slices_per_machine),
        )
        if value
    }
    result = WhatIfResult(question)
    try:
        policies[key] = alloc.validate_policy(replace(policies[key], **changes))
        plan = alloc.plan(
            ips=ips,
            machines=machines,
            previous=inputs.previous,
            policies=policies,
            now=now or timezone.now(),
            drain_for=WHAT_IF_DRAIN,
        )
    except alloc.CapacityError as error:
        result.shortfalls = error.shortfalls
    except alloc.PolicyError as error:
        result.error = str(error)
    else:
        result.capacity = dict(plan.capacity)
    return result
