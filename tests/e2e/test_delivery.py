"""Delivery, for real: plans go out through a real broker to agent processes that
verify, enforce and ack; reconcile repairs what the broker lost; the planner hears
every rejection. On Redis (a private server, agents in network namespaces with
nftables) and on RabbitMQ (a virtual host of our own, agents on this host).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

import contract
from planner.choices import BundleStatus
from planner.models import ConfigBundle, Datacenter, Machine, PlanRevision, RebalanceRun
from planner.services.keys import signing_key_generate
from planner.services.plans import plan_apply_current
from tests.agent.netns import have_tools
from tests.e2e.loop import Loop, PrivateRedis, rabbitmq_vhost, wait_for
from tests.planner.factories import make_datacenter, make_ip, make_machine, make_pool
from tests.support import need, need_root, port_answers

pytestmark = pytest.mark.django_db(transaction=True)
HOSTS = [f"a{n}.dl1.example.net" for n in range(3)]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    need(shutil.which("redis-server") is not None, "needs redis-server")
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _redis_loop(tmp_path: Path, server: PrivateRedis) -> Loop:
    need_root()
    need(have_tools() and shutil.which("nft") is not None, "needs ip and nft")
    return Loop(tmp_path, server.url, server.socket_url, netns=True)


@pytest.fixture(params=["redis", "rabbitmq"])
def loop(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: None, settings: Any
) -> Iterator[Loop]:
    """A planner worker and three agents on the broker named by the parameter."""
    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        with _started(_redis_loop(tmp_path, server)) as running:
            yield running
        return
    need(shutil.which("rabbitmqctl") is not None, "needs rabbitmqctl")
    need(port_answers("127.0.0.1", 5672), "needs RabbitMQ on 127.0.0.1:5672")
    with rabbitmq_vhost() as url, _started(Loop(tmp_path, url, url, netns=False)) as running:
        yield running


@contextmanager
def _started(running: Loop) -> Iterator[Loop]:
    _datacenter()
    try:
        running.planner_worker()
        for host in HOSTS:
            running.start_agent(host)
        yield running
    finally:
        running.close()


def _datacenter() -> Datacenter:
    """dl1: one IP whose usable ports lie inside the default netns range (so agents
    without CAP_NET_ADMIN enforce it too), 8 slots of 2,048, three machines."""
    dc = make_datacenter(code="dl1")
    pool = make_pool(datacenter=dc, slice_size=2048)
    make_ip("198.51.100.30", pool=pool, usable_lo=40000, usable_hi=60999)
    for n, host in enumerate(HOSTS):
        make_machine(host, datacenter=dc, address=f"10.9.3.{n + 2}").pools.add(pool)
    signing_key_generate()
    return dc


def _publish(loop: Loop, reason: str) -> PlanRevision:
    revision = plan_apply_current(datacenter=Datacenter.objects.get(code="dl1"), reason=reason)
    loop.send(contract.PUBLISH_TASK, revision.pk)
    return revision


def _all_applied(revision: PlanRevision) -> bool:
    bundles = ConfigBundle.objects.filter(revision=revision)
    return bool(bundles) and all(b.status == BundleStatus.APPLIED for b in bundles)


def _applied_count(loop: Loop, host: str, serial: int) -> int:
    return len(re.findall(rf"bundle serial {serial} applied", loop.agent_log(host)))


def test_it_delivers_a_plan_to_three_agents_and_all_ack(loop: Loop) -> None:
    revision = _publish(loop, "first")
    wait_for("three acks", lambda: _all_applied(revision))
    for machine in Machine.objects.filter(hostname__in=HOSTS):
        assert machine.applied_serial == machine.bundle_serial > 0
        assert machine.last_seen is not None
        expected = "on" if loop.netns else "off"
        assert machine.enforcement["nftables"]["state"] == expected


def test_a_restarted_agent_gets_its_bundle_through_reconcile_once(loop: Loop) -> None:
    first = _publish(loop, "first")
    wait_for("first acks", lambda: _all_applied(first))
    down = HOSTS[1]
    loop.kill_agent(down)
    before = Machine.objects.get(hostname=down).bundle_serial
    Machine.objects.filter(hostname=down).update(weight=2)  # a second slice for it
    revision = plan_apply_current(datacenter=Datacenter.objects.get(code="dl1"), reason="w")
    serial = Machine.objects.get(hostname=down).bundle_serial
    assert serial > before
    # The publish never happens (the broker lost it, say); the agent comes back.
    loop.start_agent(down)
    # A reconcile tick: the pending bundles are due at once.
    loop.send("planner.reconcile")
    wait_for("acks after reconcile", lambda: _all_applied(revision))
    assert Machine.objects.get(hostname=down).applied_serial == serial
    # A later tick, once the resend delay has passed, sends nothing new: all applied.
    ConfigBundle.objects.update(sent_at=timezone.now() - timedelta(minutes=5))
    loop.send("planner.reconcile")
    loop.send("planner.reconcile")
    wait_for("the ticks", lambda: loop_log_count(loop, "planner.reconcile") >= 3)
    assert _applied_count(loop, down, serial) == 1


def loop_log_count(loop: Loop, task: str) -> int:
    log = (loop.folder / "planner.log").read_text()
    return len(re.findall(rf"Task {re.escape(task)}\[[^]]+\] succeeded", log))


def test_a_replayed_older_bundle_is_rejected_and_the_planner_hears_why(loop: Loop) -> None:
    first = _publish(loop, "first")
    wait_for("first acks", lambda: _all_applied(first))
    Machine.objects.filter(hostname=HOSTS[1]).update(weight=2)
    second = _publish(loop, "second")
    wait_for("second acks", lambda: _all_applied(second))
    host = HOSTS[1]  # the machine the second plan changed
    old = ConfigBundle.objects.get(machine__hostname=host, revision=first)
    loop.send(contract.APPLY_TASK, old.token, queue=contract.agent_queue(host))
    rejected = wait_for(
        "the rejection",
        lambda: ConfigBundle.objects.filter(pk=old.pk, status=BundleStatus.REJECTED).first(),
    )
    assert rejected.error.startswith("stale_serial:")
    machine = Machine.objects.get(hostname=host)
    assert (
        machine.applied_serial == ConfigBundle.objects.get(machine=machine, revision=second).serial
    )


def test_delivery_completes_after_redis_comes_back_and_agents_keep_enforcing(
    redis_server: PrivateRedis, tmp_path: Path, postgres: None, settings: Any
) -> None:
    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    with _started(_redis_loop(tmp_path, redis_server)) as started:
        first = _publish(started, "first")
        wait_for("first acks", lambda: _all_applied(first))
        guard = {host: started.nft_table(host) for host in HOSTS}
        redis_server.stop()
        Machine.objects.filter(hostname=HOSTS[1]).update(weight=2)
        second = plan_apply_current(datacenter=Datacenter.objects.get(code="dl1"), reason="down")
        # Meanwhile every agent still enforces the last bundle it applied.
        for host in HOSTS:
            assert started.nft_table(host) == guard[host]
            assert "198.51.100.30" in guard[host]
        redis_server.start()
        started.send("planner.reconcile")
        wait_for("acks after the outage", lambda: _all_applied(second), timeout=90)
        assert started.nft_table(HOSTS[1]) != guard[HOSTS[1]]  # its two slices now


def test_two_ticks_at_once_send_each_bundle_once_and_rebalance_once(
    redis_server: PrivateRedis, tmp_path: Path, postgres: None, settings: Any
) -> None:
    import redis

    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    running = Loop(tmp_path, redis_server.url, redis_server.socket_url, netns=False)
    dc = _datacenter()
    try:
        plan_apply_current(datacenter=dc, reason="pending, never published")
        running.planner_worker("p1")
        running.planner_worker("p2")
        for _ in range(2):  # two beat processes' ticks, one per worker
            running.send("planner.reconcile")
            running.send("planner.rebalance")
        wait_for("four tasks", lambda: sum(
            loop_log_count_named(running, name, task)
            for name in ("p1", "p2") for task in ("planner.reconcile", "planner.rebalance")
        ) == 4)  # fmt: skip
        queues = redis.Redis.from_url(redis_server.url)
        lengths = [queues.llen(contract.agent_queue(host)) for host in HOSTS]
        assert lengths == [1, 1, 1]
        assert RebalanceRun.objects.filter(datacenter=dc).count() == 1
    finally:
        running.close()


def loop_log_count_named(loop: Loop, name: str, task: str) -> int:
    log = (loop.folder / f"{name}.log").read_text()
    return len(re.findall(rf"Task {re.escape(task)}\[[^]]+\] succeeded", log))
