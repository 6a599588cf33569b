"""``manage.py demo_agents``: the quick start's demo machines, live (``make run``).

Makes (once) the datacenter ``demo1``: one pool of 64-port slices on two shared
IPs, three machines allowed to grow to three slices each, and a rebalance
policy that runs every minute over a two-minute window so the loop shows
within minutes. Then, as root, one network namespace per machine with its
agent enforcing with nftables, a gateway namespace steering answers by the
plan, an origin, and a traffic generator per machine (hot, steady, and a
burst that goes cold, through the egress library), and one more machine on an
aligned pool of its own that runs plain sockets knowing nothing of portslice, its
agent in exact-range mode (root only: it sets its namespace's port range and
default route). Without root the same loop runs on this host: the
egress addresses are in 127.0.0.0/8 (Linux answers on all of them without
privilege; the agents' ``loopback_egress`` and the planner's
``DEMO_LOOPBACK_EGRESS`` allow them, both off by default), the origin listens
on 127.0.0.1, and the slices lie inside this host's ephemeral port range (read
from ``ip_local_port_range``, which an unprivileged agent cannot widen) so the
per-socket range is honoured. Only the nftables guard and the gateway are off.

The agents' and traffic generators' output goes to ``var/demo/<name>.log`` and
to this command's own output (so ``make run`` shows their warnings and errors),
each repeated line once a minute at most.

Ctrl-C (or honcho's SIGTERM) stops every child and deletes every namespace,
and with them their nftables tables; a run that was killed outright is
cleaned up by the next one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from demo.topology import ORIGIN, Topology, agent_link, in_netns, remove_recorded
from planner import selectors, signing, steering
from planner.choices import KeyStatus
from planner.models import Datacenter, EgressIP, EgressPool, Machine, SigningKey
from planner.services.inventory import machine_save, model_save
from planner.services.plans import plan_apply_current
from planner.services.rebalance import rebalance_policy_save
from planner.services.steering import steering_rows

REPO = Path(__file__).resolve().parents[3]
CODE = "demo1"
# Clear of the addresses seed_demo hands out from the start of each documentation range.
EGRESS_IPS = ["198.51.100.240", "198.51.100.241"]
# Without root: loopback addresses (local on every Linux host without configuring them).
LOOPBACK_EGRESS_IPS = ["127.51.100.240", "127.51.100.241"]
LOOPBACK_ORIGIN = "127.0.0.1"
PORT_RANGE_SYSCTL = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: As root one more machine runs unmodified software (demo.traffic's plain sockets, no
#: portslice code) in the agent's exact-range mode, on an aligned pool of its own
#: (docs/agent.md).
UNMODIFIED = "demo-u.demo1.example.net"
UNMODIFIED_IP = "198.51.100.242"
STEER_EVERY = 2.0
#: A line an agent or a generator repeats is shown again after this long at the soonest.
REPEAT_AFTER = 60.0
# The agents' log lines start with a time stamp (honcho stamps its own: dropped here);
# Celery's own lines with "[stamp: LEVEL/process]".
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
_CELERY_LEVEL = re.compile(r"^\[[^\]]*: (\w+)/\w+\]")
PRIVILEGED = (
    "root: each agent in its own network namespace, nftables guard ON, "
    "a gateway steering answers by the plan, real TCP traffic"
)
UNPRIVILEGED = (
    "without root: agents on this host sending real TCP from {ips} (loopback) to "
    "{origin}; slices inside this host's ephemeral ports {lo}-{hi}; "
    "OFF: the nftables guard and the gateway (both need root)"
)
NEEDS_LOOPBACK = (
    "demo: without root the demo sends from 127.0.0.0/8; the planner refuses such egress "
    "addresses unless DEMO_LOOPBACK_EGRESS=true (make run sets it)"
)
OTHER_MODE = (
    "demo: datacenter {code} was made by an earlier run {other} (egress addresses {found}); "
    "this run cannot send from them and its agents will report failed. "
    "Start over with a fresh var directory (make clean) to see the loop."
)


@dataclass(frozen=True)
class DemoMachine:
    """One demo host: its name and the traffic it generates (see demo/traffic.py).

    Each runs its own agent with its own configuration (``_agent_config``), so a
    machine can run in a mode of its own.
    """

    hostname: str
    profile: str


MACHINES = [
    DemoMachine("demo-a.demo1.example.net", "hot"),
    DemoMachine("demo-b.demo1.example.net", "steady"),
    DemoMachine("demo-c.demo1.example.net", "burst"),
]


@dataclass(frozen=True)
class Mode:
    """What this run can do: as root, or without root (loopback addresses)."""

    privileged: bool
    egress_ips: list[str]
    usable: tuple[int, int]
    origin: tuple[str, int]

    @property
    def banner(self) -> str:
        if self.privileged:
            return PRIVILEGED
        ips = "-".join(self.egress_ips[:1] + [self.egress_ips[-1].rsplit(".", 1)[1]])
        origin = f"{self.origin[0]}:{self.origin[1]}"
        return UNPRIVILEGED.format(ips=ips, origin=origin, lo=self.usable[0], hi=self.usable[1])


def demo_mode() -> Mode:
    """Root with ip and nft: namespaces, the guard, a gateway. Otherwise loopback, with the
    slices inside the ephemeral range (an unprivileged agent cannot widen it)."""
    if os.geteuid() == 0 and all(shutil.which(t) for t in ("ip", "nft")):
        return Mode(True, EGRESS_IPS, (1024, 65535), (ORIGIN, 80))
    low, high = (int(n) for n in PORT_RANGE_SYSCTL.read_text().split())
    with socket.socket() as probe:  # a free port for the origin
        probe.bind((LOOPBACK_ORIGIN, 0))
        port = probe.getsockname()[1]
    return Mode(False, LOOPBACK_EGRESS_IPS, (max(low, 1024), high), (LOOPBACK_ORIGIN, port))


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


class Command(BaseCommand):
    help = "Run the demo agents and their traffic until Ctrl-C (make run starts it)."

    def handle(self, *args: Any, **options: Any) -> None:
        self.demo_dir = Path(settings.VAR_DIR) / "demo"
        self.demo_dir.mkdir(parents=True, exist_ok=True)
        record = self.demo_dir / "namespaces.json"
        leftovers = remove_recorded(record)
        if leftovers:
            self.stdout.write(f"removed namespaces left by a killed run: {', '.join(leftovers)}")
        self.mode = demo_mode()
        if not self.mode.privileged and not settings.DEMO_LOOPBACK_EGRESS:
            raise CommandError(NEEDS_LOOPBACK)
        datacenter = demo_datacenter_ensure(mode=self.mode)
        self._warn_other_mode(datacenter)
        self._write_keys()
        self.children: list[Child] = []
        self._output = threading.Lock()
        self._said: dict[tuple[str, str], float] = {}
        self.topology = Topology(record) if self.mode.privileged else None
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            self._start(datacenter)
            self._supervise(datacenter)
        except Stop:
            namespaces = ", removing namespaces" if self.topology is not None else ""
            self.stdout.write(f"demo: stopping agents and traffic{namespaces}")
        finally:
            self._stop_children()
            if self.topology is not None:
                self.topology.remove()

    # --- start ----------------------------------------------------------------------------

    def _start(self, datacenter: Datacenter) -> None:
        self._banner(self.mode.banner)
        host, port = self.mode.origin
        origin = _python("demo.traffic", "listen", "--address", host, "--port", str(port))
        if self.topology is not None:
            self.topology.build([*EGRESS_IPS, UNMODIFIED_IP], len(MACHINES) + 1)
            self._steer(datacenter)
            origin = in_netns(self.topology.origin, *origin)
        self._spawn("origin", origin)
        for index, machine in enumerate(MACHINES):
            config = self._agent_config(machine.hostname)
            agent = _python("agent", "--config", str(config), "run", "--loglevel", "WARNING")
            traffic = _python("demo.traffic", "run", "--state", str(self._state(machine.hostname)),
                              "--profile", machine.profile, "--origin", host,
                              "--port", str(port))  # fmt: skip
            if self.topology is not None:
                ns = self.topology.agent_ns(index)
                agent, traffic = in_netns(ns, *agent), in_netns(ns, *traffic)
            self._spawn(machine.hostname, agent)
            self._spawn(f"traffic {machine.hostname}", traffic)
        if self.topology is not None:
            self._start_unmodified(origin=(host, port))

    def _start_unmodified(self, *, origin: tuple[str, int]) -> None:
        """The exact-range machine (root only): its agent, and plain sockets as its traffic."""
        assert self.topology is not None
        config = self._agent_config(UNMODIFIED, exact=True)
        command = _python("agent", "--config", str(config), "run", "--loglevel", "WARNING")
        ns = self.topology.agent_ns(len(MACHINES))
        self._spawn(UNMODIFIED, in_netns(ns, *command))
        plain = _python("demo.traffic", "plain", "--origin", origin[0], "--port", str(origin[1]))
        self._spawn(f"traffic {UNMODIFIED}", in_netns(ns, *plain))

    def _warn_other_mode(self, datacenter: Datacenter) -> None:
        found = sorted(EgressIP.objects.filter(pool__datacenter=datacenter).exclude(
            address=UNMODIFIED_IP).values_list("address", flat=True))  # fmt: skip
        if found and found != sorted(self.mode.egress_ips):
            other = "without root" if self.mode.privileged else "as root"
            message = OTHER_MODE.format(code=CODE, other=other, found=", ".join(found))
            self.stderr.write(message)

    def _banner(self, mode: str) -> None:
        # The web process of the same Procfile listens there (make run sets both;
        # not $PORT, which honcho sets to a port of its own for each process).
        url = f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('WEB_PORT', '8000')}/"
        lines = [
            "",
            f"demo: {self._agents} agents in datacenter {CODE} ({mode})",
            f"demo: agent logs in {self.demo_dir}/<hostname>.log",
            "demo: agent warnings and errors show here too",
            "demo: bundles are applied within seconds; usage every 5 s; rebalance every minute",
            "demo: (hot machine grows, the burst one goes cold and leaves a draft to approve)",
            f"demo: {UNMODIFIED} runs plain sockets, no portslice code, in exact-range mode"
            if self.mode.privileged
            else "demo: (the exact-range machine with plain sockets needs root: not started)",
            f"demo: open {url}  (admin: {url}admin/, password in var/admin-password)",
            "",
        ]
        self.stdout.write("\n".join(lines))
        self.stdout.flush()

    @property
    def _agents(self) -> int:
        return len(MACHINES) + (1 if self.mode.privileged else 0)

    def _state(self, hostname: str) -> Path:
        return self.demo_dir / hostname / "state"

    def _agent_config(self, hostname: str, *, exact: bool = False) -> Path:
        folder = self.demo_dir / hostname
        folder.mkdir(parents=True, exist_ok=True)
        broker = settings.CELERY_BROKER_URL
        values: dict[str, Any] = {
            "hostname": hostname,
            "broker_url": broker,
            "keys_path": str(self.demo_dir / "keys.json"),
            "state_dir": str(self._state(hostname)),
            "manage_nftables": self.mode.privileged,
            "manage_port_range": self.mode.privileged,
            "loopback_egress": not self.mode.privileged,
            "usage_interval": 5,
            "metrics_address": "off",
            "socket_path": str(folder / "agent.sock"),
        }
        if exact:
            values.update(port_range_mode="exact", route_source=UNMODIFIED_IP)
        if broker.startswith("filesystem"):
            values["broker_folder"] = str(
                settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]
            )
        path = folder / "agent.toml"
        path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
        return path

    def _write_keys(self) -> None:
        keys = SigningKey.objects.filter(status__in=[KeyStatus.ACTIVE, KeyStatus.PUBLISHED])
        path = self.demo_dir / "keys.json"
        path.write_text(json.dumps(signing.jwks([key.public_jwk for key in keys])))

    def _spawn(self, name: str, command: list[str]) -> None:
        log = (self.demo_dir / f"{name.split()[-1]}.log").open("ab")
        process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        self.children.append(Child(name, process))
        threading.Thread(target=self._relay, args=(name, process, log), daemon=True).start()

    def _relay(self, name: str, process: subprocess.Popen[bytes], log: BinaryIO) -> None:
        """Copy a child's output to its log, and to ours (a repeated line once a minute)."""
        assert process.stdout is not None
        with log:
            for raw in process.stdout:
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip()
                if _worth_showing(name, line) and self._news(name, _STAMP.sub("", line)):
                    with self._output:
                        self.stdout.write(f"{name}: {_STAMP.sub('', line)}")
                        self.stdout.flush()

    def _news(self, name: str, line: str) -> bool:
        now = time.monotonic()
        with self._output:
            if len(self._said) > 1000:  # forget what was said long ago
                self._said = {k: t for k, t in self._said.items() if now - t < REPEAT_AFTER}
            last = self._said.get((name, line))
            if last is not None and now - last < REPEAT_AFTER:
                return False
            self._said[(name, line)] = now
            return True

    # --- run --------------------------------------------------------------------------------

    def _supervise(self, datacenter: Datacenter) -> None:
        """Keep the gateway's steering in step with the plan; stop when a child dies."""
        while True:
            for child in self.children:
                if child.process.poll() is not None:
                    self.stderr.write(f"demo: {child.name} exited ({child.process.returncode})")
                    raise SystemExit(1)  # honcho then stops everything
            if self.topology is not None:
                self._steer(datacenter)
            time.sleep(STEER_EVERY)

    def _steer(self, datacenter: Datacenter) -> None:
        rows = steering_rows(datacenter=datacenter)
        if rows == getattr(self, "_steered", None):
            return
        assert self.topology is not None
        revision = selectors.current_revision(datacenter=datacenter)
        self.topology.steer(steering.render_script(rows, datacenter=CODE, revision=revision))
        self._steered = rows

    def _stop_children(self) -> None:
        for child in self.children:
            if child.process.poll() is None:
                os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 2  # honcho kills us outright after 5 s
        for child in self.children:
            try:
                child.process.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()


