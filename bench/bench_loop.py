"""The live loop's latency, end to end, with real processes on this machine.

Run with ``DATABASE_URL=postgres://... .venv/bin/python -m bench.bench_loop`` as
root (agents in this host's namespace with nftables off: delivery is measured,
not the kernel). About five minutes.

1. Apply -> every agent acked, 20 agents: a plan touching all 20 machines is
   applied, its publish task sent, and the clock stops when the database shows
   all 20 bundles applied. On a private Redis, on RabbitMQ (a virtual host of
   its own) and on the quick start's ``filesystem://``. Baseline, per broker:
   one message there and back between two kombu clients (two hops, the floor
   of publish -> agent -> ack). Target: p95 <= 2 s.
2. A machine joins a datacenter of 100,000 slices: from the API call that
   creates it, through the preview and apply calls, publish, delivery, the
   agent's verify and apply (in its own network namespace, nftables on), to
   its ack in the database (Redis). Baseline: the apply call alone (plan,
   write, sign). Target: p95 <= 1 s.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "planner.settings")
os.environ["CELERY_BROKER_URL"] = "memory://"  # the bench sends on the broker under test
os.environ.setdefault("SIGNING_KEY_DIR", tempfile.mkdtemp(prefix="portslice-bench-keys-"))

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

AGENTS = 20
ROUNDS = 15
JOINS = 15
TARGET_S = 2.0
# A join, from the API call to its agent enforcing (issue 16: plan only the changed pools).
JOIN_TARGET_S = 1.0
# A planner worker of 2 processes, one per CPU here: acks of different machines
# are recorded side by side. Agents report usage every 5 s, their default.
WORKER_PROCESSES = 2


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def wait_until(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the loop did not finish in time")
        time.sleep(0.01)


def broker_round_trip(loop: Any, rounds: int = 30) -> float:
    """Median time for one message there and back between two kombu clients."""
    times = []
    with loop.connection() as conn:
        ping, pong = conn.SimpleQueue("bench.ping"), conn.SimpleQueue("bench.pong")
        for n in range(rounds):
            start = time.perf_counter()
            ping.put({"n": n})
            message = ping.get(timeout=10)
            message.ack()
            pong.put(message.payload)
            pong.get(timeout=10).ack()
            times.append(time.perf_counter() - start)
        ping.close()
        pong.close()
    return statistics.median(times)


def loop_datacenter(code: str, hosts: list[str], address: str) -> Any:
    from planner.models import Datacenter, EgressIP, EgressPool, Machine

    dc = Datacenter.objects.create(code=code, name=code, country="DE")
    pool = EgressPool.objects.create(
        datacenter=dc, purpose="warp", country="DE", slice_size=256, slices_per_machine=1
    )
    EgressIP.objects.create(address=address, pool=pool, usable_lo=40000, usable_hi=60999)
    for n, host in enumerate(hosts):
        Machine.objects.create(hostname=host, datacenter=dc, address=f"10.9.4.{n + 2}").pools.add(
            pool
        )
    return dc


def all_applied(revision: Any) -> bool:
    from planner.models import ConfigBundle

    statuses = list(ConfigBundle.objects.filter(revision=revision).values_list("status", flat=True))
    return bool(statuses) and all(status == "applied" for status in statuses)


def apply_to_all(loop: Any, dc: Any, weight: int) -> tuple[float, float]:
    """Seconds from a plan touching every machine to every agent's ack in the database,
    and of those the apply itself (plan, write, sign)."""
    import contract
    from planner.models import Machine
    from planner.services.plans import plan_apply_current

    Machine.objects.filter(datacenter=dc).update(weight=weight)  # each gains or drains a slice
    start = time.perf_counter()
    revision = plan_apply_current(datacenter=dc, reason=f"bench weight {weight}")
    applied = time.perf_counter() - start
    loop.send(contract.PUBLISH_TASK, revision.pk)
    try:
        wait_until(lambda: all_applied(revision))
    except TimeoutError:
        from planner.models import ConfigBundle

        stuck = ConfigBundle.objects.filter(revision=revision).exclude(status="applied")
        rows = list(stuck.values_list("machine__hostname", "status", "error"))
        raise TimeoutError(f"revision {revision.number} not acked everywhere: {rows}") from None
    return time.perf_counter() - start, applied


@contextmanager
def broker(kind: str, folder: Path) -> Iterator[tuple[str, Path | None]]:
    """(URL, filesystem folder or None) of a broker of this run's own."""
    from tests.e2e.loop import PrivateRedis, rabbitmq_vhost

    if kind == "redis":
        server = PrivateRedis(folder / "redis")
        server.start()
        try:
            yield server.url, None
        finally:
            server.stop()
    elif kind == "rabbitmq":
        with rabbitmq_vhost() as url:
            yield url, None
    else:
        (folder / "var" / "broker").mkdir(parents=True)
        yield "filesystem://", folder / "var" / "broker"


