"""Forecast benchmark: what the exhaustion forecast adds to a /metrics scrape.

Run with ``DATABASE_URL=postgres://... .venv/bin/python -m bench.bench_forecast`` (a
test database is made and dropped; about a minute).

A generated datacenter of 10 pools of 10 IPs (2,048-port slices, growth up to 4
per machine), 300 machines joined over 7 days, each serving one pool, and a
usage report per machine every 10 minutes for those 7 days: 302,400 history
rows. Measured, best of 3:

- baseline: :func:`planner.selectors.pool_headroom`, which every scrape already
  computes (the allocator's count over the planner inputs);
- :func:`planner.selectors.pool_outlooks`: every pool's history and fit, cold;
- :func:`planner.selectors.pool_outlooks_recent` within a step (what the
  scrapes in between pay);
- the maths alone: :func:`planner.forecast.pool_forecast` on one pool's 168
  hourly points.
"""

from __future__ import annotations

import os
import platform
import time
from datetime import timedelta
from functools import partial
from tempfile import mkdtemp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "planner.settings")
os.environ.setdefault("CELERY_BROKER_URL", "memory://")
os.environ.setdefault("SIGNING_KEY_DIR", mkdtemp(prefix="portslice-bench-keys-"))

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from django.utils import timezone  # noqa: E402

from bench.timing import best_of  # noqa: E402

POOLS, IPS_PER_POOL, MACHINES, DAYS, EVERY = 10, 10, 300, 7, timedelta(minutes=10)


def build() -> int:
    from planner.models import Datacenter, EgressIP, EgressPool, Machine, UsageSample

    now = timezone.now()
    dc = Datacenter.objects.create(code="fc1", name="Forecast", country="DE")
    pools = EgressPool.objects.bulk_create(
        EgressPool(datacenter=dc, purpose=f"p{n}", country="DE", max_slices_per_machine=4)
        for n in range(POOLS)
    )
    EgressIP.objects.bulk_create(
        EgressIP(address=f"10.1.{n // 250}.{n % 250 + 1}", pool=pools[n // IPS_PER_POOL])
        for n in range(POOLS * IPS_PER_POOL)
    )
    start = now - timedelta(days=DAYS)
    machines = Machine.objects.bulk_create(
        Machine(
            hostname=f"f{n:04d}.fc1.example.net",
            datacenter=dc,
            address=f"172.17.{n // 250}.{n % 250 + 2}",
            joined_at=start + timedelta(days=DAYS) * n / MACHINES,
        )
        for n in range(MACHINES)
    )
    links = Machine.pools.through
    links.objects.bulk_create(
        links(machine_id=m.pk, egresspool_id=pools[n % POOLS].pk) for n, m in enumerate(machines)
    )
    rows = 0
    steps = int(timedelta(days=DAYS) / EVERY)
    for n, machine in enumerate(machines):
        ip = f"10.1.{(n % POOLS) * IPS_PER_POOL // 250}.{(n % POOLS) * IPS_PER_POOL % 250 + 1}"
        UsageSample.objects.bulk_create(
            UsageSample(
                machine=machine,
                ip=ip,
                lo=2048,
                hi=4095,
                at=start + EVERY * i,
                sockets=(i * 7 + n) % 2000,
            )  # fmt: skip
            for i in range(steps)
        )
        rows += steps
    return rows


def main() -> None:
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        from datetime import UTC, datetime

        from django.core.cache import cache

        from planner import forecast, selectors

        print(
            f"portslice forecast benchmark on {connection.vendor}, Python "
            f"{platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}"
        )
        start = time.perf_counter()
        rows = build()
        took = time.perf_counter() - start
        print(f"  set-up: {MACHINES} machines, {rows:,} usage rows, {took:.0f} s")
        base_s, _ = best_of(3, selectors.pool_headroom)
        cold_s, outlooks = best_of(3, selectors.pool_outlooks)
        cache.clear()
        selectors.pool_outlooks_recent()
        warm_s, _ = best_of(3, selectors.pool_outlooks_recent)
        points = [
            forecast.DemandPoint(
                datetime(2026, 12, 1, tzinfo=UTC) + timedelta(hours=h), 10 + h / 24
            )
            for h in range(168)
        ]
        maths_s, _ = best_of(
            3,
            partial(
                forecast.pool_forecast, history=points, capacity=40, slots_per_ip=31,
                now=points[-1].at, horizon=timedelta(days=7), min_span=timedelta(days=1),
            ),
        )  # fmt: skip
        runs_out = sum(1 for _, o in outlooks if o.outlook is forecast.Outlook.RUNS_OUT)
        print(f"  baseline pool_headroom (every scrape):      {base_s:.3f} s")
        print(f"  pool_outlooks, cold ({POOLS} pools):          {cold_s:.3f} s  "
              f"({cold_s / base_s:.1f}x the baseline; {runs_out} pools run out)")  # fmt: skip
        print(f"  pool_outlooks_recent, within a step:         {warm_s * 1000:.2f} ms  "
              f"({warm_s / base_s:.3f}x)")  # fmt: skip
        print(f"  pool_forecast maths, one pool, 168 points:   {maths_s * 1000:.2f} ms")
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
