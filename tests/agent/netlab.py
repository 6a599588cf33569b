"""Agent processes in network namespaces, and a relay that lets a namespace reach Redis.

The namespaces are :class:`tests.agent.netns.Testbed`'s: ``host`` has the
shared egress IPs (198.51.100.7, 2001:db8::7), ``origin`` (here "peer") the
destinations (203.0.113.1, 2001:db8:1::1). On top of it this module adds what
the agent's tests need: :class:`Netns` runs commands and long-lived processes
(with a log file, stopped by SIGTERM so Celery shuts down cleanly) in one
namespace; :data:`PEER_SERVER` logs every TCP connection and UDP datagram the
peer receives. Leaving :func:`netns_pair` stops every process and deletes both
namespaces (and with them their veths and nftables tables).

Redis listens on 127.0.0.1 of the root namespace only, which a process in
another namespace cannot reach; :class:`UnixRelay` forwards a Unix socket (the
filesystem is shared) to it, byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.agent.netns import EGRESS_V4, EGRESS_V6, ORIGINS_V4, ORIGINS_V6, Testbed

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

SHARED_V4 = EGRESS_V4
SHARED_V6 = EGRESS_V6
PEER_V4 = ORIGINS_V4[0]
PEER_V6 = ORIGINS_V6[0]
PEER_PORT = 9000

# Logs "<proto> <peer ip> <peer port>" for each TCP connection or UDP datagram.
PEER_SERVER = """
import selectors, socket, sys
log = open(sys.argv[1], "a", buffering=1)
sel = selectors.DefaultSelector()
for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(family, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, int(sys.argv[2])))
        if kind == socket.SOCK_STREAM:
            s.listen(512)
        sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
held = []
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s.type == socket.SOCK_STREAM:
            conn, peer = s.accept()
            held.append(conn)
            log.write(f"tcp {peer[0]} {peer[1]}\\n")
        else:
            _, peer = s.recvfrom(2048)
            log.write(f"udp {peer[0]} {peer[1]}\\n")
"""


class Netns:
    """A network namespace and the processes a test started in it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.processes: list[subprocess.Popen[str]] = []

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*args),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{args} in {self.name} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def python(
        self, code: str, *args: str, input: str | None = None, check: bool = True, timeout=60
    ) -> subprocess.CompletedProcess[str]:
        return self.run(PYTHON, "-c", code, *args, input=input, check=check, timeout=timeout)

    def spawn(
        self, *args: str, log: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        out = open(log, "a") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        process = subprocess.Popen(
            self.command(*args),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        if log is not None:
            out.close()  # type: ignore[union-attr]
        self.processes.append(process)
        return process

    def stop_processes(self) -> None:
        for process in self.processes:
            stop(process)
        self.processes.clear()


def stop(process: subprocess.Popen[str], timeout: float = 10) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    return process.returncode


def have_command(name: str) -> bool:
    return shutil.which(name) is not None


@contextlib.contextmanager
def netns_pair() -> Iterator[tuple[Netns, Netns]]:
    """``(host, peer)`` namespaces of a fresh :class:`Testbed`, removed on exit."""
    bed = Testbed()
    host, peer = Netns(bed.host), Netns(bed.origin)
    try:
        bed.build()
        yield host, peer
    finally:
        for ns in (host, peer):
            ns.stop_processes()
        bed.teardown()


def start_peer_server(peer: Netns, log: Path, port: int = PEER_PORT) -> None:
    process = peer.spawn(PYTHON, "-c", PEER_SERVER, str(log), str(port))
    wait_for(lambda: log.exists() or process.poll() is not None, what="peer server")
    # The log file appears before the sockets are bound; wait for them.
    wait_for(lambda: _peer_listening(peer, port), what="peer server sockets")


def _peer_listening(peer: Netns, port: int) -> bool:
    out = peer.run("ss", "-Hltn", f"sport = :{port}", check=False).stdout
    return out.count("LISTEN") >= 2


def peer_log(log: Path) -> list[tuple[str, str, int]]:
    if not log.exists():
        return []
    entries = []
    for line in log.read_text().splitlines():
        proto, ip, port = line.split()
        entries.append((proto, ip, int(port)))
    return entries


def wait_for(
    condition: Callable[[], Any], *, timeout: float = 20, interval: float = 0.05, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def bundle_script_prelude() -> str:
    """Python source that defines ``bundle_from(json_text)`` for scripts run in a namespace."""
    return (
        "import json, sys\n"
        "from agent.bundle import Bundle, BundleSlice\n"
        "def bundle_from(text):\n"
        "    d = json.loads(text)\n"
        "    d['slices'] = tuple(BundleSlice(**s) for s in d['slices'])\n"
        "    return Bundle(**d)\n"
    )


def bundle_json(**fields: Any) -> str:
    base: dict[str, Any] = {
        "hostname": "edge-test",
        "datacenter": "fra1",
        "serial": 1,
        "revision": 1,
        "issued_at": 0,
        "expires_at": 0,
        "kid": "test",
        "token": "",
        "slices": [],
    }
    base.update(fields)
    return json.dumps(base)


class UnixRelay:
    """Accept on a Unix socket, relay each connection to a TCP address (Redis)."""

    def __init__(self, path: Path, target: tuple[str, int]) -> None:
        self.path = path
        self.target = target
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(64)
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# --- agents -------------------------------------------------------------------------------------

REDIS = ("127.0.0.1", 6379)
#: Redis database the agent tests use (nothing else in the suite touches it).
REDIS_DB = 13


def write_jwks(path: Path, *public_keys: Any) -> Path:
    path.write_text(json.dumps({"keys": [key.as_dict(private=False) for key in public_keys]}))
    return path


def write_agent_config(path: Path, **values: Any) -> Path:
    """A TOML config for ``python -m agent``; strings quoted, booleans lowered."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    path.write_text("\n".join(lines) + "\n")
    return path


class PlannerInbox:
    """Reads what agents send to the ``planner`` queue, as the planner's worker would."""

    def __init__(self, url: str) -> None:
        from kombu import Connection

        self.connection = Connection(url)
        self.queue = self.connection.SimpleQueue("planner")
        self.queue.clear()
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def _drain(self) -> None:
        from queue import Empty

        while True:
            try:
                message = self.queue.get(block=True, timeout=0.1)
            except Empty:
                return
            _args, kwargs, _embed = message.decode()
            self.messages.append((message.headers["task"], kwargs))
            message.ack()

    def wait_for(
        self, task: str, match: Callable[[dict[str, Any]], bool] = lambda _: True, timeout=20
    ) -> dict[str, Any]:
        """The first message of ``task`` whose kwargs ``match`` (taken out of the inbox)."""

        def found() -> dict[str, Any] | None:
            self._drain()
            for index, (name, kwargs) in enumerate(self.messages):
                if name == task and match(kwargs):
                    del self.messages[index]
                    return kwargs
            return None

        return wait_for(found, timeout=timeout, what=f"a {task} message")

    def close(self) -> None:
        self.queue.close()
        self.connection.release()
