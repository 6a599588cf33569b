"""Writes through the admin: inventory only, and only through the services;
everything the planner and the agents write is read-only there."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db.models import Model
from django.test import Client

from planner import constants
from planner.choices import KeyStatus, TokenKind
from planner.models import (
    ApiToken,
    AuditEntry,
    ConfigBundle,
    Datacenter,
    EgressPool,
    Machine,
    PlanRevision,
    PortSlice,
    SigningKey,
)
from planner.services import inventory
from planner.services.keys import signing_key_rotate
from planner.services.tokens import api_token_create
from tests.planner.conftest import Site
from tests.planner.factories import make_datacenter, make_machine, make_pool

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(site: Site) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("alice", password="x-Secret-1"))
    return client


def _url(obj: Model, view: str = "change") -> str:
    return f"/admin/planner/{obj._meta.model_name}/{obj.pk}/{view}/"


def _machine_form(machine: Machine, **changes: Any) -> dict[str, Any]:
    data = {
        "hostname": machine.hostname,
        "datacenter": machine.datacenter_id,
        "address": machine.address,
        "state": machine.state,
        "weight": machine.weight,
        "pools": [pool.pk for pool in machine.pools.all()],
        "_save": "Save",
    }
    return {**data, **changes}


def test_it_audits_an_inventory_edit_made_in_the_admin(alice: Client, site: Site) -> None:
    dc = site.datacenter
    form = {"code": "fra1", "name": "Frankfurt 1", "country": "DE", "region": "", "city": ""}
    response = alice.post(_url(dc), {**form, "_save": "Save"})
    assert response.status_code == 302
    assert Datacenter.objects.get(pk=dc.pk).name == "Frankfurt 1"
    entry = AuditEntry.objects.filter(model="planner.Datacenter", action="update").latest("at")
    assert entry.actor == "alice" and entry.changes["name"][1] == "Frankfurt 1"


def test_it_runs_the_services_checks_and_shows_their_refusal(alice: Client, site: Site) -> None:
    # The admin's form cannot know a pool of another datacenter is refused:
    # machine_save does. Its message comes back on the form; nothing is saved.
    other = make_pool(datacenter=make_datacenter(code="lhr1", country="GB"), country="GB")
    machine = site.machines[0]
    before = sorted(machine.pools.values_list("pk", flat=True))
    data = _machine_form(machine, weight=5, pools=[*before, other.pk])
    response = alice.post(_url(machine), data)
    assert response.status_code == 200  # the form again, with the error
    expected = constants.ERR_POOL_DATACENTER % {"pool": other.pk, "pool_dc": "lhr1", "dc": "fra1"}
    assert expected in response.content.decode()
    machine.refresh_from_db()
    assert machine.weight == 1 and sorted(machine.pools.values_list("pk", flat=True)) == before
    assert not AuditEntry.objects.filter(model="planner.Machine", actor="alice").exists()


def test_it_revalidates_model_rules_through_the_service(
    alice: Client, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    real = inventory.model_save

    def spy(*, instance: Model, values: dict[str, Any]) -> Model:
        calls.append(values)
        return real(instance=instance, values=values)

    monkeypatch.setattr(inventory, "model_save", spy)
    pool = EgressPool.objects.get()
    data = {
        "datacenter": pool.datacenter_id,
        "purpose": "warp",
        "country": "DE",
        "region": "",
        "city": "",
        "slice_size": 8192,
        "slices_per_machine": 1,
        "max_slices_per_machine": 3,
        "_save": "Save",
    }
    assert alice.post(_url(pool), data).status_code == 302
    assert calls and calls[-1]["max_slices_per_machine"] == 3
    assert EgressPool.objects.get().max_slices_per_machine == 3


def test_it_deletes_a_machine_through_the_service(
    alice: Client, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    deleted: list[Any] = []
    real = inventory.inventory_delete

    def spy(*, instance: Model) -> None:
        deleted.append(instance.pk)
        real(instance=instance)

    monkeypatch.setattr(inventory, "inventory_delete", spy)
    spare = make_machine("spare.fra1.example.net", datacenter=site.datacenter)
    response = alice.post(_url(spare, "delete"), {"post": "yes"})
    assert response.status_code == 302
    assert deleted == [spare.pk]
    assert not Machine.objects.filter(hostname="spare.fra1.example.net").exists()
    entry = AuditEntry.objects.get(model="planner.Machine", action="delete")
    assert entry.actor == "alice" and entry.object_repr == "spare.fra1.example.net"


def test_the_delete_selected_action_goes_through_the_service_too(
    alice: Client, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    deleted: list[str] = []
    real = inventory.inventory_delete

    def spy(*, instance: Machine) -> None:
        deleted.append(instance.hostname)
        real(instance=instance)

    monkeypatch.setattr(inventory, "inventory_delete", spy)
    spares = [make_machine(f"s{n}.fra1.example.net", datacenter=site.datacenter) for n in range(2)]
    data = {"action": "delete_selected", "_selected_action": [m.pk for m in spares], "post": "yes"}
    assert alice.post("/admin/planner/machine/", data).status_code == 302
    assert sorted(deleted) == ["s0.fra1.example.net", "s1.fra1.example.net"]


def test_a_machine_with_slices_is_not_deleted(alice: Client, site: Site) -> None:
    machine = site.machines[0]
    alice.post(_url(machine, "delete"), {"post": "yes"})
    assert Machine.objects.filter(pk=machine.pk).exists()


def _read_only_rows(site: Site) -> list[Model | None]:
    models: list[type[Model]] = [PortSlice, PlanRevision, ConfigBundle, SigningKey, AuditEntry]
    return [model._default_manager.first() for model in models]


def test_slices_revisions_bundles_and_keys_cannot_be_changed(alice: Client, site: Site) -> None:
    for row in _read_only_rows(site):
        assert row is not None
        before = {f.attname: getattr(row, f.attname) for f in row._meta.concrete_fields}
        page = alice.get(_url(row))
        assert page.status_code == 200 and b'name="_save"' not in page.content, row
        assert alice.post(_url(row), {"lo": 1024, "status": "x"}).status_code == 403, row
        assert alice.post(_url(row, "delete"), {"post": "yes"}).status_code == 403, row
        name = row._meta.model_name
        assert alice.get(f"/admin/planner/{name}/add/").status_code == 403, row
        row.refresh_from_db()
        after = {f.attname: getattr(row, f.attname) for f in row._meta.concrete_fields}
        assert after == before


def test_moving_a_slice_to_another_machine_is_refused(alice: Client, site: Site) -> None:
    slice_ = PortSlice.objects.filter(machine=site.machines[0]).first()
    assert slice_ is not None
    data = {"ip": slice_.ip_id, "machine": site.machines[1].pk, "lo": slice_.lo, "hi": slice_.hi}
    assert alice.post(_url(slice_), {**data, "state": "active"}).status_code == 403
    slice_.refresh_from_db()
    assert slice_.machine_id == site.machines[0].pk


def test_usage_has_no_add_change_or_delete() -> None:
    from django.contrib import admin

    from planner.models import SliceUsage, UsageSample

    for model in (SliceUsage, UsageSample, PortSlice, PlanRevision, ConfigBundle, SigningKey):
        model_admin = admin.site._registry[model]
        request: Any = type("R", (), {"user": User(is_superuser=True)})()
        assert not model_admin.has_add_permission(request)
        assert not model_admin.has_change_permission(request)
        assert not model_admin.has_delete_permission(request)


def test_the_retire_action_retires_a_published_key_and_refuses_the_active(
    alice: Client, site: Site
) -> None:
    old = SigningKey.objects.get()
    new = signing_key_rotate()
    data = {"action": "retire", "_selected_action": [old.pk, new.pk]}
    response = alice.post("/admin/planner/signingkey/", data, follow=True)
    old.refresh_from_db()
    new.refresh_from_db()
    assert old.status == KeyStatus.RETIRED and new.status == KeyStatus.ACTIVE
    text = response.content.decode()
    assert "is the active key" in text and "Keys retired: 1." in text


def test_the_revoke_action_revokes_tokens(alice: Client, site: Site) -> None:
    token, _ = api_token_create(name="lb", kind=TokenKind.LOAD_BALANCER)
    data = {"action": "revoke", "_selected_action": [token.pk]}
    response = alice.post("/admin/planner/apitoken/", data, follow=True)
    assert "Tokens revoked: 1." in response.content.decode()
    assert ApiToken.objects.get(pk=token.pk).revoked


def test_a_viewer_cannot_run_the_actions(site: Site) -> None:
    viewer = User.objects.create_user("vic", password="x-Secret-1", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_apitoken"))
    client = Client()
    client.force_login(viewer)
    token, _ = api_token_create(name="lb", kind=TokenKind.LOAD_BALANCER)
    client.post("/admin/planner/apitoken/", {"action": "revoke", "_selected_action": [token.pk]})
    assert not ApiToken.objects.get(pk=token.pk).revoked


def test_an_admin_edit_that_displaces_a_live_slice_is_refused_naming_it(
    alice: Client, site: Site
) -> None:
    # The same live-slice check the API makes (inventory services): reserving a
    # port inside a live slice is refused, the slice named, nothing written.
    slice_ = PortSlice.objects.filter(ip__address="192.0.2.1").order_by("lo").first()
    assert slice_ is not None
    ip = slice_.ip
    data = {
        "address": ip.address,
        "pool": ip.pool_id,
        "usable_lo": ip.usable_lo,
        "usable_hi": ip.usable_hi,
        "reserved_ports": f"[{slice_.lo}]",
        "state": ip.state,
        "_save": "Save",
    }
    response = alice.post(_url(ip), data)
    assert response.status_code == 200
    text = response.content.decode()
    assert "would leave 1 live slice(s)" in text
    assert f"192.0.2.1:{slice_.lo}-{slice_.hi} ({slice_.machine.hostname})" in text
    ip.refresh_from_db()
    assert ip.reserved_ports == []
    assert not AuditEntry.objects.filter(model="planner.EgressIP", actor="alice").exists()
