"""Plans: preview a datacenter's allocation, apply it whole, free ended drains."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import OperationalError, transaction
from django.utils import timezone

import allocator as alloc
from planner import constants, signing
from planner.audit import audit_record
from planner.choices import (
    AuditAction,
    RevisionStatus,
    SliceState,
)
from planner.models import (
    Datacenter,
    EgressIP,
    Machine,
    PlanRevision,
    PortSlice,
)
from planner.selectors import (
    current_revision,
    live_slices,
    planner_inputs,
)
from planner.services.bundles import bundles_build

logger = logging.getLogger(__name__)

DRAIN_FOR = timedelta(hours=1)
_BATCH = 2000


class PlanConflict(Exception):
    """The plan was made against a revision that is no longer current, or another
    apply holds the datacenter. Re-read, preview again, then apply."""


@dataclass(frozen=True)
class PlanPreview:
    """What applying now would do, computed without writing anything."""

    datacenter: str
    base_revision: int
    plan: alloc.Plan | None
    shortfalls: tuple[alloc.Shortfall, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.plan is not None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: what ``manage.py plan --json`` prints and the API returns."""
        result: dict[str, Any] = {
            "datacenter": self.datacenter,
            "base_revision": self.base_revision,
            "ok": self.ok,
            "shortfalls": shortfalls_as_list(self.shortfalls),
        }
        if self.plan is not None:
            result["diff"] = self.plan.diff.summary()
            result["machines_touched"] = sorted(self.plan.diff.machines_touched())
            result["capacity"] = {
                pool: {**asdict(cap), "utilization": round(cap.utilization, 4)}
                for pool, cap in sorted(self.plan.capacity.items())
            }
        return result


def shortfalls_as_list(shortfalls: Iterable[alloc.Shortfall]) -> list[dict[str, Any]]:
    return [
        {**asdict(s), "machines_unserved": list(s.machines_unserved), "message": str(s)}
        for s in shortfalls
    ]


def plan_preview(*, datacenter: Datacenter, now: datetime | None = None) -> PlanPreview:
    """The diff and capacity of a plan from the current inventory, or its shortfalls."""
    base = current_revision(datacenter=datacenter)
    try:
        plan = _compute_plan(datacenter=datacenter, now=now or timezone.now())
    except alloc.CapacityError as error:
        return PlanPreview(datacenter.code, base, None, error.shortfalls)
    return PlanPreview(datacenter.code, base, plan)


def _compute_plan(*, datacenter: Datacenter, now: datetime) -> alloc.Plan:
    inputs = planner_inputs(datacenter=datacenter)
    return alloc.plan(
        ips=inputs.ips,
        machines=inputs.machines,
        previous=inputs.previous,
        policies=inputs.policies,
        now=now,
        drain_for=DRAIN_FOR,
    )


def plan_apply(
    *,
    datacenter: Datacenter,
    base_revision: int,
    user: Any = None,
    reason: str = "",
    now: datetime | None = None,
) -> PlanRevision:
    """Plan the datacenter again and write the whole result, or nothing.

    Holds the datacenter row (``SELECT ... FOR UPDATE NOWAIT``; SQLite's
    ``BEGIN IMMEDIATE`` serializes instead), re-reads everything under the lock,
    and refuses with :class:`PlanConflict` when ``base_revision`` is not the
    current one or another apply holds the lock. Raises
    :class:`allocator.CapacityError` when a pool is short.
    """
    now = now or timezone.now()
    with transaction.atomic():
        _lock(datacenter)
        current = current_revision(datacenter=datacenter)
        if base_revision != current:
            raise PlanConflict(
                constants.ERR_STALE_BASE % {"base": base_revision, "current": current}
            )
        plan = _compute_plan(datacenter=datacenter, now=now)
        revision = _record_revision(datacenter, current + 1, plan, user, reason, now)
        _write_slices(datacenter, plan, revision)
        _sign_touched(datacenter, plan, revision, now)
        audit_record(
            action=AuditAction.PLAN_APPLY, instance=revision, changes=revision.diff_summary
        )
    return revision


def _sign_touched(
    datacenter: Datacenter, plan: alloc.Plan, revision: PlanRevision, now: datetime
) -> None:
    """Sign new bundles for the machines whose slices changed, and push them after commit.

    Without an active signing key the plan still applies (the quick start may
    plan before making a key); the revision says so and bundles follow once a
    key exists (``manage.py signing_key generate`` signs for every machine).
    """
    touched = Machine.objects.filter(
        datacenter=datacenter, hostname__in=plan.diff.machines_touched()
    )
    try:
        bundles = bundles_build(machines=touched, revision=revision, now=now)
    except signing.SigningKeyMissing:
        revision.diff_summary["bundles"] = constants.ERR_NO_ACTIVE_KEY
    else:
        revision.diff_summary["bundles"] = len(bundles)
        if bundles:
            transaction.on_commit(lambda: _enqueue_publish(revision.pk))
    # update(), not save(): the plan_apply audit entry already carries the summary.
    PlanRevision.objects.filter(pk=revision.pk).update(diff_summary=revision.diff_summary)


