"""``make run``'s loop, headless: honcho runs the Procfile on SQLite and the
filesystem broker; within a minute every demo agent applied its bundle and
reports real sockets; Ctrl-C leaves no process and no namespace behind.

And the same without root: a throwaway account runs ``make run`` in a clone it
owns, and the loop is live there too (loopback egress addresses, the guard and
the gateway off); Ctrl-C ends ``make`` with status 0 and leaves no process."""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.loop import ROOT, free_port, wait_for
from tests.support import need, need_root

HONCHO = Path(sys.executable).parent / "honcho"


DEMO_STATE = """
    SELECT m.hostname, m.applied_serial, m.bundle_serial,
           COALESCE((SELECT SUM(u.tcp) FROM planner_sliceusage u
                     JOIN planner_portslice s ON s.id = u.slice_id
                     WHERE s.machine_id = m.id), 0)
    FROM planner_machine m JOIN planner_datacenter d ON d.id = m.datacenter_id
    WHERE d.code = 'demo1' ORDER BY m.hostname
"""


def _demo_state(database: Path) -> list[tuple[str, int, int, int]]:
    """(hostname, applied serial, bundle serial, sockets reported) per demo machine."""
    with sqlite3.connect(database, timeout=20) as db:
        return db.execute(DEMO_STATE).fetchall()


def _live(rows: list[tuple[str, int, int, int]], *, machines: int = 4) -> bool:
    # As root, three machines on the egress library and demo-u's plain sockets in
    # exact-range mode; without root the three only (exact-range mode needs root).
    return len(rows) == machines and all(a == b > 0 and sockets > 0 for _, a, b, sockets in rows)


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
        assert "nftables guard ON" in log.read_text()
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


# --- without root ------------------------------------------------------------------------------

VENV = Path(sys.executable).parent.parent
UNPRIVILEGED_BOUND = 300  # the five minutes, for a loop that shows in one


@pytest.fixture
def account() -> Iterator[pwd.struct_passwd]:
    """A throwaway system account (no home, no login shell), removed after the test."""
    need_root()
    need(all(shutil.which(t) for t in ("useradd", "userdel", "setpriv", "git", "make")),
         "needs useradd, userdel, setpriv, git and make")  # fmt: skip
    name = f"psqs{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "--user-group", name], check=True, capture_output=True)  # fmt: skip
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                pids.append(int(entry.name))
        except FileNotFoundError:  # ended meanwhile
            continue
    return pids


def _kill_all_of(uid: int) -> None:
    for pid in _processes_of(uid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def _take_terminal() -> None:
    """In the child, after setsid: make stdin (the pty) its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _record(terminal: int, log: Path) -> None:
    """Copy the terminal's output to ``log`` until the last process closes it."""
    with log.open("ab") as out:
        while True:
            try:
                data = os.read(terminal, 65536)
            except OSError:  # EIO: nobody holds the terminal any more
                return
            if not data:
                return
            out.write(data)
            out.flush()


def _as(user: pwd.struct_passwd, *, reach_root_python: bool) -> list[str]:
    """setpriv to the account: no supplementary groups, and no capability but (only when
    this interpreter lives where the account cannot reach, e.g. under a 0700 /root)
    CAP_DAC_READ_SEARCH to read it: nothing of the network."""
    command = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    if reach_root_python:
        command += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return command


def test_make_run_without_root_shows_the_loop_and_ctrl_c_ends_with_status_0(
    account: pwd.struct_passwd,
) -> None:
    need(HONCHO.exists(), "needs honcho in the virtualenv")
    home = Path(tempfile.mkdtemp(prefix="portslice-quickstart-", dir="/tmp"))
    clone = home / "portslice"
    log = home / "make.log"
    terminal = -1
    try:
        os.chmod(home, 0o755)
        # A clone of what is committed, owned by the account; the virtualenv is shared
        # (read only: make -o keeps it from reinstalling).
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        (clone / ".venv").symlink_to(VENV)
        subprocess.run(["chown", "-R", f"{account.pw_uid}:{account.pw_gid}", str(home)],
                       check=True)  # fmt: skip
        # Can the account run the interpreter as make will (a shell, the relative path)?
        probe = [*_as(account, reach_root_python=False), "bash", "-c", ".venv/bin/python -c ''"]
        reach = subprocess.run(probe, cwd=clone, capture_output=True).returncode != 0
        port = free_port()
        own = ("CELERY_", "DATABASE_URL", "PORTSLICE_", "SIGNING_KEY")  # the clone's own
        env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
        env.update(HOME=str(home), PORT=str(port))
        # A terminal of its own (a pty), so Ctrl-C is what a person's terminal does with it.
        terminal, tty = os.openpty()
        os.fchown(tty, account.pw_uid, account.pw_gid)
        make = subprocess.Popen(
            [*_as(account, reach_root_python=reach), "make", "-o", ".venv/.installed", "run",
             f"PORT={port}"],
            cwd=clone, env=env, stdin=tty, stdout=tty, stderr=tty, start_new_session=True,
            preexec_fn=_take_terminal,
        )  # fmt: skip
        os.close(tty)
        threading.Thread(target=_record, args=(terminal, log), daemon=True).start()
        # Read as the account: a root reader could leave root-owned WAL files behind.
        read = [*_as(account, reach_root_python=reach), ".venv/bin/python", "-c", READ_AS_ACCOUNT]
        deadline = time.monotonic() + UNPRIVILEGED_BOUND
        while not _live(_read_state(read, clone), machines=3):
            if time.monotonic() > deadline or make.poll() is not None:
                what = "three demo agents applied and live usage above 0 without root"
                pytest.fail(f"{what}: not seen\n{log.read_text()[-4000:]}")
            time.sleep(2)
        text = log.read_text()
        assert "without root" in text and "OFF: the nftables guard and the gateway" in text
        assert "no traffic" not in text
        enforcement = [json.loads(text) for text in _read_state(read, clone, enforcement=True)]
        assert len(enforcement) == 3 and all(
            e["nftables"]["state"] == "off" and e["addresses"]["state"] == "on" for e in enforcement
        ), enforcement
        os.write(terminal, b"\x03")  # Ctrl-C
        try:
            status = make.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"make run did not stop:\n{log.read_text()[-3000:]}")
        text = log.read_text()
        assert status == 0 and "Error 130" not in text, text[-3000:]
        wait_for("no process of the account left", lambda: not _processes_of(account.pw_uid),
                 timeout=15)  # fmt: skip
    finally:
        _kill_all_of(account.pw_uid)
        if terminal >= 0:
            os.close(terminal)
        time.sleep(0.2)
        shutil.rmtree(home, ignore_errors=True)


READ_AS_ACCOUNT = f"""
import json, sqlite3, sys
try:
    with sqlite3.connect("var/portslice.sqlite3", timeout=20) as db:
        if sys.argv[1:] == ["enforcement"]:
            rows = db.execute(
                "SELECT m.enforcement FROM planner_machine m JOIN planner_datacenter d "
                "ON d.id = m.datacenter_id WHERE d.code = 'demo1'").fetchall()
            print(json.dumps([row[0] for row in rows]))
        else:
            print(json.dumps(db.execute({DEMO_STATE!r}).fetchall()))
except sqlite3.Error:  # not made or not migrated yet
    print("[]")
"""


def _read_state(read: list[str], clone: Path, *, enforcement: bool = False) -> Any:
    args = ["enforcement"] if enforcement else []
    done = subprocess.run([*read, *args], cwd=clone, capture_output=True, text=True, check=True)
    return [tuple(row) if isinstance(row, list) else row for row in json.loads(done.stdout)]
