"""Nothing grows without bound (issue 15, finding 11): reconcile's resends back off and
replace what a host's queue holds, so machines without agents keep a bounded backlog
in the quick start's filesystem broker; bundle messages expire; counters never fall."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from django.test import Client
from django.utils import timezone

import contract
from contract.broker import filesystem_options, filesystem_transport
from planner.models import ConfigBundle, Datacenter, Machine
from planner.selectors import RESEND_AFTER, RESEND_MAX, bundles_due, resend_delay
from planner.services.bundles import bundles_build, bundles_send
from planner.services.rebalance import datacenter_rebalance, rebalance_runs_expire
from planner.services.reports import bundle_ack
from planner.tasks import bundle_sender, record_ack
from tests.planner.conftest import Site

pytestmark = pytest.mark.django_db
HOURS = 48


@pytest.fixture
def broker(tmp_path: Path) -> tuple[Celery, Path]:
    """A real Celery app on the filesystem transport the quick start uses."""
    folder = tmp_path / "broker"
    folder.mkdir()
    options = filesystem_options(folder)
    Path(options["control_folder"]).mkdir()
    celery = Celery("backlog-test", broker="filesystem://", set_as_current=False)
    celery.conf.update(
        broker_transport=filesystem_transport(),
        broker_transport_options=options,
        task_serializer="json",
        accept_content=["json"],
    )
    return celery, folder


def _backlog(folder: Path) -> dict[str, int]:
    """Messages waiting per queue, as a consumer polling the folder would see them."""
    waiting: dict[str, int] = {}
    for path in folder.glob("*.msg"):
        queue = path.name.split(".", 1)[1].removesuffix(".msg")
        waiting[queue] = waiting.get(queue, 0) + 1
    return waiting


def test_the_resend_delay_doubles_and_is_capped() -> None:
    delays = [resend_delay(attempts=n) for n in range(1, 12)]
    assert delays[:4] == [RESEND_AFTER, RESEND_AFTER * 2, RESEND_AFTER * 4, RESEND_AFTER * 8]
    assert max(delays) == RESEND_MAX and delays == sorted(delays)


def test_agentless_machines_keep_a_bounded_backlog_over_simulated_hours(
    site: Site, broker: tuple[Celery, Path]
) -> None:
    celery, folder = broker
    start = timezone.now()
    hosts = {m.hostname for m in site.machines}
    assert bundles_send(
        bundles=bundles_due(now=start), send=bundle_sender(celery, replace=False), now=start
    ) == len(hosts)
    resend = bundle_sender(celery, replace=True)
    sends = 0
    for minute in range(1, HOURS * 60 + 1):  # planner.reconcile runs every minute
        now = start + timedelta(minutes=minute)
        sends += bundles_send(bundles=bundles_due(now=now), send=resend, now=now)
        backlog = _backlog(folder)
        assert set(backlog) == {contract.agent_queue(h) for h in hosts}
        assert max(backlog.values()) == 1, (minute, backlog)  # one waiting message a host
    # Doubling to the cap, then once per RESEND_MAX: about 53 sends a host in 48 h,
    # not the 2,880 one a minute made.
    doublings = len({resend_delay(attempts=n) for n in range(1, 40)}) - 1
    most = len(hosts) * (doublings + 1 + HOURS * timedelta(hours=1) // RESEND_MAX + 1)
    assert 0 < sends <= most
    assert set(ConfigBundle.objects.values_list("status", flat=True)) == {"sent"}
    message = json.loads(next(folder.glob("*.msg")).read_text())
    assert message["headers"]["task"] == contract.APPLY_TASK
    assert message["headers"]["expires"]  # a consumer drops it once the token is void


def test_a_new_bundle_is_sent_at_once_whatever_the_old_ones_backoff(site: Site) -> None:
    start = timezone.now()
    sent: list[str] = []
    for minute in range(0, 600, 1):
        now = start + timedelta(minutes=minute)
        bundles_send(bundles=bundles_due(now=now), send=lambda h, t: sent.append(h), now=now)
    machine = site.machines[0]
    later = start + timedelta(minutes=601)
    (fresh,) = bundles_build(machines=[machine])
    assert fresh.pk in {b.pk for b in bundles_due(now=later)}
    assert bundles_send(bundles=bundles_due(now=later), send=lambda h, t: None, now=later) >= 1
    assert ConfigBundle.objects.get(pk=fresh.pk).attempts == 1


def test_machines_whose_agent_never_reported_are_marked_in_metrics(
    site: Site, client: Client
) -> None:
    never = re.compile(r'portslice_machines_never_seen\{datacenter="fra1"\} (\S+)')
    match = never.search(client.get("/metrics").content.decode())
    assert match is None or float(match.group(1)) == 0  # nothing sent yet: not marked
    bundles_send(bundles=bundles_due(), send=lambda h, t: None)
    match = never.search(client.get("/metrics").content.decode())
    assert match is not None and float(match.group(1)) == 3
    first = Machine.objects.get(pk=site.machines[0].pk)
    bundle_ack(hostname=first.hostname, serial=first.bundle_serial, status="applied")
    match = never.search(client.get("/metrics").content.decode())
    assert match is not None and float(match.group(1)) == 2


def _counters(body: str) -> dict[str, float]:
    """Every sample of every metric Prometheus treats as a counter (``*_total``)."""
    samples = re.findall(r"^(\w+_total(?:\{[^}]*\})?) (\S+)$", body, re.MULTILINE)
    return {name: float(value) for name, value in samples}


def test_no_counter_falls_when_history_expires(site: Site, client: Client) -> None:
    now = timezone.now()
    datacenter_rebalance(datacenter=Datacenter.objects.get(code="fra1"), now=now)
    record_ack(hostname="ghost.example.net", serial=0, status="applied")
    before = _counters(client.get("/metrics").content.decode())
    assert before  # the refused ack is counted
    rebalance_runs_expire(now=now + timedelta(days=400))
    after = _counters(client.get("/metrics").content.decode())
    assert all(after.get(name, 0) >= value for name, value in before.items()), (before, after)
