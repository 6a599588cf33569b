"""The planner's Celery worker, for real: Redis broker, PostgreSQL, a worker process.

The test publishes a revision by task name; the worker puts each machine's
signed bundle on ``agent.<hostname>``; the test, standing in for the agent,
takes it off that queue and answers with ``planner.record_ack`` and
``planner.record_usage`` exactly as agent/worker.py sends them; the worker
records both in the database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from django.db import connection
from kombu import Connection

import contract
from planner.models import ConfigBundle, Machine, PortSlice, SliceUsage
from planner.services.keys import signing_key_generate
from planner.services.plans import plan_apply_current
from tests.planner.factories import make_datacenter, make_ip, make_machine, make_pool
from tests.support import need_redis

ROOT = Path(__file__).resolve().parents[2]
BROKER = "redis://127.0.0.1:6379/12"
HOST = "w0.example.net"

pytestmark = pytest.mark.django_db(transaction=True)


def _wait(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def broker() -> Iterator[Connection]:
    need_redis()
    database = redis.Redis.from_url(BROKER)
    database.flushdb()
    with Connection(BROKER) as conn:
        yield conn
    database.flushdb()


@pytest.fixture
def planner_worker(
    postgres: None, broker: Connection, tmp_path: Path, settings: Any
) -> Iterator[None]:
    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": "postgres://{USER}@{HOST}:{PORT}/{NAME}".format(**connection.settings_dict),
        "CELERY_BROKER_URL": BROKER,
        "SIGNING_KEY_DIR": str(settings.SIGNING_KEY_DIR),
        "DJANGO_SETTINGS_MODULE": "planner.settings",
    }
    with log.open("w") as out:
        worker = subprocess.Popen(
            [
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
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait("the worker", lambda: "ready." in log.read_text() or worker.poll() is not None)
        assert worker.poll() is None, log.read_text()
        yield
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def test_bundles_go_out_and_acks_and_usage_come_back(
    planner_worker: None,
    broker: Connection,
    tmp_path: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Celery lets CELERY_BROKER_URL override any app's broker; tests/environment.py
    # sets it to memory:// for the Django code under test, not for this sender.
    monkeypatch.delenv("CELERY_BROKER_URL")
    dc = make_datacenter(code="wrk1")
    pool = make_pool(datacenter=dc)
    make_ip("198.51.100.9", pool=pool)
    make_machine(HOST, datacenter=dc).pools.add(pool)
    signing_key_generate()
    revision = plan_apply_current(datacenter=dc, reason="first plan")
    bundle = ConfigBundle.objects.get()

    sender = Celery(broker=BROKER)
    sender.conf.task_serializer = "json"
    sender.send_task("planner.publish_revision", args=[revision.pk], queue="planner")

    agent_queue = broker.SimpleQueue(f"agent.{HOST}")
    message = agent_queue.get(timeout=30)
    assert message.headers["task"] == "agent.apply_bundle"
    assert message.decode()[0] == [bundle.token]  # (args, kwargs, embed)
    message.ack()
    agent_queue.close()
    _wait("status sent", lambda: ConfigBundle.objects.get().status == "sent")

    # Within the contract's window of the planner's clock, as a live agent's report is.
    at = datetime.now(UTC).replace(microsecond=0)
    sender.send_task(
        contract.ACK_TASK,
        queue=contract.PLANNER_QUEUE,
        kwargs=contract.ack_message(
            hostname=HOST,
            serial=bundle.serial,
            status="applied",
            applied_serial=bundle.serial,
            revision=1,
            applied_at=at.isoformat(),
            enforcement={"serial": bundle.serial},
        ),
    )
    _wait("the ack", lambda: Machine.objects.get().applied_serial == bundle.serial)
    assert ConfigBundle.objects.get().status == "applied"

    own = PortSlice.objects.get()
    sender.send_task(
        contract.USAGE_TASK,
        queue=contract.PLANNER_QUEUE,
        kwargs=contract.usage_message(
            hostname=HOST,
            serial=bundle.serial,
            at=at.timestamp(),
            slices=[
                {
                    "ip": own.ip.address,
                    "lo": own.lo,
                    "hi": own.hi,
                    "tcp": 12,
                    "udp": 3,
                    "buckets": {str(own.lo): 15},
                }
            ],
        ),
    )
    usage = _wait("the usage", lambda: SliceUsage.objects.filter(slice=own).first())
    assert (usage.tcp, usage.udp) == (12, 3)
