"""What the planner publishes for gateways, and what it records when they ack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

import contract
from agent.bundle import BundleRejected, load_keys
from agent.gateway import table_from_token
from planner.models import Gateway
from planner.services.plans import plan_apply_current
from planner.services.steering import (
    gateway_ack,
    gateway_register,
    steering_publish,
    steering_token,
)
from planner.tasks import record_gateway_ack
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
