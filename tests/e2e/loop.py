"""The live loop for real: a private broker, planner workers and agent workers as
processes, each started and stopped by the test, nothing shared with other runs.

* Redis: a ``redis-server`` of our own on a random port, which the test may stop
  and start again (its data on disk, so queues survive a restart). Agents in
  network namespaces reach it through its unix socket, which needs no route.
* RabbitMQ: the server on 127.0.0.1:5672, in a virtual host of our own.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from django.db import connection
from kombu import Connection

import contract
from contract.broker import filesystem_options, filesystem_transport
from planner import signing
from planner.choices import KeyStatus
from planner.models import EgressIP, SigningKey
from tests.agent.netns import ip, unique_name

ROOT = Path(__file__).resolve().parents[2]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PrivateRedis:
    """A redis-server only this test talks to; ``stop()`` and ``start()`` at will."""

    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket_url(self) -> str:
        return f"redis+socket://{self.folder / 'redis.sock'}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--unixsocket", str(self.folder / "redis.sock"), "--unixsocketperm", "777",
             "--dir", str(self.folder), "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for("redis", lambda: (self.folder / "redis.sock").exists() and _answers(self.port))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A virtual host of our own on the shared RabbitMQ, removed afterwards; its URL."""
    vhost = unique_name("v")
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    try:
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


