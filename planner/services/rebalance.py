"""Scheduled rebalancing: usage in, growth applied, give-backs left as drafts.

Each run, per datacenter whose interval has passed:

1. usage: per machine and pool, the high-water mark of utilization over the
   policy's window (:func:`planner.selectors.usage_high_water`); stale machines'
   figures are dropped, so they neither grow nor give back;
2. the *adding* plan: the allocator with that usage minus the cold levels
   (growth, new machines, freed drains; nothing live drains). It is applied
   when the policy allows it and it gives no stale machine new slices;
   otherwise it waits as a draft;
3. the *full* plan, on the usage measured against what the machines hold now:
   if it drains a live slice (a cold machine's highest one, a machine or IP
   leaving), it is saved as a draft for an operator. A newer draft supersedes
   an older one; an identical one is kept as it is.

Every run is recorded as a :class:`planner.models.RebalanceRun`.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

import allocator as alloc
from allocator.demand import COLD, HOT
from planner import constants
from planner.choices import RebalanceOutcome, RevisionStatus
from planner.models import Datacenter, PlanRevision, RebalancePolicy, RebalanceRun
from planner.selectors import (
    next_revision_number,
    rebalance_policy,
    stale_hostnames,
    usage_high_water,
)
from planner.services.inventory import model_save
from planner.services.locks import Conflict, datacenter_lock
from planner.services.plans import (
    DraftNotWaiting,
    PlanConflict,
    PlanPreview,
    plan_apply,
    plan_preview,
    shortfalls_as_list,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanUsage:
    """Utilization per (machine, pool) and the thresholds this datacenter judges it by."""

    levels: Mapping[tuple[str, str], float]
    hot: float = HOT
    cold: float = COLD

    def as_json(self) -> dict[str, Any]:
        return {"hot": self.hot, "cold": self.cold, "levels": _as_json(self.levels)}

    def for_allocator(self) -> dict[tuple[str, str], float]:
        """The levels on the allocator's scale, where ``HOT`` and ``COLD`` are fixed.

        A monotone, piecewise-linear map sending this policy's ``cold`` to
        ``COLD`` and ``hot`` to ``HOT``, so the allocator grows and gives back
        exactly where this policy says; the plan's inputs digest covers the
        result, so a draft made on these figures is approved on them too.
        """
        return {owner: _rescale(v, self.hot, self.cold) for owner, v in self.levels.items()}


def _rescale(level: float, hot: float, cold: float) -> float:
    if level > hot:
        return max(HOT + (level - hot), math.nextafter(HOT, math.inf))
    if level < cold:
        return min(COLD * level / cold, math.nextafter(COLD, 0.0))
    if level == hot:  # the boundaries exactly, whatever the float arithmetic below
        return HOT
    return min(COLD + (level - cold) / (hot - cold) * (HOT - COLD), HOT)


# Beat ticks every minute; a run due at 5:00 must not wait for 6:00 because the
# tick came a moment early.
CLAIM_SLACK = timedelta(seconds=5)


def rebalance_due(*, now: datetime | None = None) -> list[RebalanceRun]:
    """Run every enabled datacenter whose interval has passed since its last run."""
    now = now or timezone.now()
    runs = []
    for datacenter in Datacenter.objects.all():
        policy = rebalance_policy_ensure(datacenter=datacenter)
        if policy.enabled and _claim(policy, now):
            runs.append(datacenter_rebalance(datacenter=datacenter, policy=policy, now=now))
    return runs


def rebalance_runs_expire(*, now: datetime | None = None) -> int:
    """Delete run records older than ``USAGE_RETENTION_DAYS`` (they describe that usage)."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.USAGE_RETENTION_DAYS)
    deleted, _ = RebalanceRun.objects.filter(at__lt=cutoff).delete()
    return deleted


def rebalance_policy_ensure(*, datacenter: Datacenter) -> RebalancePolicy:
    policy, _ = RebalancePolicy.objects.get_or_create(datacenter=datacenter)
    return policy


def rebalance_policy_save(*, datacenter: Datacenter, values: dict[str, Any]) -> RebalancePolicy:
    """Change the datacenter's policy (made with the defaults first if it has none);
    every rule is checked, whole or nothing."""
    policy = rebalance_policy(datacenter=datacenter)
    saved = model_save(instance=policy, values=values)
    assert isinstance(saved, RebalancePolicy)
    return saved


def _claim(policy: RebalancePolicy, now: datetime) -> bool:
    """Take this interval's run; False when another worker (or beat tick) already has."""
    due_before = now - timedelta(minutes=policy.interval_minutes) + CLAIM_SLACK
    claimed = (
        RebalancePolicy.objects.filter(pk=policy.pk)
        .filter(Q(last_run_at__isnull=True) | Q(last_run_at__lte=due_before))
        .update(last_run_at=now)
    )
    return claimed == 1


