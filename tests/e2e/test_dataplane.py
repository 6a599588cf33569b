"""The data plane end to end: planner, broker, gateway and agents in network namespaces.

``make e2e`` runs it (as root; under ``CI=true`` it must not skip). The
topology is tests/e2e/topology.py: an origin behind a router whose link has a
smaller MTU, the gateway (``python -m agent gateway``), and hosts sharing
198.51.100.7 and .8, each running the real agent (``python -m agent run``). The
planner's web (gunicorn), worker and beat run on PostgreSQL with Redis
(database 11) as the broker; namespaces reach Redis and the API through relays
(their own 127.0.0.1 is not the machine's).

One scenario, in order, because each step builds on the last: first plan →
every agent and the gateway ack → 200 TCP + 200 UDP flows per host through
``Egress.connect`` and 50 + 50 through the socket service → rogue sends →
frag-needed → drain with a chatty connection → drain end and a new host
joining under other hosts' chatty connections → planner and broker stopped →
restarted, reconcile catches up → an agent restarted without a broker.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from planner import signing
from planner.choices import TokenKind
from planner.models import Gateway, Machine, PortSlice, SigningKey
from planner.services.keys import signing_key_generate
from planner.services.plans import plan_apply_current
from planner.services.steering import gateway_register
from planner.services.tokens import api_token_create
from tests.agent import netlab
from tests.agent.netlab import UnixRelay, stop
from tests.e2e.topology import (
    CHATTY_CLIENT,
    ECHO_PORT,
    ORIGIN_IP,
    SHARED_IPS,
    TCP_TO_UNIX,
    DataPlane,
    Host,
    data_plane,
)
from tests.planner.factories import make_datacenter, make_ip, make_machine, make_pool
from tests.support import need, need_redis, need_root

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = 11
BROKER = f"redis://127.0.0.1:6379/{REDIS_DB}"
API_PORT_IN_GATEWAY = 8000
HOSTS = 4
GATEWAY_NAME = "gw-fra1"
FLOWS = {"tcp": 200, "udp": 200}
SOCKET_FLOWS = {"tcp": 50, "udp": 50}


def hostname(n: int) -> str:
    return f"h{n}.fra1.example.net"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Stack:
    """Everything the scenario runs, and how to stop and start the planner side of it."""

    tmp: Path
    plane: DataPlane
    env: dict[str, str]
    admin_token: str
    lb_token_file: Path
    api_port: int
    planner: list[subprocess.Popen[str]] = field(default_factory=list)
    agents: dict[int, subprocess.Popen[str]] = field(default_factory=dict)
    relay: UnixRelay | None = None
    planned_at: float = 0.0

    # --- the planner side ------------------------------------------------------------------

    def start_planner(self) -> None:
        logs = self.tmp / "logs"
        logs.mkdir(exist_ok=True)
        web = [
            sys.executable,
            "-m",
            "gunicorn",
            "planner.wsgi",
            "-w",
            "2",
            "--bind",
            f"127.0.0.1:{self.api_port}",
            "--bind",
            f"unix:{self.tmp / 'web.sock'}",
        ]
        worker = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "planner",
            "worker",
            "-Q",
            "planner",
            "--pool",
            "solo",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "info",
        ]
        beat = [sys.executable, "-m", "celery", "-A", "planner", "beat", "-l", "info",
                "-s", str(self.tmp / "beat-schedule")]  # fmt: skip
        for name, argv in (("web", web), ("worker", worker), ("beat", beat)):
            with (logs / f"{name}.log").open("a") as out:
                self.planner.append(
                    subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
                )  # fmt: skip
        netlab.wait_for(lambda: self._answers(), timeout=60, what="the web server")
        netlab.wait_for(
            lambda: "ready." in (logs / "worker.log").read_text(), timeout=60, what="the worker"
        )

    def _answers(self) -> bool:
        try:
            self.api("GET", "/api/v1/datacenters")
        except OSError:
            return False
        return True

    def stop_planner(self) -> None:
        for process in self.planner:
            stop(process, timeout=20)
        self.planner.clear()

    def start_relay(self) -> None:
        path = self.tmp / "redis.sock"
        self.relay = UnixRelay(path, ("127.0.0.1", 6379))

    def stop_relay(self) -> None:
        if self.relay is not None:
            self.relay.close()
            self.relay = None

    @property
    def relay_url(self) -> str:
        return f"redis+socket://{self.tmp / 'redis.sock'}?virtual_host={REDIS_DB}"

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.admin_token}",
                     "Content-Type": "application/json", "Accept": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def send_task(self, name: str) -> None:
        sender = Celery(broker=BROKER)
        sender.conf.task_serializer = "json"
        sender.send_task(name, queue="planner")
        sender.close()

    def plan(self, reason: str) -> int:
        """Preview, then apply what the preview showed, as an operator would."""
        self.planned_at = time.monotonic()
        preview = self.api("POST", "/api/v1/datacenters/fra1/plan/preview", {})
        body = {"inputs_digest": preview["inputs_digest"], "reason": reason}
        return int(self.api("POST", "/api/v1/datacenters/fra1/plan/apply", body)["number"])

    # --- agents and the gateway ------------------------------------------------------------

    def agent_config(self, n: int) -> Path:
        run = self.tmp / f"run-h{n}"
        run.mkdir(mode=0o1777, exist_ok=True)
        return netlab.write_agent_config(
            self.tmp / f"agent-h{n}.toml",
            hostname=hostname(n),
            broker_url=self.relay_url,
            keys_path=self.tmp / "keys.json",
            state_dir=self.tmp / f"state-h{n}",
            usage_interval=2,
            metrics_address="127.0.0.1:9465",
            socket_path=self.tmp / f"agent-h{n}.sock",
        )

    def start_agent(self, n: int) -> None:
        host = self.plane.hosts[n - 1]
        log = self.tmp / "logs" / f"agent-h{n}.log"
        self.agents[n] = host.ns.spawn(
            sys.executable, "-m", "agent", "--config", str(self.agent_config(n)), "run",
            log=log, env={"PORTSLICE_RUN_DIR": str(self.tmp / f"run-h{n}")},
        )  # fmt: skip

    def start_gateway(self) -> None:
        gateway = self.plane.gateway
        gateway.spawn(sys.executable, "-c", TCP_TO_UNIX, str(API_PORT_IN_GATEWAY),
                      str(self.tmp / "web.sock"))  # fmt: skip
        env = {
            "PORTSLICE_GATEWAY_NAME": GATEWAY_NAME,
            "PORTSLICE_GATEWAY_BROKER_URL": self.relay_url,
            "PORTSLICE_GATEWAY_KEYS_PATH": str(self.tmp / "keys.json"),
            "PORTSLICE_GATEWAY_API_URL": f"http://127.0.0.1:{API_PORT_IN_GATEWAY}",
            "PORTSLICE_GATEWAY_API_TOKEN_FILE": str(self.lb_token_file),
            "PORTSLICE_GATEWAY_POLL_INTERVAL": "3",
            "PORTSLICE_GATEWAY_STATE_DIR": str(self.tmp / "gateway-state"),
        }
        gateway.spawn(sys.executable, "-m", "agent", "gateway", "--datacenter", "fra1",
                      log=self.tmp / "logs" / "gateway.log", env=env)  # fmt: skip

    def host_work(self, n: int, command: str, **args: Any) -> Any:
        host = self.plane.hosts[n - 1]
        args.setdefault("state_dir", str(self.tmp / f"state-h{n}"))
        args.setdefault("socket_path", str(self.tmp / f"agent-h{n}.sock"))
        done = host.ns.run(
            "env", f"PORTSLICE_RUN_DIR={self.tmp / f'run-h{n}'}", f"PYTHONPATH={ROOT}",
            sys.executable, "-m", "tests.e2e.hostwork", command, json.dumps(args), timeout=300,
        )  # fmt: skip
        return json.loads(done.stdout.strip().splitlines()[-1])

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text()[-3000:]}"
            for path in sorted((self.tmp / "logs").glob("*.log"))
        )


# --- waiting for the planner's view ----------------------------------------------------------


def record_timing(what: str, seconds: float) -> None:
    """Apply → enforcing figures for bench/bench_dataplane.py ($PORTSLICE_E2E_TIMINGS)."""
    path = os.environ.get("PORTSLICE_E2E_TIMINGS")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"what": what, "seconds": seconds}) + "\n")


def _enforcing(hosts: list[int]) -> bool:
    """Each host's agent applied its newest bundle with every part on."""
    machines = Machine.objects.filter(hostname__in=[hostname(n) for n in hosts])
    return len(machines) == len(hosts) and all(
        m.applied_serial == m.bundle_serial
        and all(
            m.enforcement.get(p, {}).get("state") == "on"
            for p in ("port_range", "nftables", "addresses")
        )  # fmt: skip
        for m in machines
    )


