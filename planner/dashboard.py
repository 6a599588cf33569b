"""Reads for the operator UI: overview cards, the pools table, a machine's state and
usage history, what-if capacity. Reads only; every figure in a fixed number of
queries whatever the size of the datacenter.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Count, F, Max, Sum
from django.db.models.functions import TruncHour, TruncMinute
from django.utils import timezone

import allocator as alloc
from allocator.capacity import typical_usable
from planner.choices import AgentStatus, BundleStatus, MachineState, RevisionStatus
from planner.constants import USABLE_PORT_COUNT
from planner.headroom import datacenter_headroom
from planner.models import (
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
from planner.selectors import machine_status_counts, planner_inputs, pool_headroom, rebalance_policy

PEAK_WINDOW = timedelta(hours=1)
HISTORY_WINDOW = timedelta(hours=24)
WHAT_IF_DRAIN = timedelta(hours=1)


#: How each status is shown: only "applied and enforcing" is green.
STATUS_CLASS = {
    AgentStatus.ENFORCING: "ok",
    AgentStatus.PARTIAL: "warn",
    AgentStatus.PENDING: "warn",
    AgentStatus.STALE: "warn",
    AgentStatus.NEVER_SEEN: "warn",
    AgentStatus.FAILED: "bad",
    AgentStatus.REJECTED: "bad",
    AgentStatus.RETIRED: "muted",
}


@dataclass(frozen=True)
class StatusCount:
    status: str
    label: str
    count: int
    css: str


@dataclass
class MachineHealth:
    """A datacenter's machines per status (``selectors.machine_status``)."""

    counts: dict[str, int]
    lagging: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def enforcing(self) -> int:
        return self.counts.get(AgentStatus.ENFORCING, 0)

    @property
    def rows(self) -> list[StatusCount]:
        """Applied and enforcing first (always), then every other status that has machines."""
        return [
            StatusCount(status.value, status.label, n, STATUS_CLASS[status] if n else "")
            for status in AgentStatus
            if (n := self.counts.get(status, 0)) or status == AgentStatus.ENFORCING
        ]


@dataclass
class DatacenterCard:
    datacenter: Datacenter
    machines: MachineHealth
    ips: int
    pools: int
    sockets: int | None  # None: no agent of it has reported, which is not idle
    ports_handed_out: int
    short_pools: list[alloc.PoolHeadroom]
    last_revision: PlanRevision | None

    @property
    def use(self) -> float | None:
        if self.sockets is None or not self.ports_handed_out:
            return None
        return self.sockets / self.ports_handed_out


def machine_health(*, datacenter: Datacenter) -> MachineHealth:
    counts = machine_status_counts(datacenter=datacenter).get(datacenter.code, {})
    lagging = (
        Machine.objects.filter(datacenter=datacenter, applied_serial__lt=F("bundle_serial"))
        .exclude(state=MachineState.RETIRED)
        .count()
    )
    return MachineHealth(counts=counts, lagging=lagging)


def overview_cards() -> list[DatacenterCard]:
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
                machines=machine_health(datacenter=dc),
                ips=ips.get(dc.pk, 0),
                pools=pools.get(dc.pk, 0),
                sockets=sockets.get(dc.pk),
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


@dataclass(frozen=True)
class RebalanceOutlook:
    """What scheduled rebalancing will do with an inventory change, in words."""

    enabled: bool
    auto_apply: bool
    interval_minutes: int
    last_run: datetime | None
    next_run: datetime | None

    @property
    def sentence(self) -> str:
        if not self.enabled:
            return "Rebalancing is off: changes wait for a plan you apply."
        every = f"every {self.interval_minutes} minute{'s' if self.interval_minutes != 1 else ''}"
        if not self.auto_apply:
            return (
                f"Rebalancing runs {every} and leaves each plan as a draft for an operator "
                "(auto-apply is off): changes wait for a plan you apply or approve."
            )
        when = f" (next after {self.next_run:%H:%M} UTC)" if self.next_run else ""
        return (
            f"Rebalancing runs {every}{when}: it applies on its own a plan that only adds "
            "(new machines, growth, freed drains); a plan that drains a live slice waits "
            "as a draft for an operator."
        )


def use_thresholds(*, datacenter: Datacenter) -> tuple[float, float]:
    """Where a pool's use bar turns amber (the policy's hot threshold) and red (halfway
    from there to full): the rebalancer grows machines above hot, so a pool there is busy."""
    hot = rebalance_policy(datacenter=datacenter).hot
    return hot, round(hot + (1 - hot) / 2, 4)


