"""Every create, update and delete leaves an audit entry naming who and what changed."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from planner.audit import acting_as
from planner.models import AuditEntry, Datacenter
from tests.planner.factories import make_datacenter, make_machine, make_pool

pytestmark = pytest.mark.django_db


def test_it_records_create_update_and_delete_with_the_changes() -> None:
    with acting_as("system:test"):
        dc = make_datacenter(code="ams1", country="NL")
        dc.city = "Amsterdam"
        dc.save()
        dc.delete()
    entries = list(AuditEntry.objects.filter(model="planner.Datacenter").order_by("id"))
    assert [e.action for e in entries] == ["create", "update", "delete"]
    assert {e.actor for e in entries} == {"system:test"}
    assert entries[0].changes["code"] == "ams1"
    assert entries[1].changes == {"city": ["", "Amsterdam"]}


def test_a_save_without_changes_records_nothing() -> None:
    dc = make_datacenter()
    before = AuditEntry.objects.count()
    dc.save()
    assert AuditEntry.objects.count() == before


def test_pool_membership_changes_are_recorded() -> None:
    machine = make_machine()
    pool = make_pool(datacenter=machine.datacenter)
    machine.pools.add(pool)
    entry = AuditEntry.objects.filter(model="planner.Machine", action="update").get()
    assert entry.changes == {"machine_pools": {"add": [pool.pk]}}


def test_changes_in_the_admin_are_attributed_to_the_user() -> None:
    alice = get_user_model().objects.create_superuser("alice", password="x-Secret-1")
    client = Client()
    client.force_login(alice)
    response = client.post(
        "/admin/planner/datacenter/add/",
        {"code": "waw1", "name": "Warsaw 1", "country": "PL", "region": "PL-14", "city": ""},
    )
    assert response.status_code == 302, response.content[:500]
    entry = AuditEntry.objects.get(
        model="planner.Datacenter", object_pk=str(Datacenter.objects.get(code="waw1").pk)
    )
    assert (entry.actor, entry.user, entry.action) == ("alice", alice, "create")


def test_the_admin_cannot_edit_the_trail() -> None:
    alice = get_user_model().objects.create_superuser("alice", password="x-Secret-1")
    client = Client()
    client.force_login(alice)
    make_datacenter()
    entry = AuditEntry.objects.first()
    assert entry is not None
    assert client.get(f"/admin/planner/auditentry/{entry.pk}/delete/").status_code == 403
    assert client.get("/admin/planner/auditentry/add/").status_code == 403
