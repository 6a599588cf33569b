"""Plans: preview a datacenter's allocation (the pools a change touched, or all), apply it
whole, free ended drains."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, astuple, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Q, QuerySet
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
    EgressPool,
    Machine,
    PlanRevision,
    PortSlice,
    pool_key,
)
from planner.selectors import (
    POOL_NAME_FIELDS,
    PlannerInputs,
    current_revision,
    next_revision_number,
    plan_scope,
    planner_inputs,
)
from planner.services.bundles import bundles_build
from planner.services.locks import Conflict, datacenter_lock

logger = logging.getLogger(__name__)

_BATCH = 2000

# What the allocator is told about usage: (machine, pool) -> utilization 0-1.
Usage = Mapping[tuple[str, str], float]


@dataclass(frozen=True)
class Change:
    """An inventory write to plan with (see planner.services.inventory), run under the lock.

    ``pools`` names, read before ``write`` runs, the ids of the pools the write
    affects (``write`` marks the same ones dirty): a scoped plan reads their
    slices from before the write, so slices the write deletes (a removed IP's)
    show in the diff as freed rather than silently gone.
    """

    write: Callable[[], object]
    pools: Callable[[], set[int]]


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
    #: The pools planned (their keys); every pool of the datacenter when ``full``.
    scope: tuple[str, ...] = ()
    full: bool = False

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
            "scope": "full" if self.full else "changed",
            "pools_planned": list(self.scope),
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

    The planned pools (keys, policies) and each one's ``plan_version``, which the
    database bumps on every committed change to any input of its plan: its IPs,
    the machines serving it (and their weight and state), its policy and its
    live slices (planner/plan_triggers.py). Then what changes with no write:
    which drains have ended at ``now``, and the usage figures the allocator is
    given. If any of these differ, the plan may differ, and so does the digest;
    it costs a pass over the slices, not a sort and a hash of every one.
    """
    ended = sorted(
        (s.ip, s.lo)
        for s in inputs.previous
        if s.drain_until is not None and s.drain_until <= now and s.state == SliceState.DRAINING
    )
    canonical = (
        sorted(inputs.versions.items()),
        sorted((pool, astuple(policy)) for pool, policy in inputs.policies.items()),
        ended,
        sorted((owner, round(value, 4)) for owner, value in (usage or {}).items()),
    )
    return hashlib.sha256(repr(canonical).encode()).hexdigest()


def plan_preview(
    *,
    datacenter: Datacenter,
    now: datetime | None = None,
    usage: Usage | None = None,
    change: Change | None = None,
    full: bool = False,
) -> PlanPreview:
    """The diff and capacity of a plan from the current inventory, or its shortfalls.

    Plans the pools in scope (:func:`planner.selectors.plan_scope`), or every
    pool of the datacenter when ``full``. With ``change``, the plan as it would
    be right after that inventory write: the write is made, planned with, and
    rolled back; nothing stays written.
    """
    now = now or timezone.now()
    if change is None:
        inputs = _inputs(datacenter, now, usage, full)
        return _preview(datacenter, inputs, now, usage, full)
    with transaction.atomic():
        datacenter_lock(datacenter.pk, code=datacenter.code)
        inputs = _inputs_after(datacenter, change, now, usage, full)
        preview = _preview(datacenter, inputs, now, usage, full)
        transaction.set_rollback(True)
    return preview


def _scope(
    datacenter: Datacenter, now: datetime, usage: Usage | None, full: bool
) -> set[int] | None:
    """The ids of the pools to plan; None for all of them."""
    if full:
        return None
    pools = {pool for _, pool in usage or {}}
    return plan_scope(datacenter=datacenter, now=now, pool_keys=pools)


def _inputs(
    datacenter: Datacenter, now: datetime, usage: Usage | None, full: bool, *, lock: bool = False
) -> PlannerInputs:
    scope = _scope(datacenter, now, usage, full)
    with alloc.collector_paused():  # 100,000 slices read as objects, none in a cycle
        return planner_inputs(datacenter=datacenter, pool_ids=scope, lock=lock)


def _preview(
    datacenter: Datacenter,
    inputs: PlannerInputs,
    now: datetime,
    usage: Usage | None,
    full: bool,
) -> PlanPreview:
    base = current_revision(datacenter=datacenter)
    digest = inputs_digest(inputs, now=now, usage=usage)
    scope = tuple(sorted(inputs.policies))
    try:
        plan = _compute_plan(inputs, now, usage)
    except alloc.CapacityError as error:
        return PlanPreview(datacenter.code, base, digest, None, error.shortfalls, scope, full)
    return PlanPreview(datacenter.code, base, digest, plan, (), scope, full)


def _inputs_after(
    datacenter: Datacenter,
    change: Change,
    now: datetime,
    usage: Usage | None,
    full: bool,
    *,
    lock: bool = False,
) -> PlannerInputs:
    """The inventory after ``change``, with the live slices from before it: a removed
    IP's slices then show in the diff as freed rather than silently gone."""
    scope = _scope(datacenter, now, usage, full)
    if scope is not None:
        scope |= change.pools()
    with alloc.collector_paused():
        before = planner_inputs(datacenter=datacenter, pool_ids=scope, lock=lock).previous
    change.write()
    with alloc.collector_paused():
        after = planner_inputs(datacenter=datacenter, pool_ids=scope)
    return replace(after, previous=before)


def _compute_plan(inputs: PlannerInputs, now: datetime, usage: Usage | None) -> alloc.Plan:
    return alloc.plan(
        ips=inputs.ips,
        machines=inputs.machines,
        previous=inputs.previous,
        policies=inputs.policies,
        now=now,
        drain_for=timedelta(seconds=settings.DRAIN_SECONDS),
        usage=_in_scope(usage, inputs),
    )


def _in_scope(usage: Usage | None, inputs: PlannerInputs) -> Usage | None:
    """Usage of the pools planned: figures of other pools would ask the allocator for
    pools it has no IPs of."""
    if not usage:
        return usage
    return {owner: level for owner, level in usage.items() if owner[1] in inputs.policies}


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
    full: bool = False,
) -> PlanRevision:
    """Apply the plan a preview showed: whole, or nothing.

    ``draft``, a draft revision being approved (see planner.services.rebalance),
    becomes the applied revision instead of a new one.

    Takes the datacenter's lock (:mod:`planner.services.locks`; inventory
    writes take it too), re-reads the inputs of the scope (every pool when
    ``full``) under it, and refuses with :class:`PlanConflict` (and a fresh
    preview) unless they still give ``inputs_digest``. Writes the plan's diff
    and clears the planned pools' dirty marks. With ``change``, that inventory
    write is made first in the same transaction (the preview must have been
    made with it too). Raises :class:`allocator.CapacityError` when a pool is short.
    """
    now = now or timezone.now()
    with transaction.atomic():
        datacenter_lock(datacenter.pk, code=datacenter.code)
        if draft is not None:
            _check_still_draft(datacenter, draft)
        # The scope's pool rows locked, so the versions the digest is checked
        # against are those of the inputs read and planned (see planner_inputs).
        if change is None:
            inputs = _inputs(datacenter, now, usage, full, lock=True)
        else:
            inputs = _inputs_after(datacenter, change, now, usage, full, lock=True)
        _check_digest(datacenter, inputs, inputs_digest, now, usage, full)
        plan = _compute_plan(inputs, now, usage)
        revision = _record_revision(datacenter, plan, user, reason, now, draft)
        _write_slices(plan, inputs.previous, revision)
        _mark_planned(datacenter, inputs)
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
    datacenter: Datacenter,
    inputs: PlannerInputs,
    given: str,
    now: datetime,
    usage: Usage | None,
    full: bool,
) -> None:
    if inputs_digest(inputs, now=now, usage=usage) == given:
        return
    fresh = _preview(datacenter, inputs, now, usage, full)
    raise PlanConflict(
        constants.ERR_STALE_DIGEST % {"datacenter": datacenter.code},
        preview=fresh.as_dict(),
    )