def rebalance_outlook(*, datacenter: Datacenter) -> RebalanceOutlook:
    """Whether, and when, rebalancing will apply the datacenter's pending changes itself."""
    policy = rebalance_policy(datacenter=datacenter)
    last = policy.last_run_at
    return RebalanceOutlook(
        enabled=policy.enabled,
        auto_apply=policy.auto_apply,
        interval_minutes=policy.interval_minutes,
        last_run=last,
        next_run=last + timedelta(minutes=policy.interval_minutes) if last else None,
    )


@dataclass
class PoolRow:
    pool: EgressPool
    ips: int
    machines_served: int
    slices: int
    ports_handed_out: int
    sockets: int | None  # None: none of its slices reported
    peak: float | None
    headroom: alloc.PoolHeadroom | None

    @property
    def use(self) -> float | None:
        if self.sockets is None or not self.ports_handed_out:
            return None
        return self.sockets / self.ports_handed_out


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
            sockets=sockets.get(pool.pk),
            peak=peaks.get(pool.pk),
            headroom=headroom.get(pool.key),
        )
        for pool in pools
    ]


def _pool_highs(
    *, datacenter: Datacenter, since: datetime, unit: type[TruncMinute] | type[TruncHour]
) -> dict[tuple[int, Any], list[int]]:
    """Per (pool id, ``unit`` of time) since ``since``: [sockets, ports sampled], where
    sockets are each slice's high-water of that unit capped at its size, summed.

    An agent may report several times a unit: summing every report counted one
    socket several times, so the peak went past 100 %. Two GROUP BYs in SQL: per
    slice and unit, then per IP and unit; the pools are added up here.
    """
    pool_of = dict(
        EgressIP.objects.filter(pool__datacenter=datacenter).values_list("address", "pool_id")
    )
    highs = (
        UsageSample.objects.filter(machine__datacenter=datacenter, at__gte=since)
        .annotate(unit=unit("at"))
        .values_list("ip", "lo", "hi", "unit")
        .annotate(high=Max("sockets"))
        .order_by()
    )
    inner, params = highs.query.sql_with_params()
    per_ip = (
        "SELECT ip, unit,"
        " SUM(CASE WHEN high < hi - lo + 1 THEN high ELSE hi - lo + 1 END),"
        " SUM(hi - lo + 1)"
        f" FROM ({inner}) AS highs GROUP BY ip, unit"
    )
    totals: dict[tuple[int, Any], list[int]] = defaultdict(lambda: [0, 0])
    with connection.cursor() as cursor:
        cursor.execute(per_ip, params)
        for ip, moment, sockets, ports in cursor.fetchall():
            if str(ip) in pool_of:  # psycopg may load inet as an address object
                total = totals[(pool_of[str(ip)], moment)]
                total[0] += sockets
                total[1] += ports
    return totals


def _pool_peaks(
    datacenter: Datacenter, slices: dict[int, tuple[int, int]], now: datetime
) -> dict[int, float]:
    """The highest pool-wide use of any minute in the last ``PEAK_WINDOW``.

    Per slice the high-water of the minute (an agent may report several times a
    minute: summing them counted one socket six times), capped at the slice's
    size, then summed over the pool; divided by the larger of the ports handed
    out now and the ports of the slices sampled that minute (a slice drained
    since still counts its ports). So a peak is never above 100 %.
    """
    per_minute = _pool_highs(datacenter=datacenter, since=now - PEAK_WINDOW, unit=TruncMinute)
    peaks: dict[int, float] = {}
    for (pool_id, _), (sockets, sampled) in per_minute.items():
        ports = max(slices.get(pool_id, (0, 0))[1] or 0, sampled)
        if ports:
            peaks[pool_id] = max(peaks.get(pool_id, 0.0), sockets / ports)
    return peaks


@dataclass
class UseOverTime:
    """Per pool and hour of the last ``HISTORY_WINDOW``: the high-water use, or None."""

    hours: list[datetime]
    pools: list[str]
    use: list[list[float | None]]  # [pool][hour]


