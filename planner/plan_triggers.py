"""The triggers that mark a pool's plan dirty, one definition for the migration and the
check that runs after every ``migrate``.

Imports only the standard library: a migration imports it.
"""

from __future__ import annotations

# The database marks a pool dirty whenever an input of its plan changes, whoever
# writes it (a service, the admin, a shell, a raw UPDATE): a scoped plan covers
# the dirty pools, so a missed mark would be a pool left unplanned. Per vendor,
# since trigger syntax differs; each statement is one trigger (or its function).
_MARK = "UPDATE planner_egresspool SET plan_dirty = {true} WHERE id = {pool} AND NOT plan_dirty"
_MARK_MACHINE = (
    "UPDATE planner_egresspool SET plan_dirty = {true} WHERE NOT plan_dirty AND id IN "
    "(SELECT egresspool_id FROM planner_machine_pools WHERE machine_id = NEW.id)"
)
_TRIGGERS = {
    # table: (events, columns-changed condition, statements)
    "planner_machine_pools": [
        ("AFTER INSERT", "", [_MARK.format(true="{true}", pool="NEW.egresspool_id")]),
        ("AFTER DELETE", "", [_MARK.format(true="{true}", pool="OLD.egresspool_id")]),
    ],
    "planner_egressip": [
        ("AFTER INSERT", "", [_MARK.format(true="{true}", pool="NEW.pool_id")]),
        ("AFTER DELETE", "", [_MARK.format(true="{true}", pool="OLD.pool_id")]),
        (
            "AFTER UPDATE",
            "pool_id usable_lo usable_hi reserved_ports state",
            [
                _MARK.format(true="{true}", pool="OLD.pool_id"),
                _MARK.format(true="{true}", pool="NEW.pool_id"),
            ],
        ),
    ],
    "planner_machine": [
        ("AFTER UPDATE", "state weight", [_MARK_MACHINE]),
    ],
    "planner_egresspool": [
        (
            "AFTER UPDATE",
            "slice_size slices_per_machine max_slices_per_machine aligned",
            [_MARK.format(true="{true}", pool="NEW.id")],
        ),
    ],
}


def trigger_sql(vendor: str) -> tuple[list[str], list[str]]:
    create: list[str] = []
    drop: list[str] = []
    for table, triggers in _TRIGGERS.items():
        for number, (event, columns, statements) in enumerate(triggers):
            name = f"{table}_plan_dirty_{number}"
            if vendor == "postgresql":
                body = "; ".join(s.format(true="true") for s in statements)
                changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in columns.split())
                create.append(
                    f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
                    f"$$ BEGIN {body}; RETURN NULL; END $$"
                )
                when = f" WHEN ({changed})" if changed else ""
                create.append(
                    f"CREATE TRIGGER {name} {event} ON {table} FOR EACH ROW{when} "
                    f"EXECUTE FUNCTION {name}()"
                )
                drop += [
                    f"DROP TRIGGER IF EXISTS {name} ON {table}",
                    f"DROP FUNCTION IF EXISTS {name}()",
                ]
            else:  # SQLite
                body = " ".join(s.format(true="1") + ";" for s in statements)
                changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in columns.split())
                when = f" WHEN {changed}" if changed else ""
                create.append(
                    f"CREATE TRIGGER {name} {event} ON {table} FOR EACH ROW{when} BEGIN {body} END"
                )
                drop.append(f"DROP TRIGGER IF EXISTS {name}")
    return create, drop


def trigger_names() -> list[str]:
    """Every trigger's name, as :func:`trigger_sql` creates them."""
    return [
        f"{table}_plan_dirty_{number}"
        for table, triggers in _TRIGGERS.items()
        for number in range(len(triggers))
    ]


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
        if not existing.intersection(trigger_names()):
            return []  # before migration 0008 made them: nothing to restore
        restored = []
        for name, statement in zip(trigger_names(), trigger_sql("sqlite")[0], strict=True):
            if name not in existing:
                cursor.execute(statement)
                restored.append(name)
    return restored