def _worth_showing(name: str, line: str) -> bool:
    """What reaches ``make run``'s output: all the traffic generators and the origin say
    (errors only), the agents' own log lines (run at WARNING: so warnings and errors), and
    Celery's errors; not Celery's banner or its notes (they stay in the log file)."""
    if not line.strip():
        return False
    if not name.endswith(".example.net") or name.startswith("traffic "):
        return True
    if _STAMP.match(line):
        return True
    celery = _CELERY_LEVEL.match(line)
    return celery is not None and celery.group(1) in {"ERROR", "CRITICAL"}


class Stop(Exception):
    """Ctrl-C or SIGTERM: leave the loop and clean up."""


def _stop(signum: int, frame: object) -> None:
    raise Stop


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def demo_datacenter_ensure(*, mode: Mode) -> Datacenter:
    """The demo datacenter, made the first time (through the services, whole or not
    at all), else as it is."""
    existing = Datacenter.objects.filter(code=CODE).first()
    if existing is not None:
        if mode.privileged:
            unmodified_machine_ensure(datacenter=existing, usable_lo=mode.usable[0])
        return existing
    with transaction.atomic():
        datacenter = _demo_inventory(mode)
        if mode.privileged:
            unmodified_machine_ensure(datacenter=datacenter, usable_lo=mode.usable[0], plan=False)
    plan_apply_current(datacenter=datacenter, reason="demo: first plan")
    return datacenter


