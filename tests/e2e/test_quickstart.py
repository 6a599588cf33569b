"""``make run``'s loop, headless: honcho runs the Procfile on SQLite and the
filesystem broker; within a minute every demo agent applied its bundle and
reports real sockets; Ctrl-C leaves no process and no namespace behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.loop import ROOT, free_port, wait_for
from tests.support import need, need_root

HONCHO = Path(sys.executable).parent / "honcho"


def _demo_state(database: Path) -> list[tuple[str, int, int, int]]:
    """(hostname, applied serial, bundle serial, sockets reported) per demo machine."""
    with sqlite3.connect(database, timeout=20) as db:
        return db.execute(
            """
            SELECT m.hostname, m.applied_serial, m.bundle_serial,
                   COALESCE((SELECT SUM(u.tcp) FROM planner_sliceusage u
                             JOIN planner_portslice s ON s.id = u.slice_id
                             WHERE s.machine_id = m.id), 0)
            FROM planner_machine m JOIN planner_datacenter d ON d.id = m.datacenter_id
            WHERE d.code = 'demo1' ORDER BY m.hostname
            """
        ).fetchall()


def _live(rows: list[tuple[str, int, int, int]]) -> bool:
    # Three machines on the egress library, and demo-u's plain sockets in exact-range mode.
    return len(rows) == 4 and all(a == b > 0 and sockets > 0 for _, a, b, sockets in rows)


def _port_range_part(database: Path, hostname: str) -> dict[str, str]:
    with sqlite3.connect(database, timeout=20) as db:
        (enforcement,) = db.execute(
            "SELECT enforcement FROM planner_machine WHERE hostname = ?", (hostname,)
        ).fetchone()
    return json.loads(enforcement)["port_range"]


def test_make_run_shows_the_loop_live_and_ctrl_c_cleans_up(tmp_path: Path) -> None:
    need_root()
    need(shutil.which("nft") is not None and shutil.which("ip") is not None, "needs ip and nft")
    need(HONCHO.exists(), "needs honcho in the virtualenv")
    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DATABASE_URL"))}
    port = free_port()
    env.update(PORTSLICE_VAR_DIR=str(var), SIGNING_KEY_DIR=str(var / "keys"), WEB_PORT=str(port))
    manage = [sys.executable, "manage.py"]
    for step in (["migrate", "--no-input", "-v0"], ["signing_key", "generate", "--if-missing"]):
        subprocess.run([*manage, *step], cwd=ROOT, env=env, check=True, capture_output=True)
    log = tmp_path / "honcho.log"
    with log.open("wb") as out:
        honcho = subprocess.Popen(
            [str(HONCHO), "start", "-f", "Procfile"], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for("the demo agents live", lambda: _live(_demo_state(var / "portslice.sqlite3")),
                 timeout=60)  # fmt: skip
        assert "nftables ON" in log.read_text()
        exact = _port_range_part(var / "portslice.sqlite3", "demo-u.demo1.example.net")
        assert exact["state"] == "on" and exact["detail"].startswith("exact:"), exact
        assert f"demo: open http://127.0.0.1:{port}/" in log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert b'portslice_slices{datacenter="demo1",state="active"}' in answer.read()
        namespaces = json.loads((var / "demo" / "namespaces.json").read_text())
        assert len(namespaces) == 6  # gateway, origin, four agents
    finally:
        os.kill(honcho.pid, signal.SIGINT)  # what Ctrl-C sends
        try:
            honcho.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            pytest.fail(f"honcho did not stop:\n{log.read_text()[-3000:]}")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [ns for ns in namespaces if ns in listed]
    leftovers = subprocess.run(
        ["pgrep", "-f", str(var)], capture_output=True, text=True
    ).stdout.split()
    assert leftovers == []
