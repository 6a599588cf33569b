"""Planning at scale: a full plan against a scoped join, 100,000 to 1,000,000 slices.

Run with ``DATABASE_URL=postgres://... .venv/bin/python -m bench.bench_scale [SIZES]``
(SIZES in thousands of slices, default ``100 300``; ``1000`` adds the million,
which takes several minutes to set up). It builds its own database
(``bench_<name>``), analyzed after the bulk load as production's autovacuum
would have it, and drops it at the end.

Each datacenter: 50 pools of 2,048-port slices, every machine serving every
pool (one slice each), IPs to fit. Per size, median and p95 of:

- the pure allocator re-planning every pool from inputs already in memory:
  the baseline every figure is divided by;
- a full preview (``?scope=full``): load, digest, plan. Target: <= 2x the baseline;
- a scoped join over the API, in process (DRF, no gunicorn): create a machine
  serving one pool, preview, apply (plan, write the diff, sign its bundle).
  Target: <= 0.3 s median, <= 0.5 s p95 at every size;
- the datacenter page and the overview, each the first view after a write (a
  join applied), with imports and templates warm. Target (at 80,000 slices,
  bench_ui): the datacenter page <= 0.4 s;
- the same join over HTTP against gunicorn with several workers (as
  docker-compose.yml runs it): each call may land on a different worker, so
  no worker's memory helps the next call. Target as above.

The growth exponent ``k`` in ``time ~ slices^k`` is fitted between the
smallest and the largest size: about 1 for the full plan, about 0 for a join.
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "planner.settings")
os.environ.setdefault("CELERY_BROKER_URL", "memory://")
os.environ.setdefault("SIGNING_KEY_DIR", mkdtemp(prefix="portslice-bench-keys-"))

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from bench.timing import analyze  # noqa: E402

POOLS = 50
SLOTS_PER_IP = 31  # 2,048-port slices in 1024-65535
ROUNDS = 15
JOIN_MEDIAN_S, JOIN_P95_S = 0.3, 0.5
FULL_RATIO_TARGET = 2.0
GUNICORN_WORKERS = 3
ROOT = Path(__file__).resolve().parents[1]


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def timed(rounds: int, work: Callable[[int], Any]) -> list[float]:
    samples = []
    for n in range(rounds):
        start = time.perf_counter()
        work(n)
        samples.append(time.perf_counter() - start)
    return samples


def build(slices: int) -> Any:
    """One datacenter of ``slices`` slices (50 pools x machines), planned and stored."""
    from planner.models import Datacenter, EgressIP, EgressPool, Machine
    from planner.services.plans import plan_apply_current

    machines_n = slices // POOLS
    ips_per_pool = math.ceil(machines_n * 1.05 / SLOTS_PER_IP)  # 5 % room for joins
    code = f"s{slices // 1000}k"
    dc = Datacenter.objects.create(code=code, name="Scale", country="DE")
    pools = EgressPool.objects.bulk_create(
        EgressPool(datacenter=dc, purpose=f"p{n:02d}", country="DE") for n in range(POOLS)
    )
    base = 10 + Datacenter.objects.count()  # a first octet per datacenter
    EgressIP.objects.bulk_create(
        (
            EgressIP(address=f"{base}.{n // 65536}.{n // 256 % 256}.{n % 256}", pool=pool)
            for p, pool in enumerate(pools)
            for n in range(p * ips_per_pool, (p + 1) * ips_per_pool)
        ),
        batch_size=5000,
    )
    machines = Machine.objects.bulk_create(
        (
            Machine(hostname=f"m{n:05d}.{code}.example.net", datacenter=dc, address="172.16.0.2")
            for n in range(machines_n)
        ),
        batch_size=5000,
    )
    Machine.pools.through.objects.bulk_create(
        (
            Machine.pools.through(machine_id=m.pk, egresspool_id=p.pk)
            for m in machines
            for p in pools
        ),
        batch_size=10000,
    )
    analyze()
    plan_apply_current(datacenter=dc, reason="bench", full=True)
    analyze()
    return dc


def bench_size(slices: int, client: Any) -> dict[str, float]:
    from planner.models import EgressPool, PortSlice
    from planner.selectors import planner_inputs
    from planner.services.plans import plan_preview

    start = time.perf_counter()
    dc = build(slices)
    stored = PortSlice.objects.filter(ip__pool__datacenter=dc).count()
    print(f"{stored:,} slices: set up in {time.perf_counter() - start:.0f} s")
    pure_s = percentiles(pure_plan_times(planner_inputs(datacenter=dc), rounds=5))
    gc.collect()  # a web worker holds no 100,000 slices between requests
    full_s = percentiles(timed(5, lambda _: plan_preview(datacenter=dc, full=True)))
    gc.collect()
    pool_ids = list(EgressPool.objects.filter(datacenter=dc).values_list("pk", flat=True))

    phases: dict[str, list[float]] = {"create": [], "preview": [], "apply": []}

    def join(n: int) -> None:
        marks = [time.perf_counter()]
        created = client.post(
            "/api/v1/machines",
            {
                "hostname": f"join{n:03d}.{dc.code}.example.net",
                "datacenter": dc.code,
                "address": "172.16.9.9",
                "pools": [pool_ids[n % POOLS]],
            },
            format="json",
        )
        assert created.status_code == 201, created.content
        marks.append(time.perf_counter())
        url = f"/api/v1/datacenters/{dc.code}/plan/"
        preview = client.post(url + "preview").json()
        assert preview["pools_planned"] and preview["diff"]["added"] == 1, preview
        marks.append(time.perf_counter())
        applied = client.post(
            url + "apply", {"inputs_digest": preview["inputs_digest"]}, format="json"
        )
        assert applied.status_code == 201, applied.content
        marks.append(time.perf_counter())
        for name, begin, end in zip(phases, marks, marks[1:], strict=False):
            phases[name].append(end - begin)

    join(ROUNDS)  # warm-up: the first request pays imports and caches
    for samples in phases.values():
        samples.clear()
    join_s = percentiles(timed(ROUNDS, join))
    medians = ", ".join(f"{name} {statistics.median(t):.3f} s" for name, t in phases.items())
    print(f"  pure allocator, every pool:  median {pure_s[0]:.3f} s, p95 {pure_s[1]:.3f} s")
    print(
        f"  full preview (scope=full):   median {full_s[0]:.3f} s, p95 {full_s[1]:.3f} s "
        f"= {full_s[0] / pure_s[0]:.2f}x the allocator (target <= {FULL_RATIO_TARGET}x: "
        f"{'met' if full_s[0] / pure_s[0] <= FULL_RATIO_TARGET else 'MISSED'})"
    )
    met = join_s[0] <= JOIN_MEDIAN_S and join_s[1] <= JOIN_P95_S
    print(
        f"  join over the API (create + preview + apply): median {join_s[0]:.3f} s, "
        f"p95 {join_s[1]:.3f} s = {join_s[0] / pure_s[0]:.2f}x the allocator's full plan "
        f"(target <= {JOIN_MEDIAN_S} / {JOIN_P95_S} s: {'met' if met else 'MISSED'})"
    )
    print(f"    of which (medians): {medians}")
    more = itertools.count(ROUNDS + 1)
    pages = cold_pages(dc, lambda: join(next(more)))
    http_s = http_joins(dc, pool_ids, pure_s[0])
    return {
        "slices": stored,
        "pure": pure_s[0],
        "full": full_s[0],
        "join": join_s[0],
        **pages,
        **http_s,
    }


def cold_pages(dc: Any, write: Callable[[], None]) -> dict[str, float]:
    """The datacenter page and the overview as the first view after ``write``: best and
    worst of 3, each after a write of its own and a warm-up view before it."""
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client, override_settings

    browser = Client()
    browser.force_login(User.objects.get(username="bench"))
    found = {}
    # No collectstatic here: the pages name the source files (as the tests do).
    plain = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
    storages = override_settings(STORAGES={**settings.STORAGES, "staticfiles": plain})
    for name, url in (("page", f"/datacenters/{dc.code}/"), ("overview", "/")):
        with storages:
            assert browser.get(url).status_code == 200  # warm: imports, templates
        samples = []
        for _ in range(3):
            write()
            with storages:
                start = time.perf_counter()
                assert browser.get(url).status_code == 200
                samples.append(time.perf_counter() - start)
        found[name] = min(samples)
        print(f"  {name} {url}, first view after a write: best {min(samples):.3f} s, "
              f"worst {max(samples):.3f} s")  # fmt: skip
    return found


def http_joins(dc: Any, pool_ids: list[int], pure: float) -> dict[str, float]:
    """Joins over HTTP against gunicorn with GUNICORN_WORKERS workers."""
    from django.contrib.auth.models import User

    from planner.choices import TokenKind
    from planner.services.tokens import api_token_create

    user = User.objects.get(username="bench")
    _, key = api_token_create(name=f"bench-{dc.code}", kind=TokenKind.USER, user=user)
    with gunicorn() as base:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

        def call(path: str, body: dict[str, Any]) -> tuple[int, Any]:
            request = urllib.request.Request(
                base + path, json.dumps(body).encode(), headers, method="POST"
            )
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())

        def join(n: int) -> float:
            start = time.perf_counter()
            status, _ = call(
                "/api/v1/machines",
                {
                    "hostname": f"http{n:04d}.{dc.code}.example.net",
                    "datacenter": dc.code,
                    "address": "172.16.9.9",
                    "pools": [pool_ids[n % POOLS]],
                },
            )
            assert status == 201
            url = f"/api/v1/datacenters/{dc.code}/plan/"
            _, preview = call(url + "preview", {})
            status, _ = call(url + "apply", {"inputs_digest": preview["inputs_digest"]})
            assert status == 201
            return time.perf_counter() - start

        for n in range(GUNICORN_WORKERS * 2):  # every worker warm (imports, caches)
            join(1000 + n)
        median, p95 = percentiles(timed(ROUNDS, lambda n: join(2000 + n)))
    met = median <= JOIN_MEDIAN_S and p95 <= JOIN_P95_S
    print(
        f"  join over HTTP, gunicorn {GUNICORN_WORKERS} workers: median {median:.3f} s, "
        f"p95 {p95:.3f} s = {median / pure:.2f}x the allocator's full plan "
        f"(target <= {JOIN_MEDIAN_S} / {JOIN_P95_S} s: {'met' if met else 'MISSED'})"
    )
    return {"http": median}


@contextmanager
def gunicorn() -> Iterator[str]:
    """gunicorn serving the bench database on a free loopback port; its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{settings['USER']}@{settings['HOST']}:"
        f"{settings['PORT']}/{settings['NAME']}",
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1",
    }
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "gunicorn", "planner.wsgi"),
            *("--bind", f"127.0.0.1:{port}", "--workers", str(GUNICORN_WORKERS)),
            *("--log-level", "warning"),
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):  # listening
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=60)


