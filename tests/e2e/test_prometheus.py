"""A real Prometheus on the real planner and agents: alerts.yml raises the exhaustion
and guard alerts for the right pool and host, before any plan fails, and nothing in
the steady state; every metric the dashboard and the rules name is really emitted.

Debian's ``prometheus`` scrapes a gunicorn planner over the test database and the
metrics endpoints of agents in network namespaces (a private Redis between them),
every second, with the rules' ``for:`` shortened to a few seconds and the forecast
taking a point every 2 seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.utils import timezone

import contract
from planner.choices import BundleStatus
from planner.models import ConfigBundle, Datacenter, EgressPool
from planner.services.keys import signing_key_generate
from planner.services.plans import plan_apply_current
from tests.agent.netns import have_tools
from tests.e2e.loop import Loop, PrivateRedis, free_port, wait_for
from tests.planner.factories import make_datacenter, make_ip, make_machine, make_pool
from tests.support import need, need_root

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/alerts.yml"
DASHBOARD = ROOT / "deploy/grafana/portslice.json"
HOSTS = ["p0.pm1.example.net", "p1.pm1.example.net"]
POOL = "pm1/warp/DE"
SHARED_IP = "198.51.100.40"
# One IP, ports 40000-60999: 10 slots of 2,048.
SLOTS = 10
FOR = "3s"
# The planner's forecast for a test measured in seconds, not days.
FORECAST = {
    "FORECAST_STEP_SECONDS": "2",
    "FORECAST_MIN_HISTORY_SECONDS": "16",
    "FORECAST_HORIZON_DAYS": "7",
    "ALLOWED_HOSTS": "127.0.0.1",
}

ROGUE_SEND = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{SHARED_IP}", 30000))  # outside every slice
for _ in range(3):
    try:
        s.sendto(b"rogue", ("{SHARED_IP}", 9))
    except PermissionError:
        pass
"""


@dataclass
class Stack:
    loop: Loop
    planner: str
    prometheus: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        return _get(url)["data"]["result"]

    def alerts(self) -> list[dict[str, Any]]:
        return _get(f"{self.prometheus}/api/v1/alerts")["data"]["alerts"]

    def firing(self, name: str) -> list[dict[str, str]]:
        return [
            alert["labels"]
            for alert in self.alerts()
            if alert["labels"]["alertname"] == name and alert["state"] == "firing"
        ]

    def evaluated_since(self, moment: datetime) -> bool:
        """Whether the rule group has been evaluated at or after ``moment``."""
        groups = _get(f"{self.prometheus}/api/v1/rules")["data"]["groups"]
        stamps = [_instant(group["lastEvaluation"]) for group in groups]
        return bool(stamps) and min(stamps) >= moment


def _instant(text: str) -> datetime:
    """Prometheus' RFC 3339 time (nanoseconds, ``Z``) as a datetime."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00"))


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _short_rules(folder: Path) -> Path:
    """alerts.yml as it is, but each ``for:`` shortened to :data:`FOR`."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR
    path = folder / "alerts.yml"
    path.write_text(yaml.safe_dump(document))
    return path


