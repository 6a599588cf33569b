"""Every write to the planner's tables goes through here.

Services are keyword-only, typed, named ``<entity>_<action>``, and run inside
one transaction: they apply whole or not at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import OperationalError, models, transaction
from django.db.models import F, Q, QuerySet, Value
from django.db.models.functions import Greatest
from django.utils import timezone

import allocator as alloc
from planner import constants, signing
from planner.audit import audit_record
from planner.choices import (
    AuditAction,
    BundleStatus,
    KeyStatus,
    MachineState,
    RevisionStatus,
    SliceState,
)
from planner.inventory_io import InventoryError, InventoryRecord
from planner.models import (
    ApiToken,
    ConfigBundle,
    Datacenter,
    EgressIP,
    EgressPool,
    Machine,
    PlanRevision,
    PortSlice,
    SigningKey,
    SliceUsage,
    UsageSample,
)
from planner.models.tokens import hash_token, new_token_key
from planner.selectors import (
    bundle_claims,
    bundle_slices,
    current_revision,
    live_slices,
    planner_inputs,
)

logger = logging.getLogger(__name__)

POOL_KEY_FIELDS = ("purpose", "country", "region", "city")
POLICY_FIELDS = ("slice_size", "slices_per_machine", "max_slices_per_machine")
FIELDS = {
    "datacenters": {"code", "name", "country", "region", "city"},
    "pools": {"datacenter", *POOL_KEY_FIELDS, *POLICY_FIELDS},
    "ips": {
        "datacenter",
        *POOL_KEY_FIELDS,
        "address",
        "usable_lo",
        "usable_hi",
        "reserved_ports",
        "state",
    },
    "machines": {"hostname", "datacenter", "address", "state", "weight", "pools"},
}


def slice_create(
    *,
    ip: EgressIP,
    machine: Machine,
    lo: int,
    hi: int,
    state: str = SliceState.ACTIVE,
    drain_until: datetime | None = None,
    revision: PlanRevision | None = None,
) -> PortSlice:
    """Create one slice; refuses a range that overlaps a live slice on the same IP.

    The check runs inside the write transaction (on SQLite a BEGIN IMMEDIATE
    one, so no other writer interleaves); on PostgreSQL the exclusion
    constraint backs it up whatever happens.
    """
    with transaction.atomic():
        port_slice = PortSlice(
            ip=ip,
            machine=machine,
            lo=lo,
            hi=hi,
            state=state,
            drain_until=drain_until,
            revision=revision,
        )
        port_slice.full_clean()
        port_slice.save()
    return port_slice


class _Importer:
    """Writes inventory records in file order, caching what it has looked up."""

    def __init__(self) -> None:
        self.datacenters: dict[str, Datacenter] = {}
        self.pools: dict[tuple[Any, ...], EgressPool] = {}
        self.counts: dict[str, int] = dict.fromkeys(FIELDS, 0)

    def write(self, record: InventoryRecord) -> None:
        unknown = set(record.values) - FIELDS[record.kind]
        if unknown:
            name = sorted(unknown)[0]
            raise InventoryError(record.where, name, record.values[name], "unknown field")
        getattr(self, f"_write_{record.kind}")(record)
        self.counts[record.kind] += 1

    def _datacenter(self, record: InventoryRecord) -> Datacenter:
        code = record.values.get("datacenter", "")
        if code not in self.datacenters:
            found = Datacenter.objects.filter(code=code).first()
            if found is None:
                raise InventoryError(record.where, "datacenter", code, "no such datacenter")
            self.datacenters[code] = found
        return self.datacenters[code]

    def _pool(self, record: InventoryRecord, *, policy: dict[str, Any] | None = None) -> EgressPool:
        """The record's pool, created when missing; ``policy`` given updates it too."""
        datacenter = self._datacenter(record)
        geo = {name: record.values.get(name, "") for name in POOL_KEY_FIELDS}
        key = (datacenter.pk, *geo.values())
        pool = (
            self.pools.get(key) or EgressPool.objects.filter(datacenter=datacenter, **geo).first()
        )
        if pool is None or policy is not None:
            pool = pool or EgressPool(datacenter=datacenter, **geo)
            _save(record, pool, policy or {})
        self.pools[key] = pool
        return pool

    def _write_datacenters(self, record: InventoryRecord) -> None:
        code = record.values.get("code", "")
        datacenter = Datacenter.objects.filter(code=code).first() or Datacenter(code=code)
        _save(record, datacenter, record.values)
        self.datacenters[datacenter.code] = datacenter

    def _write_pools(self, record: InventoryRecord) -> None:
        policy = {k: v for k, v in record.values.items() if k in POLICY_FIELDS}
        self._pool(record, policy=policy)

    def _write_ips(self, record: InventoryRecord) -> None:
        pool = self._pool(record)
        values = {k: v for k, v in record.values.items() if k.startswith(("usable", "reserved"))}
        address = record.values.get("address", "")
        ip = EgressIP.objects.filter(address=address).first() or EgressIP(address=address)
        _save(record, ip, {"pool": pool, "state": record.values.get("state", ip.state), **values})

    def _write_machines(self, record: InventoryRecord) -> None:
        datacenter = self._datacenter(record)
        hostname = str(record.values.get("hostname", "")).lower()
        machine = Machine.objects.filter(hostname=hostname).first() or Machine(hostname=hostname)
        values = {k: v for k, v in record.values.items() if k in {"address", "state", "weight"}}
        _save(record, machine, {"datacenter": datacenter, **values})
        machine.pools.set(self._pools_by_key(record, datacenter))

    def _pools_by_key(self, record: InventoryRecord, datacenter: Datacenter) -> list[EgressPool]:
        wanted = record.values.get("pools", [])
        if not isinstance(wanted, list):
            raise InventoryError(record.where, "pools", wanted, "expected a list of pool keys")
        known = {p.key: p for p in datacenter.pools.select_related("datacenter")}
        for key in wanted:
            if key not in known:
                raise InventoryError(
                    record.where, "pools", key, f"no such pool in {datacenter.code}"
                )
        return [known[key] for key in wanted]


