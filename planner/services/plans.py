"""Plans: preview a datacenter's allocation, apply it whole, free ended drains."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, astuple, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
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
    PlannerInputs,
    current_revision,
    live_slices,
    next_revision_number,
    planner_inputs,
)
from planner.services.bundles import bundles_build
from planner.services.locks import Conflict, datacenter_lock

logger = logging.getLogger(__name__)

_BATCH = 2000

# What the allocator is told about usage: (machine, pool) -> utilization 0-1.
Usage = Mapping[tuple[str, str], float]
# An inventory write to plan with (see planner.services.inventory): runs under the lock.
Change = Callable[[], object]


class PlanConflict(Conflict):
    """The inputs changed since the preview (another apply, an inventory edit, a
    drain that ended): nothing was written. ``details["preview"]`` is a fresh one."""


class DraftNotWaiting(PlanConflict):
    """The draft being approved was superseded or applied meanwhile: nothing was written."""


@dataclass(frozen=True)
class PlanPreview:
    """What applying now would do, computed without writing anything.

    ``inputs_digest`` fingerprints everything the plan was computed from; apply
    takes it back and refuses when the inputs no longer match.
    """

    datacenter: str
    base_revision: int
    inputs_digest: str
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
            "inputs_digest": self.inputs_digest,
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


def inputs_digest(inputs: PlannerInputs, *, now: datetime, usage: Usage | None = None) -> str:
    """SHA-256 over everything a plan depends on, in a canonical order.

    The inventory, the pool policies, the live slices (and which of their drains
    have ended at ``now``) and the usage figures the allocator is given: if any
    of these differ, the plan may differ, and so does the digest.
    """
    at = now.timestamp()
    canonical = (
        sorted(
            (ip.address, ip.pool, ip.usable.lo, ip.usable.hi, sorted(ip.reserved), ip.state)
            for ip in inputs.ips
        ),
        sorted((m.name, sorted(m.pools), m.weight, m.state) for m in inputs.machines),
        sorted(
            (
                s.ip,
                s.lo,
                s.hi,
                s.machine,
                s.state,
                s.drain_until.timestamp() if s.drain_until else 0.0,
                bool(s.drain_until and s.drain_until.timestamp() <= at),
            )
            for s in inputs.previous
        ),
        sorted((pool, astuple(policy)) for pool, policy in inputs.policies.items()),
        sorted((owner, round(value, 4)) for owner, value in (usage or {}).items()),
    )
    return hashlib.sha256(repr(canonical).encode()).hexdigest()


def plan_preview(
    *,
    datacenter: Datacenter,
    now: datetime | None = None,
    usage: Usage | None = None,
    change: Change | None = None,
) -> PlanPreview:
    """The diff and capacity of a plan from the current inventory, or its shortfalls.

    With ``change``, the plan as it would be right after that inventory write:
    the write is made, planned with, and rolled back; nothing stays written.
    """
    now = now or timezone.now()
    if change is None:
        return _preview(datacenter, planner_inputs(datacenter=datacenter), now, usage)
    with transaction.atomic():
        datacenter_lock(datacenter.pk, code=datacenter.code)
        preview = _preview(datacenter, _inputs_after(datacenter, change), now, usage)
        transaction.set_rollback(True)
    return preview


def _preview(
    datacenter: Datacenter, inputs: PlannerInputs, now: datetime, usage: Usage | None
) -> PlanPreview:
    base = current_revision(datacenter=datacenter)
    digest = inputs_digest(inputs, now=now, usage=usage)
    try:
        plan = _compute_plan(inputs, now, usage)
    except alloc.CapacityError as error:
        return PlanPreview(datacenter.code, base, digest, None, error.shortfalls)
    return PlanPreview(datacenter.code, base, digest, plan)


def _inputs_after(datacenter: Datacenter, change: Change) -> PlannerInputs:
    """The inventory after ``change``, with the live slices from before it: a removed
    IP's slices then show in the diff as freed rather than silently gone."""
    before = planner_inputs(datacenter=datacenter).previous
    change()
    return replace(planner_inputs(datacenter=datacenter), previous=before)


def _compute_plan(inputs: PlannerInputs, now: datetime, usage: Usage | None) -> alloc.Plan:
    return alloc.plan(
        ips=inputs.ips,
        machines=inputs.machines,
        previous=inputs.previous,
        policies=inputs.policies,
        now=now,
        drain_for=timedelta(seconds=settings.DRAIN_SECONDS),
        usage=usage,
    )


