"""Network namespaces for the agent's real-kernel tests.

A :class:`Testbed` is two namespaces joined by a veth pair:

* ``host`` — the machine under test; the shared egress addresses
  (``198.51.100.7``, ``2001:db8::7``) sit on its loopback, traffic to the origin
  leaves by the veth (``192.0.2.2`` / ``fd00::2``).
* ``origin`` — the servers: ``203.0.113.1-8`` and ``2001:db8:1::1-8`` on its
  loopback, one TCP listener on port 80 for all of them (never accepts, the
  backlog holds the connections), reached by the veth (``192.0.2.1`` / ``fd00::1``).

Code runs inside a namespace in a child process (``ip netns exec``), never by
switching a thread of the test process. Everything is removed on exit, even
when a test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

EGRESS_V4 = "198.51.100.7"
EGRESS_V6 = "2001:db8::7"
ORIGINS_V4 = [f"203.0.113.{i}" for i in range(1, 9)]
ORIGINS_V6 = [f"2001:db8:1::{i}" for i in range(1, 9)]
ORIGIN_PORT = 80

_LISTENER = """
import signal, socket, sys
socks = []
for family, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((any_addr, int(sys.argv[1])))
    s.listen(4096)
    socks.append(s)
print("listening", flush=True)
signal.pause()
"""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def have_tools() -> bool:
    return shutil.which("ip") is not None


def unique_name(role: str) -> str:
    return f"psT{role}{secrets.token_hex(3)}"


def in_netns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def python_in(ns: str, *args: str) -> list[str]:
    return in_netns(ns, PYTHON, *args)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    return env


def run_worker(ns: str, command: str, timeout: float = 60, **kwargs: object) -> Any:
    """Run ``tests.agent.workers.<command>(**kwargs)`` in ``ns``; its JSON result."""
    done = subprocess.run(
        python_in(ns, "-m", "tests.agent.workers", command, json.dumps(kwargs)),
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"worker {command} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class Testbed:
    """Two namespaces and the processes started in them; see the module docstring."""

    __test__ = False  # not a test class, despite the name

    host: str = field(default_factory=lambda: unique_name("h"))
    origin: str = field(default_factory=lambda: unique_name("o"))
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    def add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def build(self) -> None:
        self.add_namespace(self.host)
        self.add_namespace(self.origin)
        veth_host, veth_origin = unique_name("a"), unique_name("b")
        ip("link", "add", veth_host, "netns", self.host, "type", "veth",
           "peer", "name", veth_origin, "netns", self.origin)  # fmt: skip
        self._side(self.host, veth_host, "192.0.2.2", "fd00::2")
        self._side(self.origin, veth_origin, "192.0.2.1", "fd00::1")
        ip("-n", self.host, "addr", "add", f"{EGRESS_V4}/32", "dev", "lo")
        ip("-n", self.host, "addr", "add", f"{EGRESS_V6}/128", "dev", "lo", "nodad")
        ip("-n", self.host, "route", "add", "203.0.113.0/24", "via", "192.0.2.1")
        ip("-n", self.host, "-6", "route", "add", "2001:db8:1::/64", "via", "fd00::1")
        for v4, v6 in zip(ORIGINS_V4, ORIGINS_V6, strict=True):
            ip("-n", self.origin, "addr", "add", f"{v4}/32", "dev", "lo")
            ip("-n", self.origin, "addr", "add", f"{v6}/128", "dev", "lo", "nodad")
        ip("-n", self.origin, "route", "add", f"{EGRESS_V4}/32", "via", "192.0.2.2")
        ip("-n", self.origin, "-6", "route", "add", f"{EGRESS_V6}/128", "via", "fd00::2")

    @staticmethod
    def _side(ns: str, dev: str, v4: str, v6: str) -> None:
        ip("-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
        ip("-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
        ip("-n", ns, "link", "set", dev, "up")

    def start_listener(self, port: int = ORIGIN_PORT) -> None:
        process = self.spawn(self.origin, "-c", _LISTENER, str(port))
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "listening"

    def spawn(self, ns: str, *args: str) -> subprocess.Popen[str]:
        """A Python child in ``ns`` with pipes; stopped at teardown if still running."""
        process = subprocess.Popen(
            python_in(ns, *args),
            cwd=REPO,
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        return process

    def teardown(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        for ns in self.namespaces:
            ip("netns", "del", ns, check=False)