def _save(record: InventoryRecord, instance: models.Model, values: dict[str, Any]) -> None:
    try:
        model_save(instance=instance, values=values)
    except ValidationError as error:
        name, messages = next(iter(error.message_dict.items()))
        value = record.values.get(name, getattr(instance, name, None))
        raise InventoryError(record.where, name, value, " ".join(messages)) from None


def model_save(*, instance: models.Model, values: dict[str, Any]) -> models.Model:
    """Set ``values`` on ``instance``, validate every model rule, save (audited).

    Raises Django's ``ValidationError`` with field names; nothing is written then.
    """
    for name, value in values.items():
        setattr(instance, name, value)
    instance.full_clean()
    instance.save()
    return instance


def machine_save(
    *, machine: Machine, values: dict[str, Any], pools: Iterable[EgressPool] | None = None
) -> Machine:
    """Save a machine and, when given, the pools it serves (all of its datacenter)."""
    with transaction.atomic():
        model_save(instance=machine, values=values)
        if pools is not None:
            pools = list(pools)
            for pool in pools:
                if pool.datacenter_id != machine.datacenter_id:
                    raise ValidationError(
                        {
                            "pools": constants.ERR_POOL_DATACENTER
                            % {
                                "pool": pool.pk,
                                "pool_dc": pool.datacenter.code,
                                "dc": machine.datacenter.code,
                            }
                        }
                    )
            machine.pools.set(pools)
    return machine


def inventory_delete(*, instance: models.Model) -> None:
    """Delete an inventory row; Django's ``ProtectedError`` when slices or IPs still use it."""
    with transaction.atomic():
        instance.delete()


def inventory_import(*, records: Iterable[InventoryRecord]) -> dict[str, int]:
    """Create or update everything in ``records``: all of it, or nothing.

    Returns how many records of each kind were written.
    """
    importer = _Importer()
    with transaction.atomic():
        for record in records:
            importer.write(record)
        audit_record(
            action=AuditAction.IMPORT,
            model="planner.Inventory",
            object_repr="inventory import",
            changes=importer.counts,
        )
    return importer.counts


# --- plans -------------------------------------------------------------------

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


# --- signing keys ------------------------------------------------------------


class SigningKeyError(Exception):
    """A key operation that cannot be done (no such kid, retiring the active key)."""


def signing_key_generate() -> SigningKey:
    """The first key, active at once; with an active key already, use rotate."""
    with transaction.atomic():
        if SigningKey.objects.filter(status=KeyStatus.ACTIVE).exists():
            raise SigningKeyError(constants.ERR_KEY_EXISTS)
        kid, public = signing.generate_key_file()
        return SigningKey.objects.create(kid=kid, public_jwk=public, status=KeyStatus.ACTIVE)


