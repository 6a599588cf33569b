"""``python -m agent run``: a real worker in a network namespace, a real Redis broker.

The worker runs inside a namespace with nftables and the port range managed,
so the whole path (Celery → verify → state file → nft → ack on ``planner``)
runs against the kernel without touching the host's own ruleset or sysctls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from joserfc.jwk import OKPKey

import contract
from agent.config import AgentConfig
from agent.state import StateStore
from agent.worker import make_app
from tests.agent import keys, netlab
from tests.agent.netlab import PEER_PORT, PEER_V4, REDIS_DB, SHARED_V4, Netns
from tests.support import need, need_redis, need_root

HOSTNAME = "edge-worker-test"


@dataclass
class Lab:
    host: Netns
    peer: Netns
    tmp: Path
    key: OKPKey
    relay_url: str
    inbox: netlab.PlannerInbox
    sender: Celery

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    def config(self, name: str = "agent.toml", **overrides: Any) -> Path:
        values: dict[str, Any] = {
            "hostname": HOSTNAME,
            "broker_url": self.relay_url,
            "keys_path": self.tmp / "keys.json",
            "state_dir": self.state_dir,
            "manage_nftables": True,
            "manage_port_range": True,
            "usage_interval": 0.5,
            "metrics_address": "127.0.0.1:9465",
            "socket_path": self.tmp / "agent.sock",
        }
        values.update(overrides)
        return netlab.write_agent_config(self.tmp / name, **values)

    def start_agent(self, config: Path, *, ready: str = " ready.") -> Any:
        """Start ``python -m agent run`` and wait until its log shows ``ready``."""
        before = self.log()
        agent = self.host.spawn(
            netlab.PYTHON, "-m", "agent", "--config", str(config), "run",
            log=self.tmp / "agent.log",
            env={"PORTSLICE_RUN_DIR": str(self.tmp / "run")},
        )  # fmt: skip
        netlab.wait_for(
            lambda: ready in self.log()[len(before) :] or agent.poll() is not None,
            what=f"the agent to start; log:\n{self.log()}",
        )
        assert agent.poll() is None, self.log()
        return agent

    def token(self, serial: int, *, slices: list[dict] | None = None) -> str:
        now = int(time.time())
        claims = keys.claims(
            sub=HOSTNAME,
            iat=now,
            exp=now + 3600,
            serial=serial,
            slices=slices or [keys.slice_claim(SHARED_V4, 40000, 40127)],
        )
        return keys.sign(claims, self.key)

    def send(self, token: str) -> None:
        self.sender.send_task("agent.apply_bundle", args=[token], queue=f"agent.{HOSTNAME}")

    def status(self) -> dict[str, Any]:
        out = self.host.run(
            netlab.PYTHON, "-m", "agent", "--config", str(self.tmp / "agent.toml"), "status",
            "--json", check=False,
        ).stdout  # fmt: skip
        return json.loads(out)

    def log(self) -> str:
        path = self.tmp / "agent.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    need_root()
    need_redis()
    need(netlab.have_command("nft"), "needs the nft command")
    key = keys.generate_key()
    netlab.write_jwks(tmp_path / "keys.json", keys.public(key))
    redis_url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    # tests/environment.py points Django's Celery at memory://; Celery lets that
    # variable override any app's broker, including the planner stand-in here.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    relay = netlab.UnixRelay(tmp_path / "redis.sock", netlab.REDIS)
    inbox = netlab.PlannerInbox(redis_url)
    sender = Celery("planner-test", broker=redis_url, set_as_current=False)
    sender.conf.update(task_serializer="json", accept_content=["json"])
    # Purge what an earlier, interrupted run may have left for this host.
    with sender.connection_for_write() as conn:
        conn.SimpleQueue(f"agent.{HOSTNAME}").clear()
    try:
        with netlab.netns_pair() as (host, peer):
            relay_url = f"redis+socket://{tmp_path / 'redis.sock'}?virtual_host={REDIS_DB}"
            yield Lab(host, peer, tmp_path, key, relay_url, inbox, sender)
    finally:
        inbox.close()
        relay.close()
        sender.close()


def _ack(lab: Lab, serial: int | None, **expected: Any) -> dict[str, Any]:
    try:
        return lab.inbox.wait_for(
            "planner.record_ack",
            lambda kw: kw["serial"] == serial and all(kw[k] == v for k, v in expected.items()),
        )
    except AssertionError:
        raise AssertionError(f"no matching ack; agent log:\n{lab.log()}") from None


def test_it_applies_acks_and_reports_through_the_broker(lab: Lab) -> None:
    agent = lab.start_agent(lab.config())
    good = lab.token(5)
    lab.send(good)
    ack = _ack(lab, 5, status="applied")
    assert ack["hostname"] == HOSTNAME
    assert ack["note"] == ""
    assert ack["applied_serial"] == 5
    assert ack["enforcement"]["nftables"]["state"] == "on"
    assert ack["applied_at"]

    lab.send(good)
    assert _ack(lab, 5, status="applied")["note"] == "duplicate"

    head, payload, signature = lab.token(6).split(".")
    tampered = ".".join(
        [head, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")]
    )
    lab.send(tampered)
    rejected = _ack(lab, 6, status="rejected")
    assert rejected["reason"] == "bad_signature"
    assert rejected["applied_serial"] == 5

    stored = StateStore(lab.state_dir).load()
    assert stored is not None and (stored.serial, stored.token) == (5, good)

    # The guard is in the agent's namespace, not the host's.
    table = lab.host.run("nft", "list", "table", "inet", "portslice").stdout
    assert "slice_198_51_100_7_40000_40127" in table

    usage = lab.inbox.wait_for("planner.record_usage", lambda kw: kw["serial"] == 5)
    assert usage["hostname"] == HOSTNAME
    assert usage["slices"] == [
        {"ip": SHARED_V4, "lo": 40000, "hi": 40127, "tcp": 0, "udp": 0, "buckets": {}}
    ]

    metrics = lab.host.python(
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9465/metrics').read().decode())"
    ).stdout
    assert "portslice_agent_applied_serial 5.0" in metrics
    assert 'portslice_agent_bundle_rejections_total{reason="bad_signature"} 1.0' in metrics
    assert 'portslice_agent_nft_dropped_packets_total{proto="udp"} 0.0' in metrics
    assert (
        'portslice_agent_enforcement{part="nftables",portslice_agent_enforcement="on"} 1.0'
        in metrics
    )

    assert netlab.stop(agent) == 0


def test_it_keeps_enforcing_its_last_bundle_without_a_broker(lab: Lab) -> None:
    agent = lab.start_agent(lab.config())
    lab.send(lab.token(8))
    _ack(lab, 8, status="applied")
    assert netlab.stop(agent) == 0

    # As after a reboot: the kernel has forgotten, only the state file remembers.
    lab.host.run("nft", "delete", "table", "inet", "portslice")
    lab.host.run("sysctl", "-qw", "net.ipv4.ip_local_port_range=50000 60999")
    offline = lab.config("agent.toml", broker_url="redis://127.0.0.1:1/0")
    agent = lab.start_agent(offline, ready="fail static")

    def enforced() -> dict[str, Any] | None:
        status = lab.status()
        recorded = status["enforcement"]
        fresh = recorded and recorded.get("pid") == agent.pid
        return status if fresh and status["live"]["nftables"].get("table_present") else None

    status = netlab.wait_for(enforced, what=f"fail-static enforcement; log:\n{lab.log()}")
    assert status["stored"]["verified"] is True
    assert status["stored"]["bundle"]["serial"] == 8
    assert status["enforcement"]["serial"] == 8 and status["enforcement"]["ok"] is True
    assert status["live"]["netns_port_range"] == [40000, 60999]

    # Still enforcing: a datagram from outside the slice does not leave.
    probe = (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('{SHARED_V4}', 30000))\n"
        f"try:\n    s.sendto(b'x', ('{PEER_V4}', {PEER_PORT}))\n    print('sent')\n"
        "except PermissionError:\n    print('dropped')\n"
    )
    assert lab.host.python(probe).stdout.strip() == "dropped"
    assert agent.poll() is None, "the agent must keep running while the broker is away"
    netlab.stop(agent)


def test_it_does_not_trust_a_corrupt_state_file(lab: Lab) -> None:
    lab.state_dir.mkdir()
    (lab.state_dir / "bundle.json").write_text('{"format": 1, "serial": 9, "token": "x"}')
    agent = lab.start_agent(
        lab.config(broker_url="redis://127.0.0.1:1/0"), ready="stored state not trusted"
    )
    status = lab.status()
    assert status["stored"]["verified"] is False
    assert "checksum mismatch" in status["stored"]["problem"]
    assert status["enforcement"] is None
    assert not status["live"]["nftables"]["table_present"]
    assert agent.poll() is None
    netlab.stop(agent)


def test_a_filesystem_broker_lives_under_the_state_dir_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    config = AgentConfig(
        hostname="edge0.example.net", broker_url="filesystem://", state_dir=tmp_path / "state"
    )
    app = make_app(config)
    app.send_task(contract.ACK_TASK, kwargs={}, queue=contract.PLANNER_QUEUE)
    assert list((tmp_path / "state" / "broker").glob("*.planner.msg"))
    assert (tmp_path / "state" / "broker-control").is_dir()
    assert not list(workdir.iterdir())  # no ./control, no ./data_in
