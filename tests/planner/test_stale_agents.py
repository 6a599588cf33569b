"""Stale agents: silent for AGENT_STALE_MINUTES after reporting once. Marked by the
beat job, shown in the API and /metrics, cleared by the next ack or usage report."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

import contract
from planner.models import Machine
from planner.tasks import mark_stale, record_ack
from tests.planner.conftest import Site

pytestmark = pytest.mark.django_db


def _silent_for(machine: Machine, minutes: int) -> None:
    Machine.objects.filter(pk=machine.pk).update(
        last_seen=timezone.now() - timedelta(minutes=minutes)
    )


def test_a_silent_agent_is_marked_stale_and_shown(
    clients: dict[str, APIClient], site: Site, settings: Any, client: Any
) -> None:
    settings.AGENT_STALE_MINUTES = 10
    quiet, fresh, never = site.machines
    _silent_for(quiet, 11)
    _silent_for(fresh, 2)
    assert mark_stale() == 1
    assert mark_stale() == 0  # marked once
    stale = clients["vera"].get("/api/v1/machines?stale=true").json()["results"]
    assert [m["hostname"] for m in stale] == [quiet.hostname]
    assert stale[0]["stale"] is True and stale[0]["stale_since"] is not None
    others = clients["vera"].get("/api/v1/machines?stale=false").json()["results"]
    assert {m["hostname"] for m in others} == {fresh.hostname, never.hostname}
    body = client.get("/metrics").content.decode()
    assert 'portslice_machines_stale{datacenter="fra1"} 1.0' in body


def test_an_ack_clears_the_mark(site: Site, settings: Any) -> None:
    quiet = site.machines[0]
    _silent_for(quiet, 60)
    mark_stale()
    record_ack(**contract.ack_message(hostname=quiet.hostname, serial=None, status="rejected"))
    quiet.refresh_from_db()
    assert quiet.stale_since is None