def _gateway_at(revision: int) -> bool:
    return Gateway.objects.filter(revision__gte=revision, status="applied").exists()


def wait_enforced(stack: Stack, hosts: list[int], timeout: float = 60) -> None:
    netlab.wait_for(lambda: _enforcing(hosts), timeout=timeout, interval=0.05,
                    what=f"agents to enforce\n{stack.logs()}")  # fmt: skip


def wait_gateway(stack: Stack, revision: int, timeout: float = 60) -> None:
    netlab.wait_for(lambda: _gateway_at(revision), timeout=timeout, interval=0.05,
                    what=f"the gateway at revision {revision}\n{stack.logs()}")  # fmt: skip


def wait_plan(stack: Stack, hosts: list[int], revision: int, timeout: float = 60) -> float:
    """Until the hosts enforce and the gateway runs ``revision``; the seconds since the apply
    that each took are recorded for the benchmark. Returns when both are done."""
    done: dict[str, float] = {}

    def check() -> bool:
        for what, ready in (("agents", lambda: _enforcing(hosts)),
                            ("gateway", lambda: _gateway_at(revision))):  # fmt: skip
            if what not in done and ready():
                done[what] = time.monotonic() - stack.planned_at
        return len(done) == 2

    netlab.wait_for(check, timeout=timeout, interval=0.02,
                    what=f"revision {revision} everywhere\n{stack.logs()}")  # fmt: skip
    for what, seconds in done.items():
        record_timing(what, seconds)
    return max(done.values())


