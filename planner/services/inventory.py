"""Inventory writes: datacenters, pools, egress IPs, machines, and file imports."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import models, transaction
from django.db.models import ProtectedError, QuerySet

import allocator as alloc
from planner import constants
from planner.audit import audit_record
from planner.choices import (
    AuditAction,
)
from planner.inventory_io import InventoryError, InventoryRecord
from planner.models import (
    Datacenter,
    EgressIP,
    EgressPool,
    Machine,
    PlanRevision,
    PortSlice,
)
from planner.selectors import slice_fit_inputs
from planner.services.bundles import bundles_build
from planner.services.locks import Conflict, datacenter_lock
from planner.services.plans import Change, PlanPreview, plan_apply, plan_preview
from planner.signing import SigningKeyMissing

POOL_KEY_FIELDS = ("purpose", "country", "region", "city")
POLICY_FIELDS = constants.POLICY_FIELDS
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


class _Importer:
    """Writes inventory records in file order, caching what it has looked up."""

    def __init__(self) -> None:
        self.datacenters: dict[str, Datacenter] = {}
        self.pools: dict[tuple[Any, ...], EgressPool] = {}
        self.counts: dict[str, int] = dict.fromkeys(FIELDS, 0)

    def write(self, record: InventoryRecord) -> None:
        unknown = set(record.values) - FIELDS[record.kind]
        if unknown:
            raise _one_per_field(
                InventoryError(record.where, name, record.values[name], "unknown field")
                for name in sorted(unknown)
            )
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
        raise _one_per_field(
            InventoryError(
                record.where,
                name,
                record.values.get(name, getattr(instance, name, None)),
                " ".join(messages),
            )
            for name, messages in error.message_dict.items()
        ) from None
    except InventoryConflict as conflict:
        field_name = min(set(values) & _FIT_FIELDS, default="record")
        value = record.values.get(field_name, str(instance))
        raise InventoryError(record.where, field_name, value, str(conflict)) from None


def _one_per_field(errors: Iterable[InventoryError]) -> InventoryError:
    """The first error, carrying the record's other wrong fields (``also``)."""
    first, *rest = errors
    first.also = rest
    return first


class InventoryConflict(Conflict):
    """The write would contradict live slices (``details["slices"]`` names them) or
    remove something still in use; nothing was written."""


# The fields whose change can leave a live slice outside what its IP now allows.
_FIT_FIELDS = {"usable_lo", "usable_hi", "reserved_ports", "pool", "slice_size"}
_NAMED = 20  # a conflict lists at most this many slices


@dataclass
class InventoryChange:
    """One inventory write: set ``values`` (and a machine's ``pools``) or delete.

    :func:`model_save`, :func:`machine_save` and :func:`inventory_delete` make it
    guarded: refused when it would leave a live slice that no longer fits. The
    same change can instead be planned with (:func:`inventory_plan_preview`,
    :func:`inventory_plan_apply`): it is written together with the plan that
    drains (or, for a removed IP, frees) the slices it displaces.
    """

    instance: models.Model
    values: dict[str, Any] = field(default_factory=dict)
    pools: list[EgressPool] | None = None
    delete: bool = False
    #: The fields whose value the write really changed (known once written).
    changed: set[str] = field(default_factory=set, init=False)

    def datacenter_id(self) -> int | None:
        """The datacenter whose lock the write needs; None for a new datacenter."""
        instance, values = self.instance, self.values
        if isinstance(instance, Datacenter):
            return instance.pk
        if isinstance(instance, EgressIP):
            pool = values.get("pool") or (instance.pool if instance.pool_id else None)
            return pool.datacenter_id if pool else None
        datacenter = values.get("datacenter")
        if datacenter is not None:
            return int(datacenter.pk)
        return getattr(instance, "datacenter_id", None)

    def fit_scope(self) -> QuerySet[EgressIP] | None:
        """The IPs whose live slices this write may displace (None: it cannot)."""
        instance = self.instance
        if instance.pk is None or not (self.delete or set(self.values) & _FIT_FIELDS):
            return None
        if isinstance(instance, EgressIP):
            return EgressIP.objects.filter(pk=instance.pk)
        if isinstance(instance, EgressPool):
            return EgressIP.objects.filter(pool=instance)
        return None

    def write_guarded(self) -> models.Model:
        """Write it, or refuse it whole when it would displace live slices."""
        return _guarded(self)

    def pool_ids(self) -> set[int]:
        """The pools whose plan this write may change, as stored now and as written."""
        pools = _pools_of(self.instance)
        if isinstance(self.values.get("pool"), EgressPool):
            pools.add(self.values["pool"].pk)
        pools.update(pool.pk for pool in self.pools or ())
        return pools

    def write(self, *, planned: bool) -> models.Model:
        """Make the write (under the caller's lock and transaction).

        The database marks the pools it affects dirty (triggers of migration
        0007), whoever writes: the next scoped plan covers them.
        """
        instance = self.instance
        if self.delete:
            _delete(instance, planned=planned)
            return instance
        if instance.pk is not None:
            try:  # what the lock holder left, not what the caller read
                instance.refresh_from_db()
            except ObjectDoesNotExist:
                raise InventoryConflict(constants.ERR_GONE % {"object": instance}) from None
        self.changed = {
            name for name, value in self.values.items() if getattr(instance, name, None) != value
        }
        for name, value in self.values.items():
            setattr(instance, name, value)
        instance.full_clean()
        instance.save()
        if self.pools is not None and isinstance(instance, Machine):
            _set_pools(instance, self.pools)
        return instance


