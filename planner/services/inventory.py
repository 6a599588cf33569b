"""Inventory writes: datacenters, pools, egress IPs, machines, and file imports."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models, transaction

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
)

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
