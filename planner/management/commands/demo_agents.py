"""``manage.py demo_agents``: the quick start's demo machines, live (``make run``).

Makes (once) the datacenter ``demo1``: one pool of 64-port slices on two shared
IPs, three machines allowed to grow to three slices each, an aligned pool whose
one machine runs plain sockets in the agent's exact-range mode, and a rebalance
policy that runs every minute over a two-minute window so the loop shows
within minutes. Then, as root, one network namespace per machine with its
agent enforcing with nftables, a gateway namespace steering answers by the
plan, an origin, and a traffic generator per machine (hot, steady, and a
burst that goes cold, through the egress library; plain sockets that know
nothing of portslice for the exact-range machine). Without root the agents
run on this host unprivileged: nftables off, no namespace, no traffic (no
shared address to send from).

Ctrl-C (or honcho's SIGTERM) stops every child and deletes every namespace,
and with them their nftables tables; a run that was killed outright is
cleaned up by the next one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
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
#: (hostname, traffic profile); see demo/traffic.py.
MACHINES = [
    ("demo-a.demo1.example.net", "hot"),
    ("demo-b.demo1.example.net", "steady"),
    ("demo-c.demo1.example.net", "burst"),
]
#: One more machine runs unmodified software (demo.traffic's plain sockets, no portslice
#: code) in the agent's exact-range mode, on an aligned pool of its own (docs/agent.md).
UNMODIFIED = "demo-u.demo1.example.net"
UNMODIFIED_IP = "198.51.100.242"
STEER_EVERY = 2.0
PRIVILEGED = (
    "root: each agent in its own network namespace, nftables ON, "
    "a gateway steering answers by the plan, real TCP traffic"
)
UNPRIVILEGED = (
    "unprivileged: agents on this host, port ranges only, nftables OFF, no traffic "
    "(no shared address to send from: run make run as root for that)"
)


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
        privileged = os.geteuid() == 0 and all(shutil.which(t) for t in ("ip", "nft"))
        datacenter = demo_datacenter_ensure(usable_lo=1024 if privileged else 40000)
        self._write_keys()
        self.children: list[Child] = []
        self.topology = Topology(record) if privileged else None
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            self._start(datacenter)
            self._supervise(datacenter)
        except Stop:
            self.stdout.write("demo: stopping agents and traffic, removing namespaces")
        finally:
            self._stop_children()
            if self.topology is not None:
                self.topology.remove()

    # --- start ----------------------------------------------------------------------------

    def _start(self, datacenter: Datacenter) -> None:
        if self.topology is None:
            self._banner(UNPRIVILEGED)
        else:
            self._banner(PRIVILEGED)
            self.topology.build([*EGRESS_IPS, UNMODIFIED_IP], len(MACHINES) + 1)
            self._steer(datacenter)
            self._spawn(
                "origin", in_netns(self.topology.origin, *_python("demo.traffic", "listen"))
            )
        for index, (hostname, profile) in enumerate(MACHINES):
            config = self._agent_config(hostname, privileged=self.topology is not None)
            command = _python("agent", "--config", str(config), "run", "--loglevel", "WARNING")
            if self.topology is None:
                self._spawn(hostname, command)
                continue
            ns = self.topology.agent_ns(index)
            self._spawn(hostname, in_netns(ns, *command))
            traffic = _python("demo.traffic", "run", "--state", str(self._state(hostname)),
                              "--profile", profile, "--origin", ORIGIN)  # fmt: skip
            self._spawn(f"traffic {hostname}", in_netns(ns, *traffic))
        self._start_unmodified()

    def _start_unmodified(self) -> None:
        """The exact-range machine: its agent, and plain sockets as its traffic."""
        privileged = self.topology is not None
        config = self._agent_config(UNMODIFIED, privileged=privileged, exact=privileged)
        command = _python("agent", "--config", str(config), "run", "--loglevel", "WARNING")
        if self.topology is None:
            self._spawn(UNMODIFIED, command)  # cover mode: no namespace of its own here
            return
        ns = self.topology.agent_ns(len(MACHINES))
        self._spawn(UNMODIFIED, in_netns(ns, *command))
        plain = _python("demo.traffic", "plain", "--origin", ORIGIN)
        self._spawn(f"traffic {UNMODIFIED}", in_netns(ns, *plain))

    def _banner(self, mode: str) -> None:
        # The web process of the same Procfile listens there (make run sets both;
        # not $PORT, which honcho sets to a port of its own for each process).
        url = f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('WEB_PORT', '8000')}/"
        lines = [
            "",
            f"demo: {len(MACHINES) + 1} agents in datacenter {CODE} ({mode})",
            f"demo: agent logs in {self.demo_dir}/<hostname>.log",
            "demo: bundles are applied within seconds; usage every 5 s; rebalance every minute",
            "demo: (hot machine grows, the burst one goes cold and leaves a draft to approve)",
            f"demo: {UNMODIFIED} runs plain sockets, no portslice code, in exact-range mode"
            if mode == PRIVILEGED
            else f"demo: {UNMODIFIED} (exact-range mode and its plain sockets need root)",
            f"demo: open {url}  (admin: {url}admin/, password in var/admin-password)",
            "",
        ]
        self.stdout.write("\n".join(lines))
        self.stdout.flush()

    def _state(self, hostname: str) -> Path:
        return self.demo_dir / hostname / "state"

    def _agent_config(self, hostname: str, *, privileged: bool, exact: bool = False) -> Path:
        folder = self.demo_dir / hostname
        folder.mkdir(parents=True, exist_ok=True)
        broker = settings.CELERY_BROKER_URL
        values: dict[str, Any] = {
            "hostname": hostname,
            "broker_url": broker,
            "keys_path": str(self.demo_dir / "keys.json"),
            "state_dir": str(self._state(hostname)),
            "manage_nftables": privileged,
            "manage_port_range": privileged,
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
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        log.close()
        self.children.append(Child(name, process))

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


class Stop(Exception):
    """Ctrl-C or SIGTERM: leave the loop and clean up."""


def _stop(signum: int, frame: object) -> None:
    raise Stop


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def demo_datacenter_ensure(*, usable_lo: int) -> Datacenter:
    """The demo datacenter, made the first time (through the services, whole or not
    at all), else as it is."""
    existing = Datacenter.objects.filter(code=CODE).first()
    if existing is not None:
        unmodified_machine_ensure(datacenter=existing, usable_lo=usable_lo)
        return existing
    with transaction.atomic():
        datacenter = _demo_inventory(usable_lo)
        unmodified_machine_ensure(datacenter=datacenter, usable_lo=usable_lo, plan=False)
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


def _demo_inventory(usable_lo: int) -> Datacenter:
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
    for address in EGRESS_IPS:
        model_save(
            instance=EgressIP(),
            values={"address": address, "pool": pool, "usable_lo": usable_lo},
        )
    for index, (hostname, _) in enumerate(MACHINES):
        values = {"hostname": hostname, "datacenter": datacenter, "address": agent_link(index)[1]}
        machine_save(machine=Machine(), values=values, pools=[pool])
    rebalance_policy_save(
        datacenter=datacenter, values={"interval_minutes": 1, "window_minutes": 2}
    )
    return datacenter