def _pools_of(instance: models.Model) -> set[int]:
    """The stored pools a plan of ``instance`` depends on: a machine's, an IP's, a pool
    itself, a datacenter's."""
    if instance.pk is None:
        return set()
    if isinstance(instance, Machine):
        found = EgressPool.objects.filter(machines=instance)
    elif isinstance(instance, EgressIP):
        found = EgressPool.objects.filter(ips=instance)
    elif isinstance(instance, EgressPool):
        found = EgressPool.objects.filter(pk=instance.pk)
    elif isinstance(instance, Datacenter):
        found = EgressPool.objects.filter(datacenter=instance)
    else:
        return set()
    return set(found.order_by().values_list("pk", flat=True))


def _delete(instance: models.Model, *, planned: bool) -> None:
    held = _live_slices_of(instance)
    if held.exists():
        if not (planned and isinstance(instance, EgressIP)):
            message = (
                constants.ERR_MACHINE_HOLDS_SLICES
                if isinstance(instance, Machine)
                else constants.ERR_HOLDS_SLICES
            )
            raise InventoryConflict(
                message % {"object": instance}, slices=_described(held.order_by("ip", "lo"))
            )
        held.delete()  # the plan written with this delete lists them as freed
    try:
        instance.delete()
    except ProtectedError as error:
        used_by = sorted({str(obj) for obj in list(error.protected_objects)[:_NAMED]})
        raise InventoryConflict(
            constants.ERR_IN_USE % {"object": instance}, used_by=used_by
        ) from None


def _live_slices_of(instance: models.Model) -> QuerySet[PortSlice]:
    if isinstance(instance, EgressIP):
        return PortSlice.objects.filter(ip=instance)
    if isinstance(instance, Machine):
        return PortSlice.objects.filter(machine=instance)
    if isinstance(instance, EgressPool):
        return PortSlice.objects.filter(ip__pool=instance)
    if isinstance(instance, Datacenter):
        return PortSlice.objects.filter(ip__pool__datacenter=instance)
    return PortSlice.objects.none()


def _described(slices: Iterable[PortSlice] | Iterable[alloc.Slice]) -> list[str]:
    named = []
    for item in slices:
        if isinstance(item, PortSlice):
            named.append(f"{item.ip.address}:{item.lo}-{item.hi} ({item.machine.hostname})")
        else:
            named.append(f"{item.ip}:{item.lo}-{item.hi} ({item.machine})")
        if len(named) == _NAMED:
            break
    return named


def _misfits(scope: QuerySet[EgressIP] | None) -> set[alloc.Slice]:
    if scope is None:
        return set()
    ips, policies, slices = slice_fit_inputs(ips=scope)
    return set(alloc.misfits(ips=ips, policies=policies, slices=slices))


def _guarded(change: InventoryChange) -> models.Model:
    """Write ``change`` under its datacenter's lock, or refuse it whole.

    Slices that already did not fit (draining out after an earlier planned
    change) do not block it; only those this write would newly displace do.
    """
    with transaction.atomic():
        datacenter_lock(change.datacenter_id())
        scope = change.fit_scope()
        before = _misfits(scope)
        written = change.write(planned=False)
        displaced = sorted(_misfits(scope) - before, key=lambda s: (s.ip, s.lo))
        if displaced:
            raise InventoryConflict(
                constants.ERR_DISPLACES_SLICES
                % {"object": change.instance, "count": len(displaced)},
                slices=_described(displaced),
            )
        _refuse_moving_held_ip(change)
        _resign_renamed(change)
    return written