def _prometheus(loop: Loop, folder: Path, planner_port: int) -> str:
    folder.mkdir()
    port = free_port()
    agents = [
        {"targets": [address], "labels": {"host": host}}
        for host, address in loop.metrics_addresses.items()
    ]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(_short_rules(folder))],
        "scrape_configs": [
            {
                "job_name": "portslice-planner",
                "static_configs": [{"targets": [f"127.0.0.1:{planner_port}"]}],
            },
            {"job_name": "portslice-agent", "static_configs": agents},
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = [
        "prometheus",
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    process = loop._spawn(argv, folder / "prometheus.log", {"PATH": "/usr/bin:/bin"})
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, (folder / "prometheus.log").read_text()
        try:
            return urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200
        except OSError:
            return False

    wait_for("prometheus ready", ready)
    return url


def _datacenter() -> Datacenter:
    dc = make_datacenter(code="pm1")
    pool = make_pool(datacenter=dc, slice_size=2048)
    make_ip(SHARED_IP, pool=pool, usable_lo=40000, usable_hi=60999)
    for n, host in enumerate(HOSTS):
        make_machine(host, datacenter=dc, address=f"10.9.4.{n + 2}").pools.add(pool)
    signing_key_generate()
    return dc


def _join(dc: Datacenter, names: list[str]) -> None:
    pool = EgressPool.objects.get(datacenter=dc)
    for name in names:
        make_machine(name, datacenter=dc, address="10.9.4.99").pools.add(pool)


@pytest.fixture
def stack(tmp_path: Path, postgres: None, settings: Any) -> Iterator[Stack]:
    need_root()
    need(have_tools() and shutil.which("nft") is not None, "needs ip and nft")
    need(shutil.which("redis-server") is not None, "needs redis-server")
    need(shutil.which("prometheus") is not None, "needs prometheus (apt-get install prometheus)")
    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    dc = _datacenter()
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    loop = Loop(tmp_path, redis.url, redis.socket_url, netns=True)
    try:
        for host in HOSTS:
            loop.expose_metrics(host)
        loop.planner_worker()
        loop.start_agents(HOSTS)
        revision = plan_apply_current(datacenter=dc, reason="first")
        loop.send(contract.PUBLISH_TASK, revision.pk)
        wait_for(
            "both agents applied",
            lambda: (
                ConfigBundle.objects.filter(revision=revision, status=BundleStatus.APPLIED).count()
                == len(HOSTS)
            ),
        )
        planner_port = free_port()
        loop.planner_web(planner_port, **FORECAST)
        prometheus = _prometheus(loop, tmp_path / "prometheus", planner_port)
        yield Stack(loop, f"http://127.0.0.1:{planner_port}", prometheus)
    finally:
        loop.close()
        redis.stop()


def _reached(moment: datetime) -> Callable[[], bool]:
    return lambda: timezone.now() >= moment


def _all_up(stack: Stack) -> bool:
    rows = stack.query("up")
    return len(rows) == 1 + len(HOSTS) and all(row["value"][1] == "1" for row in rows)


def test_prometheus_alerts_on_exhaustion_and_a_rogue_send_and_is_quiet_before(
    stack: Stack,
) -> None:
    dc = Datacenter.objects.get(code="pm1")
    wait_for("every target up", lambda: _all_up(stack), timeout=30)
    # Steady: the forecast has history and finds the pool flat (+Inf seconds left).
    wait_for(
        "a steady forecast",
        lambda: stack.query(f'portslice_pool_exhaustion_seconds{{pool="{POOL}"}} == +Inf'),
        timeout=60,
    )
    # Anything about to fire would have, after longer than the rules' for: (3 s).
    settled = timezone.now() + timedelta(seconds=5)
    wait_for("the rules evaluated again", lambda: stack.evaluated_since(settled), timeout=30)
    assert [a for a in stack.alerts() if a["state"] in ("pending", "firing")] == []

    # Machines join, one every 2 seconds, up to 8 of 10 slots: no plan fails yet...
    started = timezone.now()
    for n in range(6):
        _join(dc, [f"j{n}.pm1.example.net"])
        wait_for("the next step", _reached(started + timedelta(seconds=2 * (n + 1))))
    assert stack.query(f'portslice_pool_ips_needed{{pool="{POOL}"}} > 0') == []
    # ...but the forecast sees the pool fill within the horizon.
    fired = wait_for("PoolExhaustionForecast", lambda: stack.firing("PoolExhaustionForecast"))
    assert {labels["pool"] for labels in fired} == {POOL}
    assert stack.query(f'portslice_pool_ips_needed{{pool="{POOL}"}} > 0') == []

    # Past the slots: the pool needs an IP now.
    _join(dc, [f"k{n}.pm1.example.net" for n in range(4)])
    fired = wait_for("PoolIPsNeeded", lambda: stack.firing("PoolIPsNeeded"))
    assert [(labels["pool"], labels["severity"]) for labels in fired] == [(POOL, "critical")]

    # A program on p0 sends from the shared IP outside its slice: the guard drops it.
    rogue = HOSTS[0]
    ns = stack.loop.netns_of[rogue]
    subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", ROGUE_SEND], check=True)
    fired = wait_for("GuardDrops", lambda: stack.firing("GuardDrops"))
    assert [(labels["host"], labels["ip"]) for labels in fired] == [(rogue, SHARED_IP)]
    assert fired[0]["instance"] == stack.loop.metrics_addresses[rogue]


def _named_metrics() -> set[str]:
    """Every portslice metric the dashboard and the rules name."""
    text = RULES.read_text() + DASHBOARD.read_text()
    return set(re.findall(r"\bportslice_[a-z_]+", text))


def _family(name: str) -> str:
    return re.sub(r"_(total|created)$", "", name)


def test_every_metric_the_dashboard_and_rules_name_is_emitted(stack: Stack) -> None:
    """Compared by family (``# TYPE``): a family is emitted even while it has no
    series (no gateway yet, no stale agent), and a renamed one is caught either way."""
    emitted = set()
    for text in [_scrape(f"{stack.planner}/metrics")] + [
        _scrape(f"http://{address}/metrics") for address in stack.loop.metrics_addresses.values()
    ]:
        emitted |= {_family(match) for match in re.findall(r"^# TYPE (\S+) ", text, re.M)}
    named = {_family(name) for name in _named_metrics()}
    assert len(named) > 10, named
    assert named - emitted == set()