@dataclass
class Loop:
    """Planner workers and agents on one broker; every process stopped by :meth:`close`."""

    folder: Path
    broker_url: str
    agent_broker_url: str
    netns: bool
    #: For ``filesystem://``: the folder messages pass through.
    broker_folder: Path | None = None
    usage_interval: float = 1.0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    netns_of: dict[str, str] = field(default_factory=dict)
    #: ``address:port`` of each agent's metrics endpoint (the rest have it off).
    metrics_addresses: dict[str, str] = field(default_factory=dict)
    _sender: Celery | None = None
    _link_net: str = field(
        default_factory=lambda: f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    )

    def send(self, task: str, *args: Any, queue: str = contract.PLANNER_QUEUE) -> None:
        """Put a task on the broker by name, as the planner and the agents do."""
        if self._sender is None:
            self._sender = Celery(set_as_current=False)
            self._sender.conf.update(task_serializer="json", accept_content=["json"])
        # An explicit connection: Celery would let $CELERY_BROKER_URL (memory:// in
        # the tests, see tests/environment.py) override the app's broker.
        with self.connection() as conn:
            self._sender.send_task(task, args=list(args), queue=queue, connection=conn)

    def connection(self) -> Connection:
        if self.broker_folder is None:
            return Connection(self.broker_url)
        return Connection(
            transport=filesystem_transport(),
            transport_options=filesystem_options(self.broker_folder),
        )

    def _spawn(self, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.processes.append(process)
        return process

    def _planner_env(self) -> dict[str, str]:
        """The planner's environment: the test database, this loop's broker and keys."""
        settings_dict = connection.settings_dict
        env = {
            **os.environ,
            "DATABASE_URL": "postgres://{USER}@{HOST}:{PORT}/{NAME}".format(**settings_dict),
            "CELERY_BROKER_URL": self.broker_url,
            "SIGNING_KEY_DIR": str(signing_key_dir()),
            "DJANGO_SETTINGS_MODULE": "planner.settings",
        }
        if self.broker_folder is not None:  # settings put the broker under var/broker
            env["PORTSLICE_VAR_DIR"] = str(self.broker_folder.parent)
        return env

    def planner_web(self, port: int, **environment: str) -> subprocess.Popen[bytes]:
        """The planner's web (gunicorn, one worker) on 127.0.0.1:``port``; ``environment``
        adds settings (``FORECAST_STEP_SECONDS="2"``)."""
        log = self.folder / "web.log"
        var = self.folder / "web-var"
        env = {**self._planner_env(), "PORTSLICE_VAR_DIR": str(var), **environment}
        argv = [sys.executable, "-m", "gunicorn", "planner.wsgi", "--bind", f"127.0.0.1:{port}",
                "--workers", "1", "--access-logfile", "-"]  # fmt: skip
        process = self._spawn(argv, log, env)
        wait_for("web ready", lambda: _answers(port) or process.poll() is not None)
        assert process.poll() is None, log.read_text()
        return process

    def expose_metrics(self, hostname: str, port: int = 9465) -> str:
        """Link ``hostname``'s namespace to this one (a veth pair, gone with the
        namespace) and serve its agent's metrics on the inner end; ``address:port``."""
        ns = self._namespace(hostname)
        n = len(self.metrics_addresses)
        outer, inner = f"{self._link_net}.{4 * n + 1}", f"{self._link_net}.{4 * n + 2}"
        name, peer = unique_name("o"), unique_name("i")
        ip("link", "add", name, "type", "veth", "peer", "name", peer, "netns", ns)
        ip("addr", "add", f"{outer}/30", "dev", name)
        ip("link", "set", name, "up")
        ip("-n", ns, "addr", "add", f"{inner}/30", "dev", peer)
        ip("-n", ns, "link", "set", peer, "up")
        self.metrics_addresses[hostname] = f"{inner}:{port}"
        return self.metrics_addresses[hostname]

    def planner_worker(self, name: str = "planner", processes: int = 0) -> subprocess.Popen[bytes]:
        """A planner worker: the solo pool, or ``processes`` prefork children."""
        log = self.folder / f"{name}.log"
        env = self._planner_env()
        pool = ["--pool", "prefork", "-c", str(processes)] if processes else ["--pool", "solo"]
        argv = [sys.executable, "-m", "celery", "-A", "planner", "worker", "-Q", "planner",
                *pool, "--without-gossip", "--without-mingle", "-l", "info",
                "-n", f"{name}@%h"]  # fmt: skip
        process = self._spawn(argv, log, env)
        wait_for(f"{name} ready", lambda: "ready." in log.read_text() or process.poll() is not None)
        assert process.poll() is None, log.read_text()
        return process

    def agent_log(self, hostname: str) -> str:
        return (self.folder / f"{hostname}.log").read_text()

    def start_agent(self, hostname: str) -> None:
        """Start (or restart) ``hostname``'s agent and wait until it consumes its queue."""
        self.start_agents([hostname])

    def start_agents(self, hostnames: list[str]) -> None:
        """Start them all, then wait until each consumes its queue."""
        waits = [self._spawn_agent(hostname) for hostname in hostnames]
        for wait in waits:
            wait()

    def _spawn_agent(self, hostname: str) -> Callable[[], None]:
        config = self._agent_config(hostname)
        argv = [sys.executable, "-m", "agent", "--config", str(config), "run", "--loglevel", "INFO"]
        if self.netns:
            argv = ["ip", "netns", "exec", self._namespace(hostname), *argv]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = self.folder / f"{hostname}.log"
        before = log.read_text().count("ready.") if log.exists() else 0
        process = self._spawn(argv, log, env)
        self.agents[hostname] = process

        def ready() -> None:
            wait_for(
                f"agent {hostname} ready",
                lambda: log.read_text().count("ready.") > before or process.poll() is not None,
            )
            assert process.poll() is None, log.read_text()

        return ready

    def _namespace(self, hostname: str) -> str:
        """The agent's own network namespace (kept across restarts, as a host's is)."""
        if hostname not in self.netns_of:
            ns = unique_name("l") + secrets.token_hex(1)
            ip("netns", "add", ns)
            self.namespaces.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            self.netns_of[hostname] = ns
        return self.netns_of[hostname]

    def nft_table(self, hostname: str) -> str:
        """The guard the agent's kernel enforces now."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns_of[hostname], "nft", "list", "table", "inet",
             "portslice"], capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    def kill_agent(self, hostname: str) -> None:
        process = self.agents[hostname]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def _agent_config(self, hostname: str) -> Path:
        folder = self.folder / hostname
        folder.mkdir(parents=True, exist_ok=True)
        keys = folder / "keys.json"
        keys.write_text(json.dumps(signing.jwks(public_keys())))
        values = {
            "hostname": hostname,
            "broker_url": self.agent_broker_url,
            "keys_path": str(keys),
            "state_dir": str(folder / "state"),
            "manage_nftables": self.netns,
            "manage_port_range": self.netns,
            # The slices' egress addresses must be local, or the agent acks "failed".
            "add_addresses": True,
            "usage_interval": self.usage_interval,
            "metrics_address": self.metrics_addresses.get(hostname, "off"),
            "socket_path": str(folder / "agent.sock"),
        }
        if self.broker_folder is not None:
            values["broker_folder"] = str(self.broker_folder)
        path = folder / "agent.toml"
        path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
        return path

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for ns in self.namespaces:
            ip("netns", "del", ns, check=False)
        if not self.netns:  # agents on this host added the egress addresses to its lo
            for address in EgressIP.objects.values_list("address", flat=True):
                ip("addr", "del", f"{address}/{32 if ':' not in address else 128}", "dev", "lo",
                   check=False)  # fmt: skip


def public_keys() -> list[dict[str, Any]]:
    keys = SigningKey.objects.filter(status__in=[KeyStatus.ACTIVE, KeyStatus.PUBLISHED])
    return [key.public_jwk for key in keys]


def signing_key_dir() -> Path:
    from django.conf import settings

    return Path(settings.SIGNING_KEY_DIR)
