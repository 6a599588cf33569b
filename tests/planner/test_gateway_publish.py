"""What the planner publishes for gateways, and what it records when they ack."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery.exceptions import Retry
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

import contract
from agent.bundle import BundleRejected, load_keys
from agent.gateway import table_from_token
from planner.celery import app
from planner.models import AuditEntry, Gateway, ReportRejection
from planner.services.locks import steering_publish_lock
from planner.services.plans import plan_apply_current
from planner.services.steering import (
    gateway_ack,
    gateway_register,
    steering_publish,
    steering_token,
)
from planner.tasks import publish_steering, record_gateway_ack
from tests.planner.conftest import Site

pytestmark = pytest.mark.django_db


def _keys(clients: dict[str, APIClient], tmp_path: Path) -> dict:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(clients["agent"].get("/api/v1/keys").json()))
    return load_keys(path)


def test_the_pushed_table_is_the_apis_and_verifies_at_the_gateway(
    clients: dict[str, APIClient], site: Site, tmp_path: Path
) -> None:
    sent: list[tuple[str, str]] = []
    assert steering_publish(datacenter=site.datacenter, send=lambda *a: sent.append(a))
    [(code, token)] = sent
    table = table_from_token(token, keys=_keys(clients, tmp_path), datacenter="fra1")
    api = clients["lb"].get("/api/v1/datacenters/fra1/steering")
    assert code == "fra1" and table.document == api.json() and table.etag == api["ETag"]
    assert table.revision == 1


def test_the_gateway_refuses_a_table_for_another_datacenter(
    clients: dict[str, APIClient], site: Site, tmp_path: Path
) -> None:
    token = steering_token(datacenter=site.datacenter)
    assert token is not None
    with pytest.raises(BundleRejected) as caught:
        table_from_token(token, keys=_keys(clients, tmp_path), datacenter="ams1")
    assert "sub='fra1'" in caught.value.detail


def _gateway_ack(revision: int, etag: str, **extra: Any) -> contract.GatewayAck:
    message = contract.gateway_ack_message(
        name="gw1", datacenter="fra1", revision=revision, etag=etag, status="applied", **extra
    )
    return contract.validate_gateway_ack(message)


def test_acks_record_which_gateway_runs_which_revision(
    clients: dict[str, APIClient], site: Site
) -> None:
    for number in (2, 3):  # the site's plan is r1: acks may name up to r3
        plan_apply_current(datacenter=site.datacenter, reason=f"r{number}")
    gateway_register(name="gw1", datacenter=site.datacenter)
    assert record_gateway_ack(**contract.gateway_ack_message(
        name="gw1", datacenter="fra1", revision=3, etag='"e3"', status="applied", slices=6
    ))  # fmt: skip
    gateway_ack(ack=_gateway_ack(2, '"e2"'))
    stored = Gateway.objects.get(name="gw1")
    assert (stored.revision, stored.etag, stored.slices) == (3, '"e3"', 6)  # late ack ignored
    assert stored.last_seen is not None and stored.applied_at is not None
    applied_at = stored.applied_at
    gateway_ack(ack=_gateway_ack(3, '"e3"'))
    heartbeat = Gateway.objects.get(name="gw1")
    assert heartbeat.applied_at == applied_at
    assert heartbeat.last_seen and stored.last_seen and heartbeat.last_seen > stored.last_seen
    listed = clients["vera"].get("/api/v1/gateways").json()
    assert [(g["name"], g["datacenter"], g["revision"]) for g in listed] == [("gw1", "fra1", 3)]


def test_an_admin_registers_a_gateway_through_the_api_and_others_may_not(
    clients: dict[str, APIClient], site: Site
) -> None:
    body = {"name": "gw-fra1", "datacenter": "fra1"}
    assert clients["bob"].post("/api/v1/gateways", body, format="json").status_code == 403
    assert not Gateway.objects.exists()
    made = clients["alice"].post("/api/v1/gateways", body, format="json")
    assert made.status_code == 201 and made.json()["datacenter"] == "fra1"
    again = clients["alice"].post("/api/v1/gateways", body, format="json")
    assert again.status_code == 400 and "name" in again.json()
    bad = clients["alice"].post(
        "/api/v1/gateways", {"name": "gw fra1\x00", "datacenter": "fra1"}, format="json"
    )
    assert bad.status_code == 400 and "name" in bad.json()
    assert AuditEntry.objects.filter(model="planner.Gateway", action="create").count() == 1
    assert record_gateway_ack(**_gateway_message("gw-fra1")) is True


def test_an_unregistered_gateway_is_refused_from_then_on(
    clients: dict[str, APIClient], site: Site
) -> None:
    gateway_register(name="gw-fra1", datacenter=site.datacenter)
    assert clients["vera"].delete("/api/v1/gateways/gw-fra1").status_code == 403
    assert clients["alice"].delete("/api/v1/gateways/gw-fra1").status_code == 204
    assert record_gateway_ack(**_gateway_message("gw-fra1")) is False
    assert not Gateway.objects.exists()
    assert ReportRejection.objects.get(kind="gateway_ack", field="name").count == 1


def test_the_admin_and_the_command_register_gateways(site: Site, client: Client) -> None:
    client.force_login(User.objects.create_superuser("root", password="unused-Pa55"))
    added = client.post(
        "/admin/planner/gateway/add/", {"name": "gw-admin", "datacenter": site.datacenter.pk}
    )
    assert added.status_code == 302, added.content.decode()[:2000]
    refused = client.post(
        "/admin/planner/gateway/add/", {"name": "-bad name", "datacenter": site.datacenter.pk}
    )
    assert refused.status_code == 200 and "not a gateway name" in refused.content.decode()
    out = StringIO()
    call_command("gateway", "register", "gw-cli", "--datacenter", "fra1", stdout=out)
    assert "registered gateway gw-cli in fra1" in out.getvalue()
    with pytest.raises(CommandError, match="already exists"):
        call_command("gateway", "register", "gw-cli", "--datacenter", "fra1")
    assert sorted(Gateway.objects.values_list("name", flat=True)) == ["gw-admin", "gw-cli"]


def _gateway_message(name: str) -> dict[str, Any]:
    return contract.gateway_ack_message(
        name=name, datacenter="fra1", revision=1, etag='"e1"', status="applied"
    )


def _gateway_messages(datacenter: str) -> list[Any]:
    """What the in-process broker (tests/environment.py: memory://) holds for the gateway."""
    queue = app.connection_for_read().SimpleQueue(contract.gateway_queue(datacenter))
    found = []
    try:
        while True:
            message = queue.get(block=False)
            found.append(message.decode())
            message.ack()
    except queue.Empty:
        return found
    finally:
        queue.close()


def test_the_steering_table_is_sent_for_the_newest_revision_only(
    clients: dict[str, APIClient], site: Site, tmp_path: Path
) -> None:
    """A burst of plans sends one table per revision still newest when its task runs."""
    _gateway_messages("fra1")
    older = plan_apply_current(datacenter=site.datacenter, reason="r2")
    newest = plan_apply_current(datacenter=site.datacenter, reason="r3")
    assert publish_steering(site.datacenter.pk, older.number) is False
    assert _gateway_messages("fra1") == []
    assert publish_steering(site.datacenter.pk, newest.number) is True
    [((token,), _, _)] = _gateway_messages("fra1")
    table = table_from_token(token, keys=_keys(clients, tmp_path), datacenter="fra1")
    assert table.revision == newest.number


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the lock is PostgreSQL's")
def test_a_steering_table_waits_while_another_process_publishes_one(site: Site) -> None:
    _gateway_messages("fra1")
    other = psycopg.connect(
        "postgresql://{USER}@{HOST}:{PORT}/{NAME}".format(**connection.settings_dict),
        autocommit=True,
    )
    try:
        with steering_publish_lock(site.datacenter.pk) as mine:
            assert mine  # free: this connection takes it
        other.execute("SELECT pg_advisory_lock(%s, %s)", [0x5354, site.datacenter.pk])
        with pytest.raises(Retry):
            publish_steering(site.datacenter.pk, 1)
        # A superseded revision does not wait for the lock at all.
        assert publish_steering(site.datacenter.pk, 0) is False
        assert _gateway_messages("fra1") == []
    finally:
        other.close()  # its lock goes with its session
    assert publish_steering(site.datacenter.pk, 1) is True
