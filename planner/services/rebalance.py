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
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

import allocator as alloc
from planner import constants
from planner.choices import RebalanceOutcome, RevisionStatus
from planner.models import Datacenter, PlanRevision, RebalancePolicy, RebalanceRun
from planner.selectors import (
    PlanUsage,
    next_revision_number,
    rebalance_policy,
    stale_hostnames,
    usage_high_water,
)
from planner.services.inventory import model_save
from planner.services.plans import (
    PlanConflict,
    PlanPreview,
    plan_apply,
    plan_preview,
    shortfalls_as_list,
)

logger = logging.getLogger(__name__)

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
    preview = plan_preview(datacenter=datacenter, now=now, usage=adding)
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
                base_revision=preview.base_revision,
                usage=adding,
                reason="rebalance: growth and freed drains",
                now=now,
            )
        except PlanConflict as error:
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
    preview = plan_preview(datacenter=datacenter, now=now, usage=usage)
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
    drafts = PlanRevision.objects.filter(datacenter=datacenter, status=RevisionStatus.DRAFT)
    if keep is not None:
        drafts = drafts.exclude(pk=keep.pk)
    return drafts.update(status=RevisionStatus.SUPERSEDED)


def revision_draft(
    *, preview: PlanPreview, usage: PlanUsage, reason: str, now: datetime | None = None
) -> PlanRevision:
    """Save ``preview`` as the datacenter's waiting draft, superseding any older one.

    If the waiting draft would leave the same slices from the same base, it is
    kept (its number stays what operators may already be looking at).
    """
    assert preview.plan is not None
    datacenter = Datacenter.objects.get(code=preview.datacenter)
    digest = plan_digest(preview.plan)
    with transaction.atomic():
        waiting = PlanRevision.objects.filter(
            datacenter=datacenter,
            status=RevisionStatus.DRAFT,
            base_revision=preview.base_revision,
            inputs_digest=digest,
        ).first()
        if waiting is not None:
            _supersede_drafts(datacenter, keep=waiting)
            return waiting
        _supersede_drafts(datacenter)
        summary: dict[str, Any] = dict(preview.plan.diff.summary())
        summary["machines_touched"] = sorted(preview.plan.diff.machines_touched())
        summary["draining"] = [str(s) for s in preview.plan.diff.draining[:100]]
        return PlanRevision.objects.create(
            datacenter=datacenter,
            number=next_revision_number(datacenter=datacenter),
            status=RevisionStatus.DRAFT,
            reason=reason[:200],
            diff_summary=summary,
            base_revision=preview.base_revision,
            inputs_digest=digest,
            usage=usage.as_json(),
        )


def revision_approve(
    *, datacenter: Datacenter, number: int, user: Any = None, now: datetime | None = None
) -> PlanRevision:
    """Apply draft ``number`` as it was planned, or refuse with :class:`PlanConflict`.

    Refused when it is not a draft (superseded, already applied), when another
    revision was applied since it was drafted, or when planning it again now
    would give other slices (the inventory or the drains moved on).
    Raises ``PlanRevision.DoesNotExist`` for an unknown number.
    """
    draft = PlanRevision.objects.get(datacenter=datacenter, number=number)
    if draft.status != RevisionStatus.DRAFT:
        raise PlanConflict(
            constants.ERR_NOT_DRAFT
            % {"number": number, "datacenter": datacenter.code, "status": draft.status}
        )
    usage = PlanUsage.from_json(draft.usage)
    preview = plan_preview(datacenter=datacenter, now=now, usage=usage)
    if (
        preview.plan is None
        or preview.base_revision != draft.base_revision
        or plan_digest(preview.plan) != draft.inputs_digest
    ):
        raise PlanConflict(constants.ERR_DRAFT_STALE % {"number": number})
    return plan_apply(
        datacenter=datacenter,
        base_revision=preview.base_revision,
        user=user,
        reason=f"approved: {draft.reason}"[:200],
        now=now,
        usage=usage,
        draft=draft,
    )