def unmodified_machine_ensure(*, datacenter: Datacenter, usable_lo: int, plan: bool = True) -> None:
    """The exact-range machine and its aligned pool (one IP, 256-port slices), made once;
    a datacenter made by an older demo gets them, and a plan, the first time."""
    if Machine.objects.filter(hostname=UNMODIFIED).exists():
        return
    with transaction.atomic():
        pool = model_save(
            instance=EgressPool(),
            values={
                "datacenter": datacenter,
                "purpose": "apps",
                "country": "DE",
                "slice_size": 256,
                "slices_per_machine": 1,
                "aligned": True,
            },
        )
        assert isinstance(pool, EgressPool)
        ip = {"address": UNMODIFIED_IP, "pool": pool, "usable_lo": usable_lo}
        model_save(instance=EgressIP(), values=ip)
        link = agent_link(len(MACHINES))[1]
        values = {"hostname": UNMODIFIED, "datacenter": datacenter, "address": link}
        machine_save(machine=Machine(), values=values, pools=[pool])
    if plan:
        plan_apply_current(datacenter=datacenter, reason="demo: the exact-range machine")


def _demo_inventory(mode: Mode) -> Datacenter:
    datacenter = model_save(
        instance=Datacenter(), values={"code": CODE, "name": "Live demo", "country": "DE"}
    )
    assert isinstance(datacenter, Datacenter)
    pool = model_save(
        instance=EgressPool(),
        values={
            "datacenter": datacenter,
            "purpose": "warp",
            "country": "DE",
            "slice_size": 64,
            "slices_per_machine": 1,
            "max_slices_per_machine": 3,
        },
    )
    assert isinstance(pool, EgressPool)
    usable_lo, usable_hi = mode.usable
    for address in mode.egress_ips:
        values = {"address": address, "pool": pool, "usable_lo": usable_lo, "usable_hi": usable_hi}
        model_save(instance=EgressIP(), values=values)
    for index, machine in enumerate(MACHINES):
        address = agent_link(index)[1]
        values = {"hostname": machine.hostname, "datacenter": datacenter, "address": address}
        machine_save(machine=Machine(), values=values, pools=[pool])
    rebalance_policy_save(
        datacenter=datacenter, values={"interval_minutes": 1, "window_minutes": 2}
    )
    return datacenter
