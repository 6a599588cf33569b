"""Reads that turn audit entries into sentences an operator reads: from -> to, with names.

The audit trail stores what the signals saw: field values with foreign keys as
ids (``pool_id: 3``), updates as ``[before, after]`` pairs, pool membership as
``{"add": [2, 3]}``, a plan's diff summary with lists. Shown as they are, they
were Python reprs with ids; here every id becomes the name it stands for (a
pool's key, a machine's host name, an IP's address, a datacenter's code), in a
fixed number of queries per page.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from planner.choices import AuditAction
from planner.models import AuditEntry, Datacenter, EgressIP, EgressPool, Machine, PlanRevision

# Foreign keys the audit stores by id, and what names each.
REFERENCES = {
    "pool": "pool",
    "pools": "pool",
    "machine_pools": "pool",
    "datacenter": "datacenter",
    "machine": "machine",
    "ip": "ip",
    "revision": "revision",
}
# Fields that say nothing to an operator (secrets, internal digests).
HIDDEN = {"id", "token", "inputs_digest", "outcome_digest", "usage"}
# Longer lists are cut to this many names and a count.
LISTED = 12


@dataclass(frozen=True)
class FieldChange:
    field: str
    before: str  # "" for a create
    after: str  # "" for a delete

    @property
    def text(self) -> str:
        if self.before and self.after:
            return f"{self.field}: {self.before} → {self.after}"
        return f"{self.field}: {self.after or self.before}"


MODEL_NAMES = {
    "planner.Datacenter": "datacenter",
    "planner.EgressPool": "pool",
    "planner.EgressIP": "egress IP",
    "planner.Machine": "machine",
    "planner.PortSlice": "slice",
    "planner.PlanRevision": "plan revision",
    "planner.Inventory": "inventory",
}


@dataclass(frozen=True)
class ReadableEntry:
    entry: AuditEntry
    changes: list[FieldChange]

    @property
    def what(self) -> str:
        """ "pool fra1/warp/DE": what kind of thing, and which."""
        kind = MODEL_NAMES.get(self.entry.model, _label(self.entry.model.rsplit(".", 1)[-1]))
        return f"{kind} {self.entry.object_repr}"


def readable_entries(*, entries: Iterable[AuditEntry]) -> list[ReadableEntry]:
    """The entries with their changes as from -> to lines, ids named."""
    entries = list(entries)
    names = _Names(entries)
    return [ReadableEntry(entry, _changes(entry, names)) for entry in entries]


def _label(key: str) -> str:
    return key.removesuffix("_id").replace("_", " ")


def _kind(key: str) -> str | None:
    return REFERENCES.get(key.removesuffix("_id"))


def _changes(entry: AuditEntry, names: _Names) -> list[FieldChange]:
    changes = entry.changes if isinstance(entry.changes, dict) else {"change": entry.changes}
    result = []
    for key, value in changes.items():
        if key in HIDDEN:
            continue
        kind = _kind(key)
        label = _label(key)
        if entry.action == AuditAction.UPDATE and isinstance(value, list) and len(value) == 2:
            before, after = (names.show(kind, v) for v in value)
            result.append(FieldChange(label, before or "none", after or "none"))
        elif isinstance(value, dict) and kind:  # pool membership: {"add": [ids]}
            for verb, ids in value.items():
                shown = names.show(kind, ids)
                result.append(FieldChange(f"{label} {_verb(verb)}", "", shown or "none"))
        elif entry.action == AuditAction.DELETE:
            result.append(FieldChange(label, names.show(kind, value) or "none", ""))
        else:
            result.append(FieldChange(label, "", names.show(kind, value) or "none"))
    return result


def _verb(action: str) -> str:
    return {"add": "added", "remove": "removed", "clear": "cleared"}.get(action, action)


class _Names:
    """Every id the entries mention, looked up once per kind."""

    def __init__(self, entries: list[AuditEntry]) -> None:
        wanted: dict[str, set[int]] = defaultdict(set)
        for entry in entries:
            if isinstance(entry.changes, dict):
                for key, value in entry.changes.items():
                    kind = _kind(key)
                    if kind:
                        wanted[kind].update(_ids(value))
        self.names: dict[str, dict[int, str]] = {
            kind: _lookup(kind, ids) for kind, ids in wanted.items() if ids
        }

    def show(self, kind: str | None, value: Any) -> str:
        if isinstance(value, list):
            shown = [self.show(kind, item) for item in value[:LISTED]]
            more = len(value) - LISTED
            return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
        if isinstance(value, dict):
            return "; ".join(f"{_label(str(k))} {self.show(None, v)}" for k, v in value.items())
        if value is None or value == "":
            return ""
        if kind and isinstance(value, int) and not isinstance(value, bool):
            return self.names.get(kind, {}).get(value, f"a deleted {kind}")
        if isinstance(value, bool):
            return "yes" if value else "no"
        return str(value)


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [id_ for item in value for id_ in _ids(item)]
    if isinstance(value, dict):
        return [id_ for item in value.values() for id_ in _ids(item)]
    return []


def _lookup(kind: str, ids: set[int]) -> dict[int, str]:
    if kind == "pool":
        pools = EgressPool.objects.filter(pk__in=ids).select_related("datacenter")
        return {pool.pk: pool.key for pool in pools}
    if kind == "datacenter":
        return dict(Datacenter.objects.filter(pk__in=ids).values_list("pk", "code"))
    if kind == "machine":
        return dict(Machine.objects.filter(pk__in=ids).values_list("pk", "hostname"))
    if kind == "ip":
        return dict(EgressIP.objects.filter(pk__in=ids).values_list("pk", "address"))
    if kind == "revision":
        return {
            pk: f"{code} r{number}"
            for pk, code, number in PlanRevision.objects.filter(pk__in=ids).values_list(
                "pk", "datacenter__code", "number"
            )
        }
    return {}
