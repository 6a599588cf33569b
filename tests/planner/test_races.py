"""Plan applies racing inventory writes of the same datacenter, over HTTP on PostgreSQL.

Both take the datacenter's lock, so each pair is serialized: whichever comes
second either still fits (2xx) or is refused (409: a stale preview, slices in
the way). Never a 500, never an overlap, never a slice across datacenters.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction
from rest_framework.test import APIClient

from planner.models import EgressPool, Machine, PortSlice
from planner.services.locks import datacenter_lock
from tests.planner.conftest import Site
from tests.planner.factories import make_ip, make_machine

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 24


def _apply(client: APIClient) -> int:
    preview = client.post("/api/v1/datacenters/fra1/plan/preview")
    if preview.status_code != 200:
        return int(preview.status_code)
    digest = preview.json()["inputs_digest"]
    response = client.post(
        "/api/v1/datacenters/fra1/plan/apply", {"inputs_digest": digest}, format="json"
    )
    return int(response.status_code)


def _race(*calls: Callable[[], int]) -> list[int]:
    barrier = threading.Barrier(len(calls))
    codes: list[int] = []

    def run(call: Callable[[], int]) -> None:
        try:
            barrier.wait()
            codes.append(call())
        except Exception:  # the test client re-raises what the server did not handle
            codes.append(500)
            raise
        finally:
            connection.close()  # each thread has its own connection

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return codes


def _grow(site: Site, pool: EgressPool) -> None:
    """Enough machines that planning takes a while: a wide window for a race to hit."""
    pool.slice_size = 512
    pool.save()
    for n in range(4):
        make_ip(f"203.0.113.{n + 1}", pool=pool)
    for n in range(300):
        make_machine(f"bulk{n}.fra1.example.net", datacenter=site.datacenter).pools.add(pool)


def _write(n: int, ip: str, machine: str, pool: int) -> tuple[str, str, dict[str, Any] | None]:
    """Round ``n``'s inventory write: remove an IP or a machine, or change what fits."""
    return [
        ("delete", f"/api/v1/ips/{ip}", None),
        ("delete", f"/api/v1/machines/{machine}", None),
        ("patch", f"/api/v1/ips/{ip}", {"usable_lo": 40000}),
        ("patch", f"/api/v1/pools/{pool}", {"slices_per_machine": 1 + n % 2}),
    ][n % 4]


def _send(client: APIClient, method: str, url: str, body: dict[str, Any] | None) -> int:
    return int(getattr(client, method)(url, body, format="json").status_code)


def _assert_consistent() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM planner_portslice a JOIN planner_portslice b "
            "ON a.ip_id = b.ip_id AND a.id < b.id AND a.lo <= b.hi AND b.lo <= a.hi"
        )
        assert cursor.fetchone() == (0,), "two live slices share a port"
    for ip_dc, machine_dc in PortSlice.objects.values_list(
        "ip__pool__datacenter_id", "machine__datacenter_id"
    ):
        assert ip_dc == machine_dc, "a slice joins an IP and a machine of two datacenters"


def test_applies_racing_inventory_writes_never_fail_with_a_500(
    postgres: None, clients: dict[str, APIClient], site: Site
) -> None:
    alice, bob = clients["alice"], clients["bob"]
    pool = EgressPool.objects.get()
    _grow(site, pool)
    _apply(alice)
    seen: Counter[int] = Counter()
    for n in range(ROUNDS):
        ip = make_ip(f"198.51.100.{n + 1}", pool=pool)
        machine = make_machine(f"race{n}.fra1.example.net", datacenter=site.datacenter)
        machine.pools.add(pool)
        write = partial(_send, bob, *_write(n, ip.address, machine.hostname, pool.pk))
        codes = _race(partial(_apply, alice), write)
        assert len(codes) == 2 and all(code < 500 for code in codes), codes
        seen.update(codes)
        _assert_consistent()
    # Both orders happened: some writes and applies won, some were refused.
    assert seen[201] and seen[409], seen


def test_scoped_joins_of_two_pools_racing_each_other_never_fail_with_a_500(
    postgres: None, clients: dict[str, APIClient], site: Site
) -> None:
    """Each join plans only the dirty pools, under the datacenter's lock and the pools'
    row locks: racing joins serialize, the later one is refused (409) or still fits,
    and a last plan serves everyone."""
    alice, bob = clients["alice"], clients["bob"]
    pools = [EgressPool.objects.get()]
    for n, purpose in enumerate(("cdn", "int")):
        pool = EgressPool.objects.create(datacenter=site.datacenter, purpose=purpose, country="DE")
        make_ip(f"203.0.113.{n + 1}", pool=pool)
        pools.append(pool)
    seen: Counter[int] = Counter()
    for n in range(ROUNDS // 2):
        for client, pool in ((alice, pools[1]), (bob, pools[2])):
            body = {"hostname": f"j{n}-{pool.purpose}.fra1.example.net", "datacenter": "fra1",
                    "address": f"10.7.{n}.{pool.pk % 250}", "pools": [pool.pk]}  # fmt: skip
            assert client.post("/api/v1/machines", body, format="json").status_code == 201
        codes = _race(partial(_apply, alice), partial(_apply, bob))
        assert len(codes) == 2 and all(code < 500 for code in codes), codes
        seen.update(codes)
        _assert_consistent()
    assert _apply(alice) == 201
    unserved = [
        m.hostname
        for m in Machine.objects.filter(hostname__startswith="j")
        if not m.slices.exists()
    ]
    assert not unserved, unserved
    assert seen[201], seen


def test_an_ack_committing_while_a_datacenter_locker_waits_for_its_machine_is_no_deadlock(
    postgres: None, site: Site
) -> None:
    """An ack updates its machine row more than once, so PostgreSQL checks the row's
    datacenter key (KEY SHARE) at commit. A locker of the datacenter (steering marks,
    a plan's bundles) that waits for that machine's row must not hold a lock the
    check conflicts with: with FOR UPDATE the two deadlocked (seen in bench_loop)."""
    machine = site.machines[0]
    dsn = "postgresql://{USER}@{HOST}:{PORT}/{NAME}".format(**connection.settings_dict)
    ack = psycopg.connect(dsn)  # the agent's ack, in a transaction of its own
    ack.execute("UPDATE planner_machine SET stale_since = NULL WHERE id = %s", [machine.pk])
    ack.execute("UPDATE planner_machine SET last_seen = now() WHERE id = %s", [machine.pk])
    committed: list[BaseException | None] = []

    def commit_once_the_locker_waits() -> None:
        with psycopg.connect(dsn, autocommit=True) as watcher:
            for _ in range(600):
                waiting = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s "
                    "AND wait_event_type = 'Lock'",
                    [locker_pid],
                ).fetchone()
                if waiting and waiting[0]:
                    break
                time.sleep(0.05)
        try:
            ack.commit()
            committed.append(None)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            committed.append(error)

    with transaction.atomic():
        locker_pid = connection.connection.info.backend_pid
        datacenter_lock(site.datacenter.pk, code="fra1")
        thread = threading.Thread(target=commit_once_the_locker_waits)
        thread.start()
        Machine.objects.filter(pk=machine.pk).update(steering_mark=12345)  # waits for the ack
        thread.join(timeout=60)
    ack.close()
    assert committed == [None]
    assert Machine.objects.get(pk=machine.pk).steering_mark == 12345