def _enqueue_publish(revision_id: int) -> None:
    # Runs after commit: the plan is applied whatever happens here. If the
    # broker is down, the bundles stay pending and planner.reconcile sends them.
    from planner.celery import app

    try:
        app.send_task("planner.publish_revision", args=[revision_id], queue="planner")
    except Exception:  # noqa: BLE001 - any broker failure; logged, retried by reconcile
        logger.warning(
            "could not enqueue publish of revision %s; reconcile will", revision_id, exc_info=True
        )


def _lock(datacenter: Datacenter) -> None:
    try:
        Datacenter.objects.select_for_update(nowait=True).filter(pk=datacenter.pk).get()
    except OperationalError:
        raise PlanConflict(constants.ERR_LOCKED % {"datacenter": datacenter.code}) from None


def _record_revision(
    datacenter: Datacenter, number: int, plan: alloc.Plan, user: Any, reason: str, now: datetime
) -> PlanRevision:
    PlanRevision.objects.filter(datacenter=datacenter, status=RevisionStatus.APPLIED).update(
        status=RevisionStatus.SUPERSEDED
    )
    summary: dict[str, Any] = dict(plan.diff.summary())
    summary["machines_touched"] = sorted(plan.diff.machines_touched())
    return PlanRevision.objects.create(
        datacenter=datacenter,
        number=number,
        status=RevisionStatus.APPLIED,
        reason=reason,
        created_by=user if getattr(user, "pk", None) else None,
        applied_at=now,
        diff_summary=summary,
    )


def _write_slices(datacenter: Datacenter, plan: alloc.Plan, revision: PlanRevision) -> None:
    """Turn the stored slices into ``plan.slices``: delete, then update, then insert.

    Deleting first frees ports a new slice may take in the same plan; the
    exclusion constraint checks each statement, so the order matters.
    """
    stored = {
        (ip, lo, hi, machine): (pk, state, until)
        for pk, ip, lo, hi, machine, state, until in live_slices(datacenter=datacenter).values_list(
            "pk", "ip__address", "lo", "hi", "machine__hostname", "state", "drain_until"
        )
    }
    wanted = {(s.ip, s.lo, s.hi, s.machine): s for s in plan.slices}
    gone = [pk for key, (pk, _, _) in stored.items() if key not in wanted]
    for start in range(0, len(gone), _BATCH):
        PortSlice.objects.filter(pk__in=gone[start : start + _BATCH]).delete()
    changed = [
        PortSlice(pk=stored[key][0], state=s.state, drain_until=s.drain_until, revision=revision)
        for key, s in wanted.items()
        if key in stored and stored[key][1:] != (s.state, s.drain_until)
    ]
    PortSlice.objects.bulk_update(changed, ["state", "drain_until", "revision"], batch_size=_BATCH)
    ip_ids = dict(EgressIP.objects.filter(pool__datacenter=datacenter).values_list("address", "pk"))
    machine_ids = dict(Machine.objects.filter(datacenter=datacenter).values_list("hostname", "pk"))
    PortSlice.objects.bulk_create(
        [
            PortSlice(
                ip_id=ip_ids[s.ip],
                machine_id=machine_ids[s.machine],
                lo=s.lo,
                hi=s.hi,
                state=s.state,
                drain_until=s.drain_until,
                revision=revision,
            )
            for key, s in wanted.items()
            if key not in stored
        ],
        batch_size=_BATCH,
    )


def drains_expire(*, now: datetime | None = None) -> list[PlanRevision]:
    """Re-plan each datacenter holding a drain that has ended, so its ports are freed.

    This applies the whole current plan of that datacenter, as a scheduled
    rebalance would; a datacenter that cannot be planned (short pool, another
    apply running) is logged and left for the next run.
    """
    now = now or timezone.now()
    codes = (
        PortSlice.objects.filter(state=SliceState.DRAINING, drain_until__lte=now)
        .values_list("ip__pool__datacenter", flat=True)
        .distinct()
    )
    revisions = []
    for datacenter in Datacenter.objects.filter(pk__in=list(codes)):
        try:
            revisions.append(
                plan_apply(
                    datacenter=datacenter,
                    base_revision=current_revision(datacenter=datacenter),
                    reason="drains ended",
                    now=now,
                )
            )
        except (PlanConflict, alloc.CapacityError) as error:
            logger.warning("drains in %s not freed yet: %s", datacenter.code, error)
    return revisions