def signing_key_rotate() -> SigningKey:
    """A new active key; the old active one stays published (agents trust both)."""
    with transaction.atomic():
        SigningKey.objects.select_for_update().filter(status=KeyStatus.ACTIVE).update(
            status=KeyStatus.PUBLISHED
        )
        kid, public = signing.generate_key_file()
        return SigningKey.objects.create(kid=kid, public_jwk=public, status=KeyStatus.ACTIVE)


def signing_key_retire(*, kid: str) -> SigningKey:
    """Drop a published key from the JWKS. The active key cannot be retired."""
    with transaction.atomic():
        key = SigningKey.objects.select_for_update().filter(kid=kid).first()
        if key is None:
            raise SigningKeyError(constants.ERR_KEY_UNKNOWN % {"kid": kid})
        if key.status == KeyStatus.ACTIVE:
            raise SigningKeyError(constants.ERR_KEY_ACTIVE % {"kid": kid})
        key.status, key.retired_at = KeyStatus.RETIRED, timezone.now()
        key.save()
    return key


# --- bundles -----------------------------------------------------------------


def bundles_build(
    *,
    machines: Iterable[Machine],
    revision: PlanRevision | None = None,
    now: datetime | None = None,
) -> list[ConfigBundle]:
    """Sign a fresh bundle for each machine: its live slices, a new serial each.

    Serials come from one ``UPDATE ... SET bundle_serial = GREATEST(bundle_serial
    + 1, <now in ms>)``, whose row locks order concurrent builders, so serials
    strictly increase per machine, across deletion and re-creation too. Older
    unacknowledged bundles of those machines are superseded.
    Raises :class:`planner.signing.SigningKeyMissing` without an active key.
    """
    ids = [m.pk for m in machines]
    if not ids:
        return []
    now = now or timezone.now()
    key = SigningKey.objects.filter(status=KeyStatus.ACTIVE).first()
    if key is None:
        raise signing.SigningKeyMissing(constants.ERR_NO_ACTIVE_KEY)
    with transaction.atomic():
        # At least the wall clock in ms: a machine deleted and re-created under
        # its hostname never gets a serial its agent has already applied.
        floor = Value(time.time_ns() // 1_000_000)
        Machine.objects.filter(pk__in=ids).update(
            bundle_serial=Greatest(F("bundle_serial") + 1, floor)
        )
        machines = Machine.objects.filter(pk__in=ids).select_related("datacenter")
        serials = dict(Machine.objects.filter(pk__in=ids).values_list("pk", "bundle_serial"))
        ConfigBundle.objects.filter(
            machine_id__in=ids, status__in=[BundleStatus.PENDING, BundleStatus.SENT]
        ).update(status=BundleStatus.SUPERSEDED)
        slices = bundle_slices(machine_ids=ids)
        expires = now + timedelta(seconds=settings.BUNDLE_TTL_SECONDS)
        bundles = [
            ConfigBundle(
                machine=m,
                serial=serials[m.pk],
                revision=revision,
                kid=key.kid,
                expires_at=expires,
                token=signing.sign_claims(
                    bundle_claims(
                        machine=m,
                        serial=serials[m.pk],
                        revision=revision,
                        slices=slices.get(m.pk, []),
                        now=now,
                    ),
                    kid=key.kid,
                ),
            )
            for m in machines
        ]
        return ConfigBundle.objects.bulk_create(bundles, batch_size=_BATCH)


def bundle_ack(
    *,
    hostname: str,
    serial: int | None,
    status: str,
    reason: str = "",
    detail: str = "",
    applied_serial: int | None = None,
    enforcement: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> int:
    """Record what an agent did with bundle ``serial``; returns bundle rows updated.

    ``applied_serial`` is what the host enforces after this message; the
    machine's record only moves forward (acks may arrive out of order). An
    ack from an unknown host changes nothing.
    """
    at = at or timezone.now()
    if status not in {BundleStatus.APPLIED, BundleStatus.REJECTED, BundleStatus.FAILED}:
        raise ValueError(f"status: {status!r} is not applied, rejected or failed")
    with transaction.atomic():
        machine = Machine.objects.filter(hostname=hostname)
        updated = 0
        if serial is not None:
            error = f"{reason}: {detail}"[:500] if reason else ""
            updated = ConfigBundle.objects.filter(machine__hostname=hostname, serial=serial).update(
                status=status, acked_at=at, error=error
            )
        changes: dict[str, Any] = {"last_seen": at}
        if enforcement:
            changes["enforcement"] = enforcement
        machine.update(**changes)
        if applied_serial:
            machine.filter(applied_serial__lt=applied_serial).update(applied_serial=applied_serial)
    return updated


def usage_record(*, hostname: str, at: datetime, slices: Iterable[dict[str, Any]]) -> int:
    """Store an agent's report: the latest figures per slice, and a history row per
    slice at most every ``USAGE_SAMPLE_SECONDS``. Slices the host no longer owns
    are ignored. Returns how many slices were recorded."""
    machine = Machine.objects.filter(hostname=hostname).first()
    if machine is None:
        return 0
    owned = {
        (ip, lo, hi): pk
        for pk, ip, lo, hi in PortSlice.objects.filter(machine=machine).values_list(
            "pk", "ip__address", "lo", "hi"
        )
    }
    reported = [(owned.get((r["ip"], r["lo"], r["hi"])), r) for r in slices]
    reported = [(pk, r) for pk, r in reported if pk is not None]
    since = at - timedelta(seconds=settings.USAGE_SAMPLE_SECONDS)
    with transaction.atomic():
        # Reports may arrive out of order (several workers): an older one never
        # replaces newer figures, and history gets one row per sampling period.
        newer = set(
            SliceUsage.objects.filter(
                slice_id__in=[pk for pk, _ in reported], at__gte=at
            ).values_list("slice_id", flat=True)
        )
        sampled = set(
            UsageSample.objects.filter(machine=machine, at__gt=since).values_list("ip", "lo", "hi")
        )
        SliceUsage.objects.bulk_create(
            [
                SliceUsage(slice_id=pk, at=at, tcp=r["tcp"], udp=r["udp"], buckets=r["buckets"])
                for pk, r in reported
                if pk not in newer
            ],
            update_conflicts=True,
            unique_fields=["slice"],
            update_fields=["at", "tcp", "udp", "buckets"],
        )
        UsageSample.objects.bulk_create(
            UsageSample(
                machine=machine,
                ip=r["ip"],
                lo=r["lo"],
                hi=r["hi"],
                at=at,
                sockets=r["tcp"] + r["udp"],
            )
            for _, r in reported
            if (r["ip"], r["lo"], r["hi"]) not in sampled
        )
        Machine.objects.filter(pk=machine.pk).update(last_seen=at)
    return len(reported)


def usage_expire(*, now: datetime | None = None) -> int:
    """Delete history older than ``USAGE_RETENTION_DAYS``; returns rows deleted."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.USAGE_RETENTION_DAYS)
    deleted, _ = UsageSample.objects.filter(at__lt=cutoff).delete()
    return deleted


def bundles_send(*, bundles: Iterable[ConfigBundle], send: Any) -> int:
    """Hand each bundle to ``send(hostname, token)`` and mark it sent.

    ``send`` puts the token on the machine's queue (the Celery task does it by
    name); the broker is an untrusted transport, the signature protects the host.
    A bundle acked meanwhile is not marked back to sent.
    """
    sent = 0
    for bundle in bundles:
        send(bundle.machine.hostname, bundle.token)
        ConfigBundle.objects.filter(pk=bundle.pk, status__in=RESENDABLE).update(
            status=BundleStatus.SENT, sent_at=timezone.now()
        )
        sent += 1
    return sent


RESENDABLE = (BundleStatus.PENDING, BundleStatus.SENT, BundleStatus.FAILED)
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


# --- API tokens ----------------------------------------------------------------


def api_token_create(
    *,
    name: str,
    kind: str,
    user: Any = None,
    machine: Machine | None = None,
    datacenter: Datacenter | None = None,
) -> tuple[ApiToken, str]:
    """Make a token; returns it and its key, which is shown once and never stored."""
    key = new_token_key()
    token = ApiToken(
        name=name,
        kind=kind,
        user=user,
        machine=machine,
        datacenter=datacenter,
        key_hash=hash_token(key),
    )
    model_save(instance=token, values={})
    return token, key


def api_token_revoke(*, token: ApiToken) -> None:
    model_save(instance=token, values={"revoked": True})