def datacenter_rebalance(
    *,
    datacenter: Datacenter,
    policy: RebalancePolicy | None = None,
    now: datetime | None = None,
) -> RebalanceRun:
    """One rebalance of ``datacenter`` now (the interval is the caller's business)."""
    now = now or timezone.now()
    policy = policy or rebalance_policy(datacenter=datacenter)
    stale = stale_hostnames(datacenter=datacenter, now=now)
    levels = _levels(datacenter, policy, stale, now)
    run = RebalanceRun(datacenter=datacenter, at=now, saw=_saw(levels, policy, stale))
    adding = PlanUsage(
        {owner: v for owner, v in levels.items() if v >= policy.cold}, policy.hot, policy.cold
    )
    preview = plan_preview(datacenter=datacenter, now=now, usage=adding.for_allocator())
    if preview.plan is None:
        return _finish(run, RebalanceOutcome.SHORTFALL, shortfalls=preview.shortfalls)
    run.saw["growth_denied"] = sorted(f"{m} {p}" for m, p in preview.plan.growth_denied)
    if _changes(preview.plan):
        blocker = _auto_apply_blocker(preview.plan, policy, stale)
        if blocker:
            run.draft = revision_draft(preview=preview, usage=adding, reason=blocker, now=now)
            run.changed = run.draft.diff_summary
            return _finish(run, RebalanceOutcome.DRAFTED, detail=blocker)
        try:
            run.revision = plan_apply(
                datacenter=datacenter,
                inputs_digest=preview.inputs_digest,
                usage=adding.for_allocator(),
                reason="rebalance: growth and freed drains",
                now=now,
            )
        except Conflict as error:  # inputs moved since the preview, or the lock was held
            return _finish(run, RebalanceOutcome.CONFLICT, detail=str(error))
        except alloc.CapacityError as error:
            return _finish(run, RebalanceOutcome.SHORTFALL, shortfalls=error.shortfalls)
        run.changed = run.revision.diff_summary
    return _draft_give_backs(run, datacenter, policy, stale, now)


def _draft_give_backs(
    run: RebalanceRun,
    datacenter: Datacenter,
    policy: RebalancePolicy,
    stale: set[str],
    now: datetime,
) -> RebalanceRun:
    # Measured again: growth just applied changes the ports each machine holds.
    levels = _levels(datacenter, policy, stale, now)
    usage = PlanUsage(levels, policy.hot, policy.cold)
    preview = plan_preview(datacenter=datacenter, now=now, usage=usage.for_allocator())
    applied = run.revision is not None
    if preview.plan is None or not preview.plan.diff.draining:
        superseded = _supersede_drafts(datacenter)
        detail = f"{superseded} waiting draft(s) no longer needed" if superseded else ""
        outcome = RebalanceOutcome.APPLIED if applied else RebalanceOutcome.UNCHANGED
        return _finish(run, outcome, detail=detail)
    run.draft = revision_draft(
        preview=preview, usage=usage, reason="rebalance: give back cold slices", now=now
    )
    run.changed = {"applied": run.changed, "drafted": run.draft.diff_summary}
    outcome = RebalanceOutcome.BOTH if applied else RebalanceOutcome.DRAFTED
    return _finish(run, outcome, detail=f"draft r{run.draft.number} waits for approval")


def _levels(
    datacenter: Datacenter, policy: RebalancePolicy, stale: set[str], now: datetime
) -> dict[tuple[str, str], float]:
    since = now - timedelta(minutes=policy.window_minutes)
    levels = usage_high_water(datacenter=datacenter, since=since)
    return {owner: v for owner, v in levels.items() if owner[0] not in stale}


def _saw(
    levels: dict[tuple[str, str], float], policy: RebalancePolicy, stale: set[str]
) -> dict[str, Any]:
    return {
        "window_minutes": policy.window_minutes,
        "hot": policy.hot,
        "cold": policy.cold,
        "reporting": len({machine for machine, _ in levels}),
        "hot_machines": sorted(f"{m} {p}" for (m, p), v in levels.items() if v > policy.hot),
        "cold_machines": sorted(f"{m} {p}" for (m, p), v in levels.items() if v < policy.cold),
        "peak": round(max(levels.values(), default=0.0), 4),
        "stale": sorted(stale),
    }


def _changes(plan: alloc.Plan) -> bool:
    diff = plan.diff
    return bool(diff.added or diff.revived or diff.draining or diff.freed)


def _auto_apply_blocker(plan: alloc.Plan, policy: RebalancePolicy, stale: set[str]) -> str:
    """Why this plan may not be applied without an operator, or '' if it may."""
    if plan.diff.draining:
        return f"drains {len(plan.diff.draining)} live slice(s): needs approval"
    if not policy.auto_apply:
        return "auto-apply is off for this datacenter"
    given = sorted({s.machine for s in (*plan.diff.added, *plan.diff.revived)} & stale)
    if given:
        return f"would give slices to stale machine(s) {', '.join(given)}"
    return ""