def slices_of(n: int) -> set[tuple[str, int, int, str]]:
    return set(
        PortSlice.objects.filter(machine__hostname=hostname(n)).values_list(
            "ip__address", "lo", "hi", "state"
        )
    )


def chatty(stack: Stack, n: int, seconds: float) -> subprocess.Popen[str]:
    """A TCP connection from host n's first active slice, exchanging a line every 50 ms."""
    item = PortSlice.objects.filter(machine__hostname=hostname(n), state="active").first()
    assert item is not None
    host = stack.plane.hosts[n - 1]
    ports = f"{item.lo + 3}-{item.hi}"  # the first free one: the flows left some closing
    process = subprocess.Popen(
        host.ns.command(sys.executable, "-c", CHATTY_CLIENT, item.ip.address, ports, ORIGIN_IP,
                        str(ECHO_PORT), "0.05", str(seconds)),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    host.ns.processes.append(process)
    assert process.stdout is not None and process.stdout.readline().strip() == "connected"
    return process


def chatty_result(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=120)
    return dict(json.loads(out.strip().splitlines()[-1]))


def nft_counters(host: Host) -> dict[str, int]:
    out = host.ns.run("nft", "-j", "list", "counters", "table", "inet", "portslice").stdout
    return {
        item["counter"]["name"]: int(item["counter"]["packets"])
        for item in json.loads(out)["nftables"]
        if "counter" in item
    }


def in_parallel(work: Callable[[int], Any], hosts: list[int]) -> dict[int, Any]:
    with ThreadPoolExecutor(len(hosts)) as pool:
        return dict(zip(hosts, pool.map(work, hosts), strict=True))


# --- the stack -------------------------------------------------------------------------------


def _inventory(plane: DataPlane) -> None:
    dc = make_datacenter(code="fra1", name="Frankfurt")
    pool = make_pool(datacenter=dc, slice_size=4096, slices_per_machine=2)
    for address in SHARED_IPS:
        make_ip(address, pool=pool)
    for n, host in enumerate(plane.hosts, 1):
        make_machine(hostname(n), datacenter=dc, address=host.address).pools.add(pool)
    # Registered as an admin would: the planner records acks of registered gateways only.
    gateway_register(name=GATEWAY_NAME, datacenter=dc)


@pytest.fixture
def stack(postgres: None, tmp_path: Path, settings: Any) -> Iterator[Stack]:
    need_root()
    need_redis()
    need(netlab.have_command("nft"), "needs the nft command")
    database = redis.Redis.from_url(BROKER)
    database.flushdb()
    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    signing._loaded.clear()
    (tmp_path / "logs").mkdir()
    with data_plane(hosts=HOSTS, log_dir=tmp_path) as plane:
        _inventory(plane)
        signing_key_generate()
        keys = [k.public_jwk for k in SigningKey.objects.all()]
        (tmp_path / "keys.json").write_text(json.dumps(signing.jwks(keys)))
        admin = User.objects.create_superuser("e2e-admin", password=secrets.token_hex(8))
        _, admin_token = api_token_create(name="e2e", kind=TokenKind.USER, user=admin)
        _, lb_token = api_token_create(name="gw", kind=TokenKind.LOAD_BALANCER)
        (tmp_path / "lb-token").write_text(lb_token)
        env = {
            **os.environ,
            "DATABASE_URL": "postgres://{USER}@{HOST}:{PORT}/{NAME}".format(
                **connection.settings_dict
            ),
            "CELERY_BROKER_URL": BROKER,
            "SIGNING_KEY_DIR": str(settings.SIGNING_KEY_DIR),
            "SECRET_KEY": secrets.token_hex(32),
            "PORTSLICE_VAR_DIR": str(tmp_path / "var"),
            "THROTTLE_STEERING": "100000/min",
            "DJANGO_SETTINGS_MODULE": "planner.settings",
        }
        built = Stack(tmp_path, plane, env, admin_token, tmp_path / "lb-token", _free_port())
        try:
            built.start_relay()
            built.start_planner()
            built.start_gateway()
            for n in range(1, HOSTS + 1):
                built.start_agent(n)
            yield built
        finally:
            built.stop_planner()
            plane.teardown()  # agents and the gateway first, before their relay goes
            built.stop_relay()
            database.flushdb()


# --- the scenario ------------------------------------------------------------------------------


def test_the_data_plane_end_to_end(stack: Stack) -> None:
    hosts = list(range(1, HOSTS + 1))
    first = stack.plan("first plan")
    took = wait_plan(stack, hosts, first)
    print(f"first plan: {HOSTS} agents and the gateway enforcing {took:.2f}s after apply")

    check_flows(stack, hosts)
    check_rogue_sends(stack)
    check_frag_needed(stack)
    check_drain_and_join(stack)
    plan_cycles(stack, int(os.environ.get("PORTSLICE_E2E_EXTRA_PLANS", "0")))
    check_planner_and_broker_down(stack, hosts)
    check_agent_restart_without_broker(stack)


def check_flows(stack: Stack, hosts: list[int], scale: float = 1.0) -> None:
    def work(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
        egress = stack.host_work(n, "flows", **{k: int(v * scale) for k, v in FLOWS.items()})
        service = stack.host_work(
            n, "flows", via="socket", **{k: int(v * scale) for k, v in SOCKET_FLOWS.items()}
        )
        return egress, service

    for n, (egress, service) in in_parallel(work, hosts).items():
        for label, report, wanted in (("egress", egress, FLOWS), ("socket", service, SOCKET_FLOWS)):
            total = sum(int(v * scale) for v in wanted.values())
            assert report["errors"] == [], (n, label, report["errors"][:5])
            assert (report["ok"], report["misrouted"], report["outside"]) == (total, 0, 0), (
                n, label, {k: v for k, v in report.items() if k != "ports"},
            )  # fmt: skip


def check_rogue_sends(stack: Stack) -> None:
    """Host 2 sends from host 1's ports on both shared IPs: dropped, counted, unseen."""
    owned = PortSlice.objects.filter(machine__hostname=hostname(1)).values_list("ip__address", "lo")
    targets = {ip: lo + 11 for ip, lo in owned}
    for ip in SHARED_IPS:  # host 1 may hold a slice on one IP only: use its port number there
        targets.setdefault(ip, next(iter(targets.values())))
    before = nft_counters(stack.plane.hosts[1])
    seen_before = len(stack.plane.echo_seen())  # host 1 used these ports itself in the flows
    outcomes = {
        (ip, proto): stack.host_work(2, "rogue", ip=ip, port=port, proto=proto)
        for ip, port in targets.items()
        for proto in ("udp", "tcp")
    }
    for (_ip, proto), outcome in outcomes.items():
        expected = "errno 1" if proto == "udp" else "errno 111"
        assert outcome["outcome"] == expected and outcome["seconds"] < 1, outcomes
    after = nft_counters(stack.plane.hosts[1])
    assert after["dropped_udp"] - before["dropped_udp"] == len(SHARED_IPS)
    assert after["dropped_tcp"] - before["dropped_tcp"] == len(SHARED_IPS)
    seen = stack.plane.echo_seen(since=seen_before)
    assert not set(targets.items()) & {(i, p) for _, i, p in seen}


def check_frag_needed(stack: Stack) -> None:
    result = stack.host_work(1, "big", size=200_000)
    assert result["answer"] == [result["ip"], str(result["port"]), "200001"], result
    route = (
        stack.plane.hosts[0].ns.run("ip", "route", "get", ORIGIN_IP, "from", result["ip"]).stdout
    )
    assert "mtu 1280" in route, route
    for other in stack.plane.hosts[1:]:
        assert "mtu" not in other.ns.run("ip", "route", "get", ORIGIN_IP).stdout


def check_drain_and_join(stack: Stack) -> None:
    others = [2, 3, 4]
    ports_before = {n: slices_of(n) for n in others}
    bystanders = {n: chatty(stack, n, 40.0) for n in others}
    drained = chatty(stack, 1, 8.0)

    stack.api("PATCH", f"/api/v1/machines/{hostname(1)}", {"state": "draining"})
    revision = stack.plan("drain h1")
    wait_plan(stack, [1], revision)
    assert {state for *_, state in slices_of(1)} == {"draining"}
    refused = stack.host_work(1, "no_slice")
    assert refused["refused"] == "NoSliceAvailable", refused
    result = chatty_result(drained)
    assert result["errors"] == [] and result["ok"] == result["sent"] > 50, result

    # The drain ends: the worker's expire_drains frees host 1's ports.
    PortSlice.objects.filter(machine__hostname=hostname(1)).update(
        drain_until=timezone.now() - timedelta(seconds=1)
    )
    stack.send_task("planner.expire_drains")
    netlab.wait_for(lambda: not slices_of(1), timeout=60, what="the drain to end")
    wait_enforced(stack, [1])
    wait_gateway(stack, revision + 1)

    # A new host joins.
    stack.plane.add_host()
    pool = Machine.objects.get(hostname=hostname(2)).pools.get()
    joiner = make_machine(hostname(5), datacenter=pool.datacenter,
                          address=stack.plane.hosts[4].address)  # fmt: skip
    joiner.pools.add(pool)
    stack.start_agent(5)
    revision = stack.plan("h5 joins")
    wait_plan(stack, [5], revision)
    check_flows(stack, [5], scale=0.25)

    for n, process in bystanders.items():
        result = chatty_result(process)
        assert result["errors"] == [] and result["ok"] == result["sent"] > 100, (n, result)
        assert slices_of(n) == ports_before[n], n  # no other host's ports changed


def plan_cycles(stack: Stack, cycles: int) -> None:
    """For the benchmark: host 5 drained and made active again, ``cycles`` times, each
    apply timed until its agent and the gateway enforce it."""
    for n in range(cycles):
        state = "draining" if n % 2 == 0 else "active"
        stack.api("PATCH", f"/api/v1/machines/{hostname(5)}", {"state": state})
        wait_plan(stack, [5], stack.plan(f"bench: h5 {state}"))
    if cycles % 2:
        stack.api("PATCH", f"/api/v1/machines/{hostname(5)}", {"state": "active"})
        wait_plan(stack, [5], stack.plan("bench: h5 active"))


def check_planner_and_broker_down(stack: Stack, hosts: list[int]) -> None:
    stack.stop_planner()
    stack.stop_relay()
    check_flows(stack, [2, 3, 4, 5], scale=0.25)  # last good bundles, no planner, no broker

    # A change made while the broker is unreachable: the publish is lost, reconcile repairs it.
    Machine.objects.filter(hostname=hostname(5)).update(state="draining")
    dc = Machine.objects.get(hostname=hostname(5)).datacenter
    revision = plan_apply_current(datacenter=dc, reason="drain h5")
    stack.start_relay()
    stack.start_planner()
    stack.send_task("planner.reconcile")
    wait_enforced(stack, [5])
    wait_gateway(stack, revision.number)  # by its poll: nothing was pushed for it
    assert {state for *_, state in slices_of(5)} == {"draining"}


def check_agent_restart_without_broker(stack: Stack) -> None:
    host = stack.plane.hosts[2]
    stop(stack.agents[3])
    host.ns.run("nft", "delete", "table", "inet", "portslice")  # as after a reboot
    stack.stop_relay()
    stack.start_agent(3)
    netlab.wait_for(
        lambda: (
            host.ns.run("nft", "list", "table", "inet", "portslice", check=False).returncode == 0
        ),
        timeout=30,
        what="the restarted agent to enforce its stored bundle",
    )
    item = PortSlice.objects.filter(machine__hostname=hostname(2)).first()
    assert item is not None
    outcome = stack.host_work(3, "rogue", ip=item.ip.address, port=item.lo + 5, proto="udp")
    assert outcome["outcome"] == "errno 1", outcome
    check_flows(stack, [3], scale=0.1)
    stack.start_relay()