def _refuse_moving_held_ip(change: InventoryChange) -> None:
    """An IP moved to another pool would leave its slices with machines that may not
    serve that pool, and bundles naming the old one: planned, or not at all."""
    instance = change.instance
    if isinstance(instance, EgressIP) and "pool" in change.changed:
        held = _live_slices_of(instance).order_by("lo")
        if held.exists():
            raise InventoryConflict(
                constants.ERR_DISPLACES_SLICES % {"object": instance, "count": held.count()},
                slices=_described(held),
            )


# The fields that name a pool in every bundle holding one of its slices.
_NAMING_FIELDS: dict[type[models.Model], set[str]] = {
    Datacenter: {"code"},
    EgressPool: {"purpose", "country", "region", "city"},
}


def _resign_renamed(change: InventoryChange) -> None:
    """A renamed pool or datacenter: its machines' bundles say the old name, so they
    get new ones in the same transaction (reconcile delivers them)."""
    instance = change.instance
    if not change.changed & _NAMING_FIELDS.get(type(instance), set()):
        return
    slices = _live_slices_of(instance)
    machines = Machine.objects.filter(pk__in=slices.values("machine_id"))
    # Without a key there are no bundles yet: the first ones will carry the new name.
    with suppress(SigningKeyMissing):
        bundles_build(machines=machines)


def model_save(*, instance: models.Model, values: dict[str, Any]) -> models.Model:
    """Set ``values`` on ``instance``, validate every model rule, save (audited).

    Raises Django's ``ValidationError`` with field names, or
    :class:`InventoryConflict` when live slices would no longer fit; nothing is
    written then.
    """
    return InventoryChange(instance, dict(values)).write_guarded()


def machine_save(
    *, machine: Machine, values: dict[str, Any], pools: Iterable[EgressPool] | None = None
) -> Machine:
    """Save a machine and, when given, the pools it serves (all of its datacenter)."""
    change = InventoryChange(machine, dict(values), None if pools is None else list(pools))
    written = change.write_guarded()
    assert isinstance(written, Machine)
    return written


def _set_pools(machine: Machine, pools: list[EgressPool]) -> None:
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


def inventory_delete(*, instance: models.Model) -> None:
    """Delete an inventory row; :class:`InventoryConflict` when live slices or other
    rows still use it (a machine drains first; an IP goes with a planned delete)."""
    InventoryChange(instance, delete=True).write_guarded()


def inventory_plan_preview(*, change: InventoryChange, now: datetime | None = None) -> PlanPreview:
    """The plan as it would be with ``change`` written; nothing stays written."""
    return plan_preview(datacenter=_datacenter_of(change), now=now, change=_planned(change))


def inventory_plan_apply(
    *,
    change: InventoryChange,
    inputs_digest: str,
    user: Any = None,
    reason: str = "",
    now: datetime | None = None,
) -> PlanRevision:
    """Write ``change`` and the plan :func:`inventory_plan_preview` showed, in one
    transaction; :class:`PlanConflict` with a fresh preview if anything moved."""
    return plan_apply(
        datacenter=_datacenter_of(change),
        inputs_digest=inputs_digest,
        user=user,
        reason=reason or f"inventory change: {change.instance}",
        now=now,
        change=_planned(change),
    )


def _planned(change: InventoryChange) -> Change:
    return Change(write=lambda: change.write(planned=True), pools=change.pool_ids)


def _datacenter_of(change: InventoryChange) -> Datacenter:
    datacenter_id = change.datacenter_id()
    if datacenter_id is None:
        raise InventoryConflict(constants.ERR_NOTHING_TO_PLAN % {"object": change.instance})
    return Datacenter.objects.get(pk=datacenter_id)


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


# An import check lists at most this many bad records.
IMPORT_ERRORS_LISTED = 50


def inventory_import_check(*, records: Iterable[InventoryRecord]) -> list[InventoryError]:
    """Every bad record of an import, not just the first: nothing is written.

    Each record is tried in a savepoint of one transaction that is rolled back
    at the end, with the same rules as :func:`inventory_import`. A record that
    depends on a bad one (an IP of a pool that failed) is reported too.
    """
    errors: list[InventoryError] = []
    with transaction.atomic():
        importer = _Importer()
        for record in records:
            try:
                with transaction.atomic():
                    importer.write(record)
            except InventoryError as error:
                errors.extend(error.every)
                importer = _Importer()  # its caches may hold rows the savepoint undid
            if len(errors) >= IMPORT_ERRORS_LISTED:
                break
        transaction.set_rollback(True)
    return errors