def _finish(
    run: RebalanceRun,
    outcome: str,
    *,
    detail: str = "",
    shortfalls: tuple[alloc.Shortfall, ...] = (),
) -> RebalanceRun:
    run.outcome = outcome
    run.detail = detail[:500]
    if shortfalls:
        run.changed = {"shortfalls": shortfalls_as_list(shortfalls)}
        run.detail = "; ".join(str(s) for s in shortfalls)[:500]
    run.save()
    logger.info("rebalance %s: %s %s", run.datacenter.code, outcome, run.detail)
    return run


# --- drafts --------------------------------------------------------------------------------------


def plan_digest(plan: alloc.Plan) -> str:
    """What the plan would leave, as one hash: approve compares it with a fresh plan."""
    digest = hashlib.sha256()
    for s in plan.slices:
        digest.update(f"{s.ip} {s.lo} {s.hi} {s.machine} {s.state}\n".encode())
    return digest.hexdigest()


def _supersede_drafts(datacenter: Datacenter, keep: PlanRevision | None = None) -> int:
    """Under the datacenter's lock, as an approval checks the draft's status: one
    of the two goes first and the other sees what it did."""
    with transaction.atomic():
        datacenter_lock(datacenter.pk, code=datacenter.code)
        drafts = PlanRevision.objects.filter(datacenter=datacenter, status=RevisionStatus.DRAFT)
        if keep is not None:
            drafts = drafts.exclude(pk=keep.pk)
        return drafts.update(status=RevisionStatus.SUPERSEDED)


def revision_draft(
    *, preview: PlanPreview, usage: PlanUsage, reason: str, now: datetime | None = None
) -> PlanRevision:
    """Save ``preview`` as the datacenter's waiting draft, superseding any older one.

    The draft keeps the preview's inputs digest and the usage it was planned
    on, so approving it re-plans exactly this. A waiting draft that would leave
    the same slices is kept instead (its number is what operators may already
    be looking at), with the newer figures.
    """
    assert preview.plan is not None
    datacenter = Datacenter.objects.get(code=preview.datacenter)
    outcome = plan_digest(preview.plan)
    summary: dict[str, Any] = dict(preview.plan.diff.summary())
    summary["machines_touched"] = sorted(preview.plan.diff.machines_touched())
    summary["draining"] = [str(s) for s in preview.plan.diff.draining[:100]]
    summary["outcome_digest"] = outcome
    fields = {
        "inputs_digest": preview.inputs_digest,
        "base_revision": preview.base_revision,
        "usage": {"levels": usage.as_json(), "planned_with": _as_json(usage.for_allocator())},
        "diff_summary": summary,
    }
    with transaction.atomic():
        datacenter_lock(datacenter.pk, code=datacenter.code)
        waiting = PlanRevision.objects.filter(
            datacenter=datacenter,
            status=RevisionStatus.DRAFT,
            diff_summary__outcome_digest=outcome,
        ).first()
        _supersede_drafts(datacenter, keep=waiting)
        if waiting is not None:
            PlanRevision.objects.filter(pk=waiting.pk).update(**fields)
            waiting.refresh_from_db()
            return waiting
        return PlanRevision.objects.create(
            datacenter=datacenter,
            number=next_revision_number(datacenter=datacenter),
            status=RevisionStatus.DRAFT,
            reason=reason[:200],
            **fields,
        )


def _as_json(levels: Mapping[tuple[str, str], float]) -> list[list[Any]]:
    return [[machine, pool, level] for (machine, pool), level in sorted(levels.items())]


def _from_json(rows: list[list[Any]]) -> dict[tuple[str, str], float]:
    return {(str(machine), str(pool)): float(level) for machine, pool, level in rows}


def draft_usage(*, draft: PlanRevision) -> dict[tuple[str, str], float]:
    """The usage a draft was planned on: previewing with it shows what approving applies."""
    return _from_json((draft.usage or {}).get("planned_with", []))


def revision_approve(
    *, datacenter: Datacenter, number: int, user: Any = None, now: datetime | None = None
) -> PlanRevision:
    """Apply draft ``number`` as it was planned, or refuse with :class:`PlanConflict`.

    Refused when it is not a draft (superseded, already applied) or when its
    inputs (inventory, live slices, ended drains) are no longer what it was
    planned on: the inputs digest, as for a stale preview.
    Raises ``PlanRevision.DoesNotExist`` for an unknown number.
    """
    draft = PlanRevision.objects.get(datacenter=datacenter, number=number)
    if (
        draft.status != RevisionStatus.DRAFT
    ):  # early and cheap; plan_apply checks again under the lock
        raise DraftNotWaiting(
            constants.ERR_NOT_DRAFT
            % {"number": number, "datacenter": datacenter.code, "status": draft.status}
        )
    try:
        return plan_apply(
            datacenter=datacenter,
            inputs_digest=draft.inputs_digest,
            user=user,
            reason=f"approved: {draft.reason}"[:200],
            now=now,
            usage=_from_json(draft.usage.get("planned_with", [])),
            draft=draft,
        )
    except DraftNotWaiting:
        raise
    except PlanConflict as error:
        raise PlanConflict(
            constants.ERR_DRAFT_STALE % {"number": number}, **error.details
        ) from None
