"""Cost bounds benchmark: time and peak memory of the largest what-if and import allowed.

Run with ``DATABASE_URL=postgres://... .venv/bin/python -m bench.bench_caps`` (a
test database is made and dropped; about a minute).

Each case runs in a fresh child process, so its peak RSS (``getrusage``
``ru_maxrss``) is its own: the child sets Django up, connects, then does the one
request, and reports the request's wall time, its RSS before, and its peak.
Ratios are against a baseline measured the same way in the same run:

- what-if: the plan page of a datacenter with one pool (20 IPs of 64-port
  slices, 200 machines), without a question (baseline) and with the largest
  question allowed (``dashboard.WHAT_IF_MAX_SLICES`` slices in the pool);
- import: a CSV of 50 egress IPs (baseline) and one of ``inventory_io.MAX_RECORDS``
  (the most an import may hold), parsed and written by ``inventory_import``.

Budgets (documented in docs/api.md and docs/ui.md): each request <= 30 s and
<= 400 MB peak RSS on this 2-CPU machine.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from tempfile import mkdtemp
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "planner.settings")
os.environ.setdefault("CELERY_BROKER_URL", "memory://")
os.environ.setdefault("SIGNING_KEY_DIR", mkdtemp(prefix="portslice-bench-keys-"))

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

BUDGET_S, BUDGET_MB = 30.0, 400.0
IPS, MACHINES, SLICE_SIZE = 20, 200, 64
BASELINE_ROWS = 50


def build() -> None:
    from planner.models import Datacenter, EgressIP, EgressPool, Machine
    from planner.services.plans import plan_apply_current

    dc = Datacenter.objects.create(code="cap1", name="Caps", country="DE")
    pool = EgressPool.objects.create(
        datacenter=dc, purpose="warp", country="DE", slice_size=SLICE_SIZE
    )
    EgressIP.objects.bulk_create(EgressIP(address=f"10.0.0.{n + 1}", pool=pool) for n in range(IPS))
    machines = Machine.objects.bulk_create(
        Machine(
            hostname=f"m{n:04d}.cap1.example.net",
            datacenter=dc,
            address=f"172.16.{n // 250}.{n % 250 + 2}",
        )
        for n in range(MACHINES)
    )
    pool.machines.add(*machines)
    plan_apply_current(datacenter=dc, reason="bench")


def largest_what_if() -> dict[str, int]:
    """The question at the cap: WHAT_IF_MAX_SLICES slices in the pool, IPs added to hold them."""
    from planner import dashboard

    per_machine = 10
    return {
        "slices_per_machine": per_machine,
        "add_machines": dashboard.WHAT_IF_MAX_SLICES // per_machine - MACHINES,
        "add_ips": 30,
    }


def ip_csv(rows: int, third: int) -> str:
    lines = ["datacenter,purpose,country,address"]
    lines += [f"cap1,warp,DE,10.{third}.{n // 250}.{n % 250 + 1}" for n in range(rows)]
    return "\n".join(lines) + "\n"


# --- the child: one request, measured ----------------------------------------------------------


def child(case: str, database: str) -> None:
    settings.DATABASES["default"]["NAME"] = database
    connection.settings_dict["NAME"] = database
    # Pages name their assets; no collectstatic here, so no manifest to read them from.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    from django.contrib.auth.models import User
    from django.test import Client
    from django.test.utils import setup_test_environment

    from planner.inventory_io import MAX_RECORDS, parse_inventory
    from planner.models import EgressPool
    from planner.services.inventory import inventory_import

    setup_test_environment()
    client = Client()
    client.force_login(User.objects.get(username="bench"))
    pool = EgressPool.objects.get(datacenter__code="cap1").pk
    texts = {
        "import-baseline": ip_csv(BASELINE_ROWS, 60),
        "import-largest": ip_csv(MAX_RECORDS, 70),
    }
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if case.startswith("what-if"):
        query = {"pool": pool, **largest_what_if()} if case == "what-if-largest" else {}
        response = client.get("/datacenters/cap1/plan/", query)
        assert response.status_code == 200, response.status_code
        if query:
            html = response.content.decode()
            assert 'id="what-if-result"' in html, "the largest allowed question was refused"
    else:
        counts = inventory_import(records=parse_inventory(texts[case]))
        assert counts["ips"] == (MAX_RECORDS if case == "import-largest" else BASELINE_ROWS)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "rss_before_kb": before, "rss_peak_kb": peak}))


def measure(case: str, database: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_caps", "--child", case, database],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    if out.returncode:
        raise SystemExit(f"{case} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def report(label: str, result: dict[str, Any]) -> None:
    peak_mb = result["rss_peak_kb"] / 1024
    grew_mb = (result["rss_peak_kb"] - result["rss_before_kb"]) / 1024
    verdict = "met" if result["seconds"] <= BUDGET_S and peak_mb <= BUDGET_MB else "MISSED"
    print(
        f"  {label}: {result['seconds']:.2f} s, peak RSS {peak_mb:.0f} MB "
        f"(+{grew_mb:.0f} MB during the request) ({verdict})"
    )


def main() -> None:
    from django.contrib.auth.models import User
    from django.test.utils import setup_test_environment

    from planner import dashboard
    from planner.inventory_io import MAX_RECORDS

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    database = connection.settings_dict["NAME"]
    try:
        print(
            f"portslice cost-bounds benchmark on {connection.vendor}, Python "
            f"{platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}"
        )
        build()
        User.objects.create_superuser("bench", password="unused-Pa55")
        connection.close()  # the children connect on their own
        results = {}
        for case, label in (
            ("what-if-baseline", "plan page, no question (baseline)"),
            (
                "what-if-largest",
                f"plan page with the largest what-if ({dashboard.WHAT_IF_MAX_SLICES:,} slices)",
            ),
            ("import-baseline", f"import of {BASELINE_ROWS} IPs (baseline)"),
            ("import-largest", f"import of {MAX_RECORDS:,} IPs (the record cap)"),
        ):
            results[case] = measure(case, database)
            report(label, results[case])
        for kind in ("what-if", "import"):
            base, big = results[f"{kind}-baseline"], results[f"{kind}-largest"]
            print(
                f"  ratio {kind} largest / baseline: time {big['seconds'] / base['seconds']:.1f}x, "
                f"peak RSS {big['rss_peak_kb'] / base['rss_peak_kb']:.2f}x"
            )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3])
    else:
        main()
