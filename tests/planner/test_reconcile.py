"""The beat jobs: reconcile resends what agents have not applied; ended drains free ports."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from planner.models import ConfigBundle, Machine, PortSlice
from planner.selectors import bundles_due
from planner.services.bundles import bundles_build, bundles_send
from planner.services.keys import signing_key_rotate
from planner.services.plans import drains_expire, plan_apply_current
from tests.planner.conftest import Site

pytestmark = pytest.mark.django_db


def _outbox() -> tuple[list[tuple[str, str]], object]:
    sent: list[tuple[str, str]] = []
    return sent, lambda hostname, token: sent.append((hostname, token))


def test_pending_bundles_are_due_and_sent_once(site: Site) -> None:
    assert {b.machine.hostname for b in bundles_due()} == {m.hostname for m in site.machines}
    sent, send = _outbox()
    assert bundles_send(bundles=bundles_due(), send=send) == 3
    assert {b.status for b in ConfigBundle.objects.all()} == {"sent"}
    assert not bundles_due()  # sent a moment ago: not due yet
    later = timezone.now() + timedelta(minutes=5)
    assert len(bundles_due(now=later)) == 3  # never acked: sent again


def test_applied_rejected_and_superseded_bundles_are_not_resent(site: Site) -> None:
    first, second, third = site.machines
    ConfigBundle.objects.filter(machine=first).update(status="applied")
    ConfigBundle.objects.filter(machine=second).update(status="rejected")
    old = ConfigBundle.objects.get(machine=third)
    (new,) = bundles_build(machines=[third])
    assert [b.pk for b in bundles_due()] == [new.pk]
    assert ConfigBundle.objects.get(pk=old.pk).status == "superseded"


def test_a_rotation_reaches_the_agents_through_reconcile(site: Site) -> None:
    ConfigBundle.objects.update(status="applied")
    key = signing_key_rotate()
    bundles_build(machines=Machine.objects.all())
    sent, send = _outbox()
    bundles_send(bundles=bundles_due(), send=send)
    assert len(sent) == 3
    assert {ConfigBundle.objects.get(token=t).kid for _, t in sent} == {key.kid}


def test_ended_drains_are_freed_and_running_ones_kept(site: Site) -> None:
    now = timezone.now()
    Machine.objects.filter(pk=site.machines[0].pk).update(state="retired")
    plan_apply_current(datacenter=site.datacenter, reason="", now=now)
    assert PortSlice.objects.filter(state="draining").count() == 1
    assert drains_expire(now=now + timedelta(minutes=30)) == []
    (revision,) = drains_expire(now=now + timedelta(hours=2))
    assert revision.diff_summary["freed"] == 1
    assert not PortSlice.objects.filter(machine=site.machines[0]).exists()


def test_two_senders_holding_the_same_bundles_send_each_once(site: Site) -> None:
    first, second = list(bundles_due()), list(bundles_due())  # both read before either sends
    sent: list[str] = []
    assert bundles_send(bundles=first, send=lambda host, token: sent.append(host)) == 3
    assert bundles_send(bundles=second, send=lambda host, token: sent.append(host)) == 0
    assert sorted(sent) == sorted(m.hostname for m in site.machines)


def test_a_send_that_fails_leaves_the_bundle_due(site: Site) -> None:
    def broker_down(host: str, token: str) -> None:
        raise OSError("connection refused")

    with pytest.raises(OSError):
        bundles_send(bundles=bundles_due(), send=broker_down)
    assert bundles_due().count() == 3  # nothing marked sent
