"""The triggers that keep a pool's plan bookkeeping, one definition for the migrations and
the check that runs after every ``migrate``.

Imports only the standard library: a migration imports it.
"""

from __future__ import annotations

# The database keeps two marks on each pool, whoever writes (a service, the
# admin, a shell, a raw UPDATE):
#
# - ``plan_dirty``: an inventory input of the pool's plan changed since the apply
#   that last planned it. A scoped plan covers the dirty pools, so a missed mark
#   would be a pool left unplanned.
# - ``plan_version`` (generation 2): bumped by every committed change to any
#   input of the pool's plan, its live slices included. A preview's digest is
#   over the versions of the pools it planned, not over their 100,000 rows, so
#   an apply knows the inputs are still the previewed ones without re-reading
#   them into a digest (planner.services.plans). On PostgreSQL a pool is bumped
#   once per statement (``plan_stamp`` names the transaction and statement that
#   last bumped it): a bulk insert of 10,000 memberships writes each pool row
#   once, not 10,000 times (repeated updates of one row in one transaction
#   grow a chain of row versions each update walks). SQLite has neither; the
#   quick start's few rows bump every time.
#
# Per vendor, since trigger syntax differs; each statement is one trigger (or
# its function). Generation 1 is what migration 0010 created (dirty marks only,
# before the version columns existed); 0011 replaces it with generation 2.
#
# A migration that alters the pools table must drop the triggers first and
# create them after, as 0011 does: SQLite rebuilds the table, and the rename
# fails on a trigger of another table that writes it.
GENERATION = 2

_POOL = "UPDATE planner_egresspool SET {set} WHERE {where}"
_DIRTY_1 = {"set": "plan_dirty = {true}", "guard": "NOT plan_dirty"}
_STAMP = "txid_current()::text || ' ' || statement_timestamp()::text"
_DIRTY_2 = {
    "postgresql": {
        "set": f"plan_dirty = true, plan_version = plan_version + 1, plan_stamp = {_STAMP}",
        "guard": f"(NOT plan_dirty OR plan_stamp IS DISTINCT FROM {_STAMP})",
    },
    "sqlite": {"set": "plan_dirty = 1, plan_version = plan_version + 1", "guard": ""},
}
# Slices are the plan's output as much as its input: writing them (only an
# apply does) bumps the version without marking the pool dirty.
_BUMP_2 = {
    "postgresql": {
        "set": f"plan_version = plan_version + 1, plan_stamp = {_STAMP}",
        "guard": f"plan_stamp IS DISTINCT FROM {_STAMP}",
    },
    "sqlite": {"set": "plan_version = plan_version + 1", "guard": ""},
}

# Which pools a row's change touches, as a SQL condition on the pool's id.
_ONE = "id = {row}.{column}"
_OF_MACHINE = "id IN (SELECT egresspool_id FROM planner_machine_pools WHERE machine_id = NEW.id)"
# A slice's pool is its IP's; on PostgreSQL a statement-level trigger sees every
# row a statement wrote (its transition table ``changed``), on SQLite one row.
_OF_SLICES = "id IN (SELECT i.pool_id FROM changed c JOIN planner_egressip i ON i.id = c.ip_id)"
_OF_SLICE = "id = (SELECT pool_id FROM planner_egressip WHERE id = {row}.ip_id)"

# table: [(event, columns whose change fires it ("" for any), pool conditions,
#          what it marks: "dirty" (and the version) or "version" only)]
_Trigger = tuple[str, str, list[str], str]
_TRIGGERS: dict[str, list[_Trigger]] = {
    "planner_machine_pools": [
        ("AFTER INSERT", "", [_ONE.format(row="NEW", column="egresspool_id")], "dirty"),
        ("AFTER DELETE", "", [_ONE.format(row="OLD", column="egresspool_id")], "dirty"),
    ],
    "planner_egressip": [
        ("AFTER INSERT", "", [_ONE.format(row="NEW", column="pool_id")], "dirty"),
        ("AFTER DELETE", "", [_ONE.format(row="OLD", column="pool_id")], "dirty"),
        (
            "AFTER UPDATE",
            "address pool_id usable_lo usable_hi reserved_ports state",
            [_ONE.format(row="OLD", column="pool_id"), _ONE.format(row="NEW", column="pool_id")],
            "dirty",
        ),
    ],
    "planner_machine": [
        ("AFTER UPDATE", "state weight", [_OF_MACHINE], "dirty"),
    ],
    "planner_egresspool": [
        (
            "AFTER UPDATE",
            "slice_size slices_per_machine max_slices_per_machine aligned",
            [_ONE.format(row="NEW", column="id")],
            "dirty",
        ),
    ],
}
# Generation 2 only. Row by row on SQLite; per statement on PostgreSQL, whose
# transition table names the rows (an apply writes thousands in a few statements).
_SLICE_TRIGGERS: dict[str, list[_Trigger]] = {
    "planner_portslice": [
        ("AFTER INSERT", "", [_OF_SLICE.format(row="NEW")], "version"),
        ("AFTER DELETE", "", [_OF_SLICE.format(row="OLD")], "version"),
        ("AFTER UPDATE", "", [_OF_SLICE.format(row="NEW")], "version"),
    ],
}
_TRANSITION = {"AFTER INSERT": "NEW", "AFTER DELETE": "OLD", "AFTER UPDATE": "NEW"}