def bench_apply(kind: str) -> dict[str, float]:
    from planner.services.keys import signing_key_generate
    from tests.e2e.loop import Loop

    folder = Path(tempfile.mkdtemp(prefix=f"portslice-bench-{kind}-"))
    hosts = [f"b{n:02d}.{kind}.example.net" for n in range(AGENTS)]
    address = {"redis": "198.51.100.50", "rabbitmq": "198.51.100.51"}.get(kind, "198.51.100.52")
    dc = loop_datacenter(f"bench-{kind}", hosts, address)
    if not _has_key():
        signing_key_generate()
    with broker(kind, folder) as (url, broker_folder):
        loop = Loop(folder, url, url, netns=False, broker_folder=broker_folder, usage_interval=5)
        try:
            floor = broker_round_trip(loop)
            loop.planner_worker(processes=WORKER_PROCESSES)
            loop.start_agents(hosts)
            apply_to_all(loop, dc, 2)  # warm-up: first bundles, connections, imports
            rounds = [apply_to_all(loop, dc, 1 + (n % 2)) for n in range(ROUNDS)]
        finally:
            loop.close()
    shutil.rmtree(folder, ignore_errors=True)
    p50, p95 = percentiles([total for total, _ in rounds])
    a50, _ = percentiles([applied for _, applied in rounds])
    print(
        f"  {kind:>10}: apply -> {AGENTS} acks p50 {p50:.3f} s, p95 {p95:.3f} s "
        f"({'meets' if p95 <= TARGET_S else 'MISSES'} p95 <= {TARGET_S} s); "
        f"the apply alone p50 {a50:.3f} s; broker round trip {floor * 1000:.1f} ms, "
        f"delivery and acks p50 = {(p50 - a50) / floor:.0f}x it"
    )
    return {"p50": p50, "p95": p95, "apply_p50": a50, "floor": floor}


def _has_key() -> bool:
    from planner.models import SigningKey

    return SigningKey.objects.filter(status="active").exists()


def bench_join() -> dict[str, float]:
    """JOINS machines join the 100,000-slice datacenter, one at a time, through the API,
    after one that warms the worker and the agents up."""
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from bench.bench_api import build_steering_datacenter
    from planner.models import ConfigBundle, EgressPool, Machine
    from planner.services.keys import signing_key_generate
    from tests.e2e.loop import Loop, PrivateRedis

    if not _has_key():  # the apply part made one, unless it was skipped
        signing_key_generate()
    dc = build_steering_datacenter()
    pools = list(EgressPool.objects.filter(datacenter=dc).values_list("pk", flat=True))[:4]
    client = APIClient()
    client.force_authenticate(User.objects.create_superuser("bench", password="unused-Pa55"))
    folder = Path(tempfile.mkdtemp(prefix="portslice-bench-join-"))
    server = PrivateRedis(folder / "redis")
    server.start()
    # In network namespaces with nftables, as on a host: the joining machine's
    # slices may lie anywhere in 1024-65535, so its agent widens the netns range.
    loop = Loop(folder, server.url, server.socket_url, netns=True, usage_interval=5)
    # One more host than measured: the first join warms the worker and the agents'
    # first apply (nftables, imports) and is not counted.
    hosts = [f"join{n}.big1.example.net" for n in range(JOINS + 1)]
    totals: list[float] = []
    phases: dict[str, list[float]] = {"create": [], "preview": [], "apply": [], "deliver": []}
    try:
        loop.planner_worker(processes=WORKER_PROCESSES)
        loop.start_agents(hosts)
        for n, host in enumerate(hosts):
            marks = [time.perf_counter()]
            body = {"hostname": host, "datacenter": "big1", "address": f"10.9.5.{n + 2}",
                    "pools": pools}  # fmt: skip
            assert client.post("/api/v1/machines", body, format="json").status_code == 201
            marks.append(time.perf_counter())
            preview = client.post("/api/v1/datacenters/big1/plan/preview").json()
            marks.append(time.perf_counter())
            applied = client.post(
                "/api/v1/datacenters/big1/plan/apply",
                {"inputs_digest": preview["inputs_digest"], "reason": "join"},
                format="json",
            )
            assert applied.status_code == 201, applied.content
            marks.append(time.perf_counter())
            machine = Machine.objects.get(hostname=host)
            bundle = ConfigBundle.objects.get(machine=machine, serial=machine.bundle_serial)
            loop.send("planner.publish_revision", bundle.revision_id)
            wait_until(_acked(machine))
            marks.append(time.perf_counter())
            if n == 0:
                continue
            for name, start, end in zip(phases, marks, marks[1:], strict=False):
                phases[name].append(end - start)
            totals.append(marks[-1] - marks[0])
    finally:
        loop.close()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    p50, p95 = percentiles(totals)
    a50, _ = percentiles(phases["apply"])
    print(
        f"  join: API call -> agent enforcing p50 {p50:.3f} s, p95 {p95:.3f} s "
        f"({'meets' if p95 <= JOIN_TARGET_S else 'MISSES'} p95 <= {JOIN_TARGET_S} s); p50 by step: "
        + ", ".join(f"{name} {percentiles(times)[0]:.3f} s" for name, times in phases.items())
        + f"; the apply call alone is {a50 / p50:.0%} of the total"
    )
    return {"p50": p50, "p95": p95, "apply_p50": a50}


def _acked(machine: Any) -> Callable[[], bool]:
    def check() -> bool:
        from planner.models import Machine

        return Machine.objects.get(pk=machine.pk).applied_serial == machine.bundle_serial

    return check


def main() -> None:
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        print(
            f"portslice loop benchmark on {connection.vendor}, Python "
            f"{platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}"
        )
        print(f"apply -> every agent acked ({AGENTS} agents, {ROUNDS} rounds):")
        brokers = os.environ.get("BENCH_BROKERS", "redis,rabbitmq,filesystem")
        for kind in filter(None, brokers.split(",")):  # BENCH_BROKERS= : the join only
            bench_apply(kind)
        print(f"a machine joins a 100,000-slice datacenter ({JOINS} joins, Redis):")
        bench_join()
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