def plan_apply(
    *,
    datacenter: Datacenter,
    inputs_digest: str,
    user: Any = None,
    reason: str = "",
    now: datetime | None = None,
    usage: Usage | None = None,
    change: Change | None = None,
    draft: PlanRevision | None = None,
) -> PlanRevision:
    """Apply the plan a preview showed: whole, or nothing.

    ``draft``, a draft revision being approved (see planner.services.rebalance),
    becomes the applied revision instead of a new one.

    Takes the datacenter's lock (:mod:`planner.services.locks`; inventory
    writes take it too), re-reads every input under it, and refuses with
    :class:`PlanConflict` (and a fresh preview) unless they still give
    ``inputs_digest``. With ``change``, that inventory write is made first in
    the same transaction (the preview must have been made with it too).
    Raises :class:`allocator.CapacityError` when a pool is short.
    """
    now = now or timezone.now()
    with transaction.atomic():
        datacenter_lock(datacenter.pk, code=datacenter.code)
        if draft is not None:
            _check_still_draft(datacenter, draft)
        if change is None:
            inputs = planner_inputs(datacenter=datacenter)
        else:
            inputs = _inputs_after(datacenter, change)
        _check_digest(datacenter, inputs, inputs_digest, now, usage)
        plan = _compute_plan(inputs, now, usage)
        revision = _record_revision(datacenter, plan, user, reason, now, draft)
        _write_slices(datacenter, plan, revision)
        _sign_touched(datacenter, plan, revision, now)
        audit_record(
            action=AuditAction.PLAN_APPLY, instance=revision, changes=revision.diff_summary
        )
    return revision


def _check_still_draft(datacenter: Datacenter, draft: PlanRevision) -> None:
    """Read under the lock: a rebalance that superseded the draft while this
    approval waited for the lock wins, and the approval is refused."""
    status = PlanRevision.objects.filter(pk=draft.pk).values_list("status", flat=True).first()
    if status != RevisionStatus.DRAFT:
        raise DraftNotWaiting(
            constants.ERR_NOT_DRAFT
            % {"number": draft.number, "datacenter": datacenter.code, "status": status or "gone"}
        )


def _check_digest(
    datacenter: Datacenter, inputs: PlannerInputs, given: str, now: datetime, usage: Usage | None
) -> None:
    if inputs_digest(inputs, now=now, usage=usage) == given:
        return
    fresh = _preview(datacenter, inputs, now, usage)
    raise PlanConflict(
        constants.ERR_STALE_DIGEST % {"datacenter": datacenter.code},
        preview=fresh.as_dict(),
    )


def plan_apply_current(
    *, datacenter: Datacenter, reason: str, now: datetime | None = None, user: Any = None
) -> PlanRevision:
    """Preview and apply at once, for callers with no operator in between (the
    quick start's seed, freeing ended drains). A change that slips in between
    the two gives :class:`PlanConflict`, as for anyone."""
    now = now or timezone.now()
    preview = plan_preview(datacenter=datacenter, now=now)
    return plan_apply(
        datacenter=datacenter,
        inputs_digest=preview.inputs_digest,
        reason=reason,
        now=now,
        user=user,
    )


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


def _record_revision(
    datacenter: Datacenter,
    plan: alloc.Plan,
    user: Any,
    reason: str,
    now: datetime,
    draft: PlanRevision | None = None,
) -> PlanRevision:
    # An apply replaces the applied revision and makes every waiting draft moot.
    replaced = PlanRevision.objects.filter(
        datacenter=datacenter, status__in=[RevisionStatus.APPLIED, RevisionStatus.DRAFT]
    )
    if draft is not None:
        replaced = replaced.exclude(pk=draft.pk)
    replaced.update(status=RevisionStatus.SUPERSEDED)
    summary: dict[str, Any] = dict(plan.diff.summary())
    summary["machines_touched"] = sorted(plan.diff.machines_touched())
    fields = {
        "status": RevisionStatus.APPLIED,
        "applied_at": now,
        "diff_summary": summary,
        "created_by": user if getattr(user, "pk", None) else None,
    }
    if draft is not None:
        PlanRevision.objects.filter(pk=draft.pk).update(**fields)
        draft.refresh_from_db()
        return draft
    return PlanRevision.objects.create(
        datacenter=datacenter,
        # Drafts take numbers too: a new revision follows the highest of any status.
        number=next_revision_number(datacenter=datacenter),
        reason=reason,
        **fields,
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
                plan_apply_current(datacenter=datacenter, reason="drains ended", now=now)
            )
        except (Conflict, alloc.CapacityError, DatabaseError) as error:
            # One busy or short datacenter must not hold up the others' drains.
            logger.warning("drains in %s not freed yet: %s", datacenter.code, error)
    return revisions