def _triggers(generation: int) -> list[tuple[str, str, _Trigger]]:
    """(name, table, trigger) of each trigger of ``generation``."""
    tables = {**_TRIGGERS, **(_SLICE_TRIGGERS if generation >= 2 else {})}
    return [
        (f"{table}_plan_{trigger[3]}_{number}", table, trigger)
        for table, triggers in tables.items()
        for number, trigger in enumerate(triggers)
    ]


def _statement(vendor: str, generation: int, marks: str, condition: str) -> str:
    if generation == 1:
        true = "true" if vendor == "postgresql" else "1"
        spec = {"set": _DIRTY_1["set"].format(true=true), "guard": _DIRTY_1["guard"]}
    else:
        spec = (_DIRTY_2 if marks == "dirty" else _BUMP_2)[vendor]
    where = f"{spec['guard']} AND {condition}" if spec["guard"] else condition
    return _POOL.format(set=spec["set"], where=where)


def trigger_sql(vendor: str, generation: int = GENERATION) -> tuple[list[str], list[str]]:
    """The statements that create the triggers of ``generation``, and those that drop them."""
    create: list[str] = []
    drop: list[str] = []
    for name, table, (event, columns, conditions, marks) in _triggers(generation):
        per_statement = vendor == "postgresql" and table in _SLICE_TRIGGERS
        if per_statement:
            conditions = [_OF_SLICES]
        statements = [_statement(vendor, generation, marks, c) for c in conditions]
        if vendor == "postgresql":
            body = "; ".join(statements)
            changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in columns.split())
            create.append(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN {body}; RETURN NULL; END $$"
            )
            if per_statement:
                each = f"REFERENCING {_TRANSITION[event]} TABLE AS changed FOR EACH STATEMENT"
            else:
                when = f" WHEN ({changed})" if changed else ""
                each = f"FOR EACH ROW{when}"
            create.append(
                f"CREATE TRIGGER {name} {event} ON {table} {each} EXECUTE FUNCTION {name}()"
            )
            drop += [
                f"DROP TRIGGER IF EXISTS {name} ON {table}",
                f"DROP FUNCTION IF EXISTS {name}()",
            ]
        else:  # SQLite
            body = " ".join(s + ";" for s in statements)
            changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in columns.split())
            when = f" WHEN {changed}" if changed else ""
            create.append(
                f"CREATE TRIGGER {name} {event} ON {table} FOR EACH ROW{when} BEGIN {body} END"
            )
            drop.append(f"DROP TRIGGER IF EXISTS {name}")
    return create, drop


def trigger_names(generation: int = GENERATION) -> list[str]:
    """Every trigger's name, as :func:`trigger_sql` creates them."""
    return [name for name, _, _ in _triggers(generation)]


def restore_sqlite_triggers(connection: object) -> list[str]:
    """Create the triggers SQLite lost; the names of those it had to create.

    SQLite cannot alter most columns in place, so Django rebuilds the table (a
    copy, a drop, a rename) and the old table's triggers go with it: a later
    migration that adds a column to machines or pools would silently stop
    marking pools dirty. ``migrate`` runs this afterwards (planner/apps.py).
    PostgreSQL alters tables in place and keeps its triggers.
    """
    if getattr(connection, "vendor", None) != "sqlite":
        return []
    with connection.cursor() as cursor:  # type: ignore[attr-defined]
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        existing = {name for (name,) in cursor.fetchall()}
        if not existing.intersection(trigger_names(1)):
            return []  # before migration 0010 made them: nothing to restore
        cursor.execute("SELECT name FROM pragma_table_info('planner_egresspool')")
        # Migrated only to 0010: its generation, whose columns exist.
        has_version = "plan_version" in {name for (name,) in cursor.fetchall()}
        generation = GENERATION if has_version else 1
        restored = []
        statements = trigger_sql("sqlite", generation)[0]
        for name, statement in zip(trigger_names(generation), statements, strict=True):
            if name not in existing:
                cursor.execute(statement)
                restored.append(name)
    return restored
