"""Planner export benchmark: steering tables and bundle signing, against baselines run here.

Run with ``.venv/bin/python -m bench.bench_api`` (SQLite in memory unless
``DATABASE_URL`` says otherwise; about a minute).

- Steering export of one datacenter holding 100,000 slices (2,000 machines,
  50 pools, 3,500 IPs, planned by the allocator): time and bytes for the JSON
  body and the nft script, both built the way the API builds them. Baseline:
  the obvious DRF way, ``PortSliceSerializer(many=True)`` over the slices
  viewset's queryset (model instances, ``select_related``). Target: <= 1 s.
- Bundles built and signed per second for machines holding 50 slices each
  (``services.bundles_build``: serials, claims, JWS, rows). Baseline: the raw
  Ed25519 signature of the same payload with ``cryptography``, the floor any
  signer pays. Target: >= 500/s on one core.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import UTC, datetime
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

from bench.timing import analyze, best_of  # noqa: E402

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
STEERING_BUDGET_S = 1.0
BUNDLES_PER_S_TARGET = 500


def build_steering_datacenter() -> Any:
    """2,000 machines x 50 pools on 3,500 IPs, planned and stored: 100,000 slices."""
    from planner.models import Datacenter, EgressIP, EgressPool, Machine
    from planner.services.plans import plan_apply_current

    dc = Datacenter.objects.create(code="big1", name="Big", country="DE")
    pools = EgressPool.objects.bulk_create(
        EgressPool(datacenter=dc, purpose=f"p{n:02d}", country="DE") for n in range(50)
    )
    EgressIP.objects.bulk_create(
        EgressIP(address=f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", pool=pools[n // 70])
        for n in range(3500)
    )
    machines = Machine.objects.bulk_create(
        Machine(
            hostname=f"m{n:04d}.big1.example.net",
            datacenter=dc,
            address=f"172.16.{n // 250}.{n % 250 + 2}",
        )
        for n in range(2000)
    )
    Machine.pools.through.objects.bulk_create(
        Machine.pools.through(machine_id=m.pk, egresspool_id=p.pk) for m in machines for p in pools
    )
    analyze()
    plan_apply_current(datacenter=dc, reason="bench", now=NOW)
    analyze()
    return dc


def steering_json(dc: Any) -> bytes:
    """What the API's JSON answer costs: query, shape, serialize."""
    from planner import selectors, steering

    rows = selectors.steering_table(datacenter=dc)
    revision = selectors.current_revision(datacenter=dc)
    body = steering.steering_document(rows, datacenter=dc.code, revision=revision)
    return json.dumps(body).encode()


def steering_nft(dc: Any) -> bytes:
    from planner import selectors, steering

    rows = selectors.steering_table(datacenter=dc)
    return steering.render_script(rows, datacenter=dc.code, revision=1).encode()


def steering_naive(dc: Any) -> bytes:
    from rest_framework.renderers import JSONRenderer

    from planner.api.serializers import PortSliceSerializer
    from planner.api.views import PortSliceViewSet

    queryset = PortSliceViewSet.queryset.filter(ip__pool__datacenter=dc)
    return JSONRenderer().render(PortSliceSerializer(queryset, many=True).data)


def bench_steering() -> dict[str, float]:
    from planner.models import PortSlice

    start = time.perf_counter()
    dc = build_steering_datacenter()
    print(
        f"  set-up: {PortSlice.objects.count():,} slices planned and stored "
        f"in {time.perf_counter() - start:.1f} s"
    )
    json_s, json_body = best_of(3, lambda: steering_json(dc))
    nft_s, nft_body = best_of(3, lambda: steering_nft(dc))
    naive_s, naive_body = best_of(1, lambda: steering_naive(dc))
    print(f"  steering JSON: {json_s:.3f} s, {len(json_body) / 1e6:.1f} MB")
    print(f"  steering nft:  {nft_s:.3f} s, {len(nft_body) / 1e6:.1f} MB")
    print(f"  baseline DRF serializer: {naive_s:.3f} s, {len(naive_body) / 1e6:.1f} MB")
    print(
        f"  ratio JSON / baseline: {json_s / naive_s:.2f}x; target <= {STEERING_BUDGET_S} s: "
        f"{'met' if max(json_s, nft_s) <= STEERING_BUDGET_S else 'MISSED'}"
    )
    return {"json_s": json_s, "nft_s": nft_s, "naive_s": naive_s}


def build_bundle_machines(count: int, slices_each: int) -> list[Any]:
    from planner.models import Datacenter, EgressIP, EgressPool, Machine, PortSlice

    dc = Datacenter.objects.create(code="sig1", name="Signing", country="DE")
    pool = EgressPool.objects.create(datacenter=dc, purpose="warp", country="DE", slice_size=64)
    ips = EgressIP.objects.bulk_create(
        EgressIP(address=f"198.18.{n // 256}.{n % 256}", pool=pool) for n in range(slices_each)
    )
    machines = Machine.objects.bulk_create(
        Machine(hostname=f"s{n:04d}.sig1.example.net", datacenter=dc, address="172.17.0.2")
        for n in range(count)
    )
    # Machine n owns ports 1024 + 64n .. on each of the 50 IPs: 50 slices each.
    PortSlice.objects.bulk_create(
        PortSlice(ip=ip, machine=m, lo=1024 + 64 * n, hi=1024 + 64 * n + 63)
        for n, m in enumerate(machines)
        for ip in ips
    )
    return machines


def bench_bundles() -> dict[str, float]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from planner.services.bundles import bundles_build
    from planner.services.keys import signing_key_generate

    signing_key_generate()
    machines = build_bundle_machines(count=500, slices_each=50)
    build_s, bundles = best_of(3, lambda: bundles_build(machines=machines, now=NOW))
    payload = bundles[0].token.split(".")[1].encode()
    raw_key = Ed25519PrivateKey.generate()
    raw_s, _ = best_of(3, lambda: [raw_key.sign(payload) for _ in machines])
    rate, raw_rate = len(machines) / build_s, len(machines) / raw_s
    print(
        f"  bundles_build: {rate:,.0f} bundles/s ({len(bundles[0].token):,} bytes each, 50 slices)"
    )
    print(
        f"  baseline raw Ed25519 sign: {raw_rate:,.0f}/s; bundles_build costs "
        f"{raw_rate / rate:.1f}x the bare signature"
    )
    print(
        f"  target >= {BUNDLES_PER_S_TARGET}/s: "
        f"{'met' if rate >= BUNDLES_PER_S_TARGET else 'MISSED'}"
    )
    return {"bundles_per_s": rate, "raw_per_s": raw_rate}


def main() -> None:
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        print(
            f"portslice API benchmark on {connection.vendor}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs, {platform.machine()}"
        )
        print("steering export (one datacenter, 100,000 slices):")
        bench_steering()
        print("bundle signing (500 machines x 50 slices):")
        bench_bundles()
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
        for pem in Path(os.environ["SIGNING_KEY_DIR"]).glob("*.pem"):
            pem.unlink()


if __name__ == "__main__":
    main()