def _mark_planned(datacenter: Datacenter, inputs: PlannerInputs) -> None:
    """The pools just planned wait for no plan any more, until the next change."""
    planned = [
        pk
        for pk, purpose, country, region, city in EgressPool.objects.filter(
            datacenter=datacenter, plan_dirty=True
        ).values_list("pk", *POOL_NAME_FIELDS)
        if pool_key(datacenter.code, purpose, country, region, city) in inputs.policies
    ]
    EgressPool.objects.filter(pk__in=planned).update(plan_dirty=False)


def plan_apply_current(
    *,
    datacenter: Datacenter,
    reason: str,
    now: datetime | None = None,
    user: Any = None,
    full: bool = False,
) -> PlanRevision:
    """Preview and apply at once, for callers with no operator in between (the
    quick start's seed, freeing ended drains). A change that slips in between
    the two gives :class:`PlanConflict`, as for anyone."""
    now = now or timezone.now()
    preview = plan_preview(datacenter=datacenter, now=now, full=full)
    return plan_apply(
        datacenter=datacenter,
        inputs_digest=preview.inputs_digest,
        reason=reason,
        now=now,
        user=user,
        full=full,
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


def _write_slices(
    plan: alloc.Plan, previous: Iterable[alloc.Slice], revision: PlanRevision
) -> None:
    """Write ``plan.diff`` over the stored slices it was planned from (``previous``):
    delete the freed, update those whose state or drain changed, insert the added.

    The diff names every change, so the stored slices are not read back, and the
    slices it keeps are not touched (their revision stays the one that made them).
    Deleting first frees ports a new slice may take in the same plan; the
    exclusion constraint checks each statement, so the order matters.
    """
    diff = plan.diff
    was_draining = {s for s in previous if s.state == SliceState.DRAINING}
    changed = [
        *diff.draining,
        *diff.revived,
        *(s for s in diff.still_draining if s not in was_draining),
    ]
    ip_ids, machine_ids = _row_ids([*diff.freed, *changed, *diff.added])
    for start in range(0, len(diff.freed), _BATCH):
        _slices_at(diff.freed[start : start + _BATCH], ip_ids).delete()
    by_change: dict[tuple[str, datetime | None], list[alloc.Slice]] = {}
    for slice_ in changed:
        by_change.setdefault((slice_.state, slice_.drain_until), []).append(slice_)
    for (state, until), slices in by_change.items():
        for start in range(0, len(slices), _BATCH):
            _slices_at(slices[start : start + _BATCH], ip_ids).update(
                state=state, drain_until=until, revision=revision
            )
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
            for s in diff.added
        ],
        batch_size=_BATCH,
    )


