"""Small builders for planner rows; each returns a saved, validated object."""

from __future__ import annotations

from itertools import count
from typing import Any

from django.db import transaction

from planner.models import Datacenter, EgressIP, EgressPool, Machine, PortSlice

_serial = count(1)


def make_datacenter(**fields: Any) -> Datacenter:
    values = {"code": f"dc{next(_serial)}", "name": "Test DC", "country": "DE", **fields}
    return _saved(Datacenter(**values))


def make_pool(**fields: Any) -> EgressPool:
    datacenter = fields.pop("datacenter", None) or make_datacenter()
    values = {"purpose": "warp", "country": "DE", **fields}
    return _saved(EgressPool(datacenter=datacenter, **values))


def make_ip(address: str | None = None, **fields: Any) -> EgressIP:
    pool = fields.pop("pool", None) or make_pool()
    address = address or f"192.0.2.{next(_serial) % 254 + 1}"
    return _saved(EgressIP(address=address, pool=pool, **fields))


def make_machine(hostname: str | None = None, **fields: Any) -> Machine:
    datacenter = fields.pop("datacenter", None) or make_datacenter()
    values = {"address": "10.0.0.2", **fields}
    hostname = hostname or f"m{next(_serial)}.example.net"
    return _saved(Machine(hostname=hostname, datacenter=datacenter, **values))


def make_slice(*, ip: EgressIP, machine: Machine, lo: int, hi: int, **fields: Any) -> PortSlice:
    """A slice written straight to the table, as only the plan writer may in the product;
    the check and the write share one transaction (BEGIN IMMEDIATE on SQLite)."""
    with transaction.atomic():
        return _saved(PortSlice(ip=ip, machine=machine, lo=lo, hi=hi, **fields))


def _saved(instance: Any) -> Any:
    instance.full_clean()
    instance.save()
    return instance
