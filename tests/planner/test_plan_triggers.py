"""The dirty-pool triggers survive SQLite's table rebuilds (the quick start's database).

SQLite rebuilds a table to add a non-null column, and the rebuilt table has no
triggers: without the post-migrate check a later migration would silently stop
pools being marked dirty, and scoped plans would leave changes unplanned.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from planner import constants
from planner.plan_triggers import _TRIGGERS, trigger_names

ROOT = Path(__file__).resolve().parents[2]


def _migrate(database: Path, var: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}", "PORTSLICE_VAR_DIR": str(var)}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )


def _triggers(database: Path) -> set[str]:
    with sqlite3.connect(database) as db:
        return {
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'")
        }


def test_it_restores_triggers_a_table_rebuild_dropped(tmp_path: Path) -> None:
    database = tmp_path / "quick.sqlite3"
    _migrate(database, tmp_path)
    assert set(trigger_names()) <= _triggers(database)

    # What Django's SQLite schema editor does to add a NOT NULL column: copy the
    # table, drop the old one (its triggers with it), rename the copy.
    with sqlite3.connect(database) as db:
        db.executescript(
            "PRAGMA legacy_alter_table = ON;"
            "CREATE TABLE new_machine AS SELECT * FROM planner_machine;"
            "DROP TABLE planner_machine;"
            "ALTER TABLE new_machine RENAME TO planner_machine;"
        )
    lost = set(trigger_names()) - _triggers(database)
    assert lost == {"planner_machine_plan_dirty_0"}  # it went with the old table

    _migrate(database, tmp_path)
    assert set(trigger_names()) <= _triggers(database)


def test_a_policy_change_marks_its_pool_whatever_policy_field_changed() -> None:
    (pool_trigger,) = _TRIGGERS["planner_egresspool"]
    assert set(pool_trigger[1].split()) == set(constants.POLICY_FIELDS)