def _row_ids(slices: list[alloc.Slice]) -> tuple[dict[str, int], dict[str, int]]:
    """The row ids of the IPs and machines ``slices`` name, in two queries."""
    addresses = {s.ip for s in slices}
    hostnames = {s.machine for s in slices}
    ip_ids = dict(EgressIP.objects.filter(address__in=addresses).values_list("address", "pk"))
    machine_ids = dict(Machine.objects.filter(hostname__in=hostnames).values_list("hostname", "pk"))
    return ip_ids, machine_ids


def _slices_at(slices: Iterable[alloc.Slice], ip_ids: Mapping[str, int]) -> QuerySet[PortSlice]:
    """The stored slices at the places (IP, first port) of ``slices``; two live slices
    never share one (the exclusion constraint). A freed slice's IP may be gone."""
    los: dict[int, list[int]] = {}
    for slice_ in slices:
        if slice_.ip in ip_ids:
            los.setdefault(ip_ids[slice_.ip], []).append(slice_.lo)
    if not los:
        return PortSlice.objects.none()
    where = Q()
    for ip_id, starts in los.items():
        where |= Q(ip_id=ip_id, lo__in=starts)
    return PortSlice.objects.filter(where)


def drains_expire(*, now: datetime | None = None) -> list[PlanRevision]:
    """Re-plan each datacenter holding a drain that has ended, so its ports are freed.

    This applies the current plan of that datacenter's pools in scope (those
    drains' pools, and any an inventory change left dirty), as a scheduled
    rebalance would; a datacenter that cannot be planned (short pool, another
    apply running) is logged and left for the next run.
    """
    now = now or timezone.now()
    codes = (
        PortSlice.objects.filter(state=SliceState.DRAINING, drain_until__lte=now)
        .values_list("ip__pool__datacenter", flat=True)
        .order_by()
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