def pure_plan_times(inputs: Any, *, rounds: int) -> list[float]:
    """The allocator alone re-planning every pool from inputs already in memory."""
    import allocator as alloc

    return timed(
        rounds,
        lambda _: alloc.plan(
            ips=inputs.ips,
            machines=inputs.machines,
            previous=inputs.previous,
            policies=inputs.policies,
            now=dc_now(),
        ),
    )


def dc_now() -> Any:
    from django.utils import timezone

    return timezone.now()


def growth(results: list[dict[str, float]], name: str) -> float:
    small, large = results[0], results[-1]
    return math.log(large[name] / small[name]) / math.log(large["slices"] / small["slices"])


def main() -> None:
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from planner.services.keys import signing_key_generate

    sizes = [int(arg) * 1000 for arg in sys.argv[1:]] or [100_000, 300_000]
    setup_test_environment()
    connection.settings_dict.setdefault("TEST", {})["NAME"] = (
        f"bench_{connection.settings_dict['NAME']}"
    )
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        print(
            f"portslice planning at scale on {connection.vendor}, Python "
            f"{platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}"
        )
        signing_key_generate()
        client = APIClient()
        client.force_authenticate(User.objects.create_superuser("bench", password="unused-Pa55"))
        results = [bench_size(size, client) for size in sizes]
        if len(results) > 1:
            names = ("pure", "full", "join", "page", "overview", "http")
            exponents = (f"{name} {growth(results, name):.2f}" for name in names)
            print("growth exponent k (time ~ slices^k): " + ", ".join(exponents))
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
        for pem in Path(os.environ["SIGNING_KEY_DIR"]).glob("*.pem"):
            pem.unlink()


if __name__ == "__main__":
    main()
