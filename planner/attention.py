"""Reads for the attention strip: what on a datacenter needs a person, first.

Drafts waiting for approval (with the picture of what they would do), inventory
changes no plan has applied yet and what rebalancing will do with them, slices
above the hot threshold, pools short of IPs. Reads only: a draft's picture is
a preview with the usage it was planned on, nothing is written.

Two slots are left for other reads: agents that are stale or never seen (the
machine status selector) and pools forecast to run out (the forecast module);
``templates/ui/_attention.html`` names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.core.cache import cache
from django.db import connection
from django.db.models import Count, F, FloatField, Value, Window
from django.db.models.functions import Cast, Collate, Least

import allocator as alloc
from planner import charts, forecast, heatmap
from planner.choices import AgentStatus, RevisionStatus
from planner.dashboard import RebalanceOutlook, rebalance_outlook
from planner.headroom import datacenter_headroom, newest_audit_entry
from planner.models import Datacenter, EgressPool, Gateway, PlanRevision, SliceUsage
from planner.selectors import (
    current_revision,
    machine_status_counts,
    pools_running_out,
    rebalance_policy,
)
from planner.services.plans import plan_preview
from planner.services.rebalance import draft_usage

# Hot slices listed by name; the rest are counted.
HOT_LISTED = 5
PENDING_CACHE_SECONDS = 60
CHANGE_KINDS = (
    ("added", "added"),
    ("draining", "start draining"),
    ("freed", "freed"),
    ("revived", "given back"),
)


def revision_counts(summary: dict[str, Any]) -> str:
    """ "2 added, 1 start draining" from a diff summary (a draft stores the draining
    slices' names as a list: it counts as their number, never printed as a list)."""
    parts = []
    for key, name in CHANGE_KINDS:
        value = summary.get(key, 0)
        count = len(value) if isinstance(value, list) else int(value or 0)
        if count:
            parts.append(f"{count} {name}")
    return ", ".join(parts) or "no slice changes"


@dataclass
class DraftView:
    """A waiting draft: its revision, what it changes, and the picture of it."""

    revision: PlanRevision
    changes: str
    draining: list[str]
    stale: bool
    payload: dict[str, Any] | None = None

    @property
    def element_id(self) -> str:
        return f"draft-{self.revision.datacenter.code}-{self.revision.number}"

    @property
    def data_id(self) -> str:
        return f"{self.element_id}-data"


@dataclass
class HotSlice:
    machine: str
    ip: str
    lo: int
    hi: int
    use: float


@dataclass
class Attention:
    datacenter: Datacenter
    outlook: RebalanceOutlook
    hot_threshold: float
    drafts: list[DraftView] = field(default_factory=list)
    pending: str = ""  # what a plan made now would change, in words ("" for nothing)
    hot: list[HotSlice] = field(default_factory=list)
    hot_count: int = 0
    short: list[alloc.PoolHeadroom] = field(default_factory=list)
    # (status label, machines) for agents that are not enforcing what they were sent.
    agents: list[tuple[str, int]] = field(default_factory=list)
    gateways_behind: list[Gateway] = field(default_factory=list)
    running_out: list[tuple[EgressPool, forecast.PoolForecast]] = field(default_factory=list)

    @property
    def quiet(self) -> bool:
        return not (
            self.drafts
            or self.pending
            or self.hot_count
            or self.short
            or self.agents
            or self.gateways_behind
            or self.running_out
        )


# The statuses a person must look at (pending settles by itself within seconds).
AGENT_PROBLEMS = (
    AgentStatus.FAILED,
    AgentStatus.REJECTED,
    AgentStatus.PARTIAL,
    AgentStatus.STALE,
    AgentStatus.NEVER_SEEN,
)


def datacenter_attention(
    *, datacenter: Datacenter, pictures: bool = True, counts: dict[str, int] | None = None
) -> Attention:
    """Everything on ``datacenter`` that waits for a person, most urgent first.

    ``counts``, machines per status, spares a page that shows them a second count."""
    policy = rebalance_policy(datacenter=datacenter)
    attention = Attention(
        datacenter=datacenter,
        outlook=rebalance_outlook(datacenter=datacenter),
        hot_threshold=policy.hot,
    )
    attention.drafts = [
        draft_view(revision=revision, pictures=pictures)
        for revision in PlanRevision.objects.filter(
            datacenter=datacenter, status=RevisionStatus.DRAFT
        )
        .select_related("datacenter")
        .order_by("-number")
    ]
    if not attention.drafts:
        # A waiting draft already is the pending change; otherwise say what planning would do.
        attention.pending = pending_changes(datacenter=datacenter)
    attention.hot_count, attention.hot = hot_slices(datacenter=datacenter, above=policy.hot)
    attention.short = [
        room for room in datacenter_headroom(datacenter=datacenter).values() if room.ips_needed
    ]
    if counts is None:
        counts = machine_status_counts(datacenter=datacenter).get(datacenter.code, {})
    attention.agents = [
        (status.label, counts[status.value])
        for status in AGENT_PROBLEMS
        if counts.get(status.value)
    ]
    latest = current_revision(datacenter=datacenter)
    attention.gateways_behind = list(
        Gateway.objects.filter(datacenter=datacenter, revision__lt=latest).order_by("name")
    )
    attention.running_out = [
        (pool, outlook)
        for pool, outlook in pools_running_out()
        if pool.datacenter_id == datacenter.pk
    ]
    return attention


def draft_view(*, revision: PlanRevision, pictures: bool = True) -> DraftView:
    """The draft with the diff picture of what approving it would apply.

    Approving re-plans with the usage the draft was planned on, under its inputs
    digest; the picture is that same preview, and says so when the inputs moved
    (approving would then be refused).
    """
    summary = revision.diff_summary or {}
    draining = summary.get("draining")
    view = DraftView(
        revision=revision,
        changes=revision_counts(summary),
        draining=[str(name) for name in draining] if isinstance(draining, list) else [],
        stale=False,
    )
    if not pictures:
        return view
    preview = plan_preview(datacenter=revision.datacenter, usage=draft_usage(draft=revision))
    view.stale = preview.inputs_digest != revision.inputs_digest
    if preview.plan is not None and not view.stale:
        picture, _ = heatmap.plan_heatmap(datacenter=revision.datacenter, plan=preview.plan)
        view.payload = charts.heatmap_payload(picture)
    return view


def pending_changes(*, datacenter: Datacenter) -> str:
    """What a plan made now would change ("" if nothing): inventory edits not yet planned.

    Cached under the newest audit entry (every inventory write is audited), for a
    minute at most, since drains ending change it without an entry.
    """
    key = f"portslice:pending:{datacenter.pk}:{newest_audit_entry()}"
    found: str | None = cache.get(key)
    if found is None:
        preview = plan_preview(datacenter=datacenter)
        if preview.plan is None:
            short = ", ".join(s.pool for s in preview.shortfalls)
            found = f"cannot be applied, {short} short of IPs"
        else:
            counts = revision_counts(dict(preview.plan.diff.summary()))
            found = "" if counts == "no slice changes" else counts
        cache.set(key, found, PENDING_CACHE_SECONDS)
    return found


def hot_slices(*, datacenter: Datacenter, above: float) -> tuple[int, list[HotSlice]]:
    """How many live slices report a use above ``above``, and the hottest few by name.

    Counted (a window over the whole match, so one query) and ranked in the
    database: a busy datacenter has tens of thousands of hot slices, and the
    strip names five. Ties go by host name in code-point order, as Python sorts.
    """
    rows = (
        SliceUsage.objects.filter(slice__ip__pool__datacenter=datacenter)
        .annotate(
            sockets=F("tcp") + F("udp"),
            ports=F("slice__hi") - F("slice__lo") + 1,
        )
        .filter(sockets__gt=above * F("ports"))
    )
    use = Least(Cast("sockets", FloatField()) / F("ports"), Value(1.0))
    hottest = (
        rows.annotate(use=use, hot_count=Window(Count("pk")))
        .order_by("-use", _code_point_order("slice__machine__hostname"))
        .values_list(
            "slice__machine__hostname",
            "slice__ip__address",
            "slice__lo",
            "slice__hi",
            "sockets",
            "hot_count",
        )[:HOT_LISTED]
    )
    found = list(hottest)
    hot = [
        HotSlice(machine, ip, lo, hi, min(sockets / (hi - lo + 1), 1.0))
        for machine, ip, lo, hi, sockets, _ in found
    ]
    return (found[0][-1] if found else 0), hot


def _code_point_order(field_name: str) -> Collate | F:
    """``field_name`` ordered as Python orders strings: PostgreSQL's "C" collation;
    SQLite (the quick start) compares bytes already."""
    if connection.vendor == "postgresql":
        return Collate(F(field_name), "C")
    return F(field_name)