def pool_use_over_time(
    *,
    datacenter: Datacenter,
    now: datetime | None = None,
    handed: dict[int, int] | None = None,
) -> UseOverTime:
    """Each pool's utilization per hour over the last 24 h, from the usage samples.

    Per slice the high-water of the hour (capped at its size), summed over the
    pool, divided by the larger of the ports handed out now and the ports of the
    slices sampled that hour (as the peak): never above 100 %, and an hour
    without a sample is None (no report), not 0 %. ``handed``, the ports handed
    out per pool id, spares the pools table's page a second sum.
    """
    now = now or timezone.now()
    first = (now - HISTORY_WINDOW).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    hours = [first + timedelta(hours=n) for n in range(24)]
    pools = list(
        EgressPool.objects.filter(datacenter=datacenter)
        .select_related("datacenter")
        .order_by("purpose", "country", "region", "city", "pk")
    )
    highs = _pool_highs(datacenter=datacenter, since=first, unit=TruncHour)
    totals = {(pool_id, _as_aware(hour)): total for (pool_id, hour), total in highs.items()}
    # Over the ports handed out now, as the pools table's use and peak (or the ports
    # that reported, if more: a slice since drained), so the three figures agree.
    if handed is None:
        handed = dict(
            PortSlice.objects.filter(ip__pool__datacenter=datacenter)
            .values_list("ip__pool_id")
            .annotate(ports=Sum(F("hi") - F("lo") + 1))
            .order_by()
        )
    use = [
        [
            round(sockets / max(handed.get(pool.pk) or 0, sampled), 4)
            if (pool.pk, hour) in totals
            else None
            for hour in hours
            for sockets, sampled in [totals.get((pool.pk, hour), (0, 1))]
        ]
        for pool in pools
    ]
    return UseOverTime(hours=hours, pools=[pool.key for pool in pools], use=use)


def _as_aware(moment: Any) -> datetime:
    """A truncated hour from a raw query: SQLite gives naive UTC (or text), PostgreSQL aware."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, UTC)
    return moment.astimezone(UTC)


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
    plan: alloc.Plan | None = None  # the hypothetical plan, for its picture
    usable: tuple[int, int] = (1024, 65535)  # of the what-if IPs (the pool's typical range)

    @property
    def ok(self) -> bool:
        return not self.shortfalls and not self.error

    @property
    def ips_needed(self) -> int:
        return sum(s.ips_needed for s in self.shortfalls if s.pool == self.question.pool.key)


# What one what-if may ask. It plans the whole datacenter with the question's
# machines and IPs added, so its cost grows with the slices the pool would
# hold: the question may ask for at most what the pool (its IPs plus the ones
# added) could ever hold, plus WHAT_IF_MARGIN_IPS more IPs' worth, and never
# more than WHAT_IF_MAX_SLICES slices in the pool. docs/benchmarks.md has the
# time and peak memory of the largest question allowed.
WHAT_IF_MAX_ADD_MACHINES = 10_000
WHAT_IF_MAX_ADD_IPS = 1_024
WHAT_IF_MAX_SLICES = 50_000
WHAT_IF_MARGIN_IPS = 64
ERR_WHAT_IF_SLICES = (
    "%(machines)s machines x %(per)s slices = %(slices)s slices in %(pool)s; a what-if may "
    "ask for at most %(limit)s (%(why)s)."
)


def what_if_refusal(*, question: WhatIf) -> str:
    """Why ``question`` is past the what-if's cost bounds, or '' when it may be planned."""
    pool = question.pool
    slice_size = question.slice_size or pool.slice_size
    per_machine = question.slices_per_machine or pool.slices_per_machine
    machines = question.add_machines + pool.machines.exclude(state=MachineState.RETIRED).count()
    ips = question.add_ips + pool.ips.count()
    slices = machines * per_machine
    slots_per_ip = USABLE_PORT_COUNT // slice_size
    could_hold = (ips + WHAT_IF_MARGIN_IPS) * slots_per_ip
    if slices > WHAT_IF_MAX_SLICES:
        limit, why = WHAT_IF_MAX_SLICES, "the most a what-if plans"
    elif slices > could_hold:
        limit = could_hold
        why = (
            f"{ips:,} IPs, plus {WHAT_IF_MARGIN_IPS} more, of {slots_per_ip:,} slots each; "
            f"ask with add_ips of at least {-(-slices // slots_per_ip) - pool.ips.count():,}"
        )
    else:
        return ""
    return ERR_WHAT_IF_SLICES % {
        "machines": f"{machines:,}",
        "per": f"{per_machine:,}",
        "slices": f"{slices:,}",
        "pool": pool.key,
        "limit": f"{limit:,}",
        "why": why,
    }


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
        result.plan = plan
        result.usable = (usable.lo, usable.hi)
    return result
