"""Finding 12 of issue 15 (its admin part): the admin writes a rebalance policy
through its service, audited and checked whole; role changes are audited, by name,
whichever side of the membership is edited; a password never enters the trail."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from planner.models import AuditEntry, RebalancePolicy
from planner.services.rebalance import rebalance_policy_ensure
from tests.planner.conftest import Site

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(site: Site) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("alice", password="x-Secret-1"))
    return client


def _policy_form(policy: RebalancePolicy, **changes: Any) -> dict[str, Any]:
    data = {
        "datacenter": policy.datacenter_id,
        "enabled": "on" if policy.enabled else "",
        "auto_apply": "on" if policy.auto_apply else "",
        "hot": policy.hot,
        "cold": policy.cold,
        "window_minutes": policy.window_minutes,
        "interval_minutes": policy.interval_minutes,
        "_save": "Save",
    }
    return {k: v for k, v in {**data, **changes}.items() if v != ""}


def test_a_policy_edited_in_the_admin_is_saved_by_its_service_and_audited(
    alice: Client, site: Site
) -> None:
    policy = rebalance_policy_ensure(datacenter=site.datacenter)
    url = f"/admin/planner/rebalancepolicy/{policy.pk}/change/"
    response = alice.post(url, _policy_form(policy, hot="0.9"))
    assert response.status_code == 302, response.content.decode()[:2000]
    policy.refresh_from_db()
    assert policy.hot == 0.9
    entry = AuditEntry.objects.filter(model="planner.RebalancePolicy", action="update").last()
    assert entry is not None and entry.actor == "alice"
    assert entry.changes["hot"][1] == 0.9


def test_a_policy_the_service_refuses_is_not_saved_from_the_admin(
    alice: Client, site: Site
) -> None:
    policy = rebalance_policy_ensure(datacenter=site.datacenter)
    before = AuditEntry.objects.count()
    response = alice.post(
        f"/admin/planner/rebalancepolicy/{policy.pk}/change/",
        _policy_form(policy, hot="0.1", cold="0.5"),  # cold must be below hot
    )
    assert response.status_code == 200 and "must be below hot" in response.content.decode()
    policy.refresh_from_db()
    assert (policy.hot, policy.cold) != (0.1, 0.5)
    assert AuditEntry.objects.count() == before


def test_a_policy_cannot_be_deleted_in_the_admin(alice: Client, site: Site) -> None:
    policy = rebalance_policy_ensure(datacenter=site.datacenter)
    response = alice.post(f"/admin/planner/rebalancepolicy/{policy.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert RebalancePolicy.objects.filter(pk=policy.pk).exists()


def test_role_changes_are_audited_by_name_from_either_side(alice: Client, site: Site) -> None:
    bob = User.objects.create_user("bob", password="x-Secret-2")
    operator, _ = Group.objects.get_or_create(name="operator")
    viewer, _ = Group.objects.get_or_create(name="viewer")
    bob.groups.add(operator)
    viewer.user_set.add(bob)
    bob.groups.remove(operator)
    bob.groups.clear()
    changes = [
        e.changes["groups"]
        for e in AuditEntry.objects.filter(model="auth.User", object_pk=str(bob.pk)).order_by("id")
        if "groups" in e.changes
    ]
    assert changes == [
        {"add": ["operator"]},
        {"add": ["viewer"]},
        {"remove": ["operator"]},
        {"remove": ["viewer"]},
    ]


def test_making_someone_an_admin_is_audited_without_their_password(
    alice: Client, site: Site
) -> None:
    bob = User.objects.create_user("bob", password="x-Secret-2")
    bob.is_superuser = True
    bob.set_password("another-Secret-3")
    bob.save()
    entries = AuditEntry.objects.filter(model="auth.User", object_pk=str(bob.pk))
    assert entries.filter(action="update", changes__is_superuser=[False, True]).exists()
    assert not any("password" in e.changes for e in entries)


def test_the_admin_user_form_audits_the_role_given(alice: Client, site: Site) -> None:
    bob = User.objects.create_user("bob", password="x-Secret-2")
    operator, _ = Group.objects.get_or_create(name="operator")
    response = alice.post(
        f"/admin/auth/user/{bob.pk}/change/",
        {
            "username": "bob",
            "is_active": "on",
            "groups": [operator.pk],
            "date_joined_0": "2026-12-01",
            "date_joined_1": "00:00:00",
            "_save": "Save",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = AuditEntry.objects.filter(model="auth.User", changes__groups__add=["operator"]).get()
    assert entry.actor == "alice" and entry.object_repr == "bob"
