"""Inventory CRUD through the API: success, field errors, 404, 409, 413."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from planner.models import AuditEntry, EgressIP, EgressPool, Machine, PortSlice
from tests.planner.conftest import Site

pytestmark = pytest.mark.django_db


def test_create_read_update_delete_a_datacenter(clients: dict[str, APIClient]) -> None:
    bob = clients["bob"]
    body = {"code": "ams1", "name": "Amsterdam 1", "country": "NL", "region": "NL-NH"}
    assert bob.post("/api/v1/datacenters", body, format="json").status_code == 201
    assert bob.get("/api/v1/datacenters/ams1").json()["region"] == "NL-NH"
    response = bob.patch("/api/v1/datacenters/ams1", {"city": "Amsterdam"}, format="json")
    assert response.status_code == 200 and response.json()["city"] == "Amsterdam"
    assert bob.delete("/api/v1/datacenters/ams1").status_code == 204
    assert bob.get("/api/v1/datacenters/ams1").status_code == 404
    actions = AuditEntry.objects.filter(model="planner.Datacenter", actor="bob")
    assert sorted(actions.values_list("action", flat=True)) == ["create", "delete", "update"]


def test_model_rules_come_back_as_field_errors(clients: dict[str, APIClient]) -> None:
    body = {"code": "ams1", "name": "A", "country": "NL", "region": "DE-HE"}
    response = clients["bob"].post("/api/v1/datacenters", body, format="json")
    assert response.status_code == 400
    assert "region" in response.json() and "DE-HE" in str(response.json()["region"])


def test_an_ip_with_reserved_ports_outside_its_range(clients: dict[str, APIClient]) -> None:
    pool = EgressPool.objects.get()
    body = {"address": "192.0.2.50", "pool": pool.pk, "usable_lo": 2048, "reserved_ports": [1500]}
    response = clients["bob"].post("/api/v1/ips", body, format="json")
    assert response.status_code == 400 and "reserved_ports" in response.json()
    assert not EgressIP.objects.filter(address="192.0.2.50").exists()


def test_ipv6_addresses_work_in_paths(clients: dict[str, APIClient]) -> None:
    response = clients["vera"].get("/api/v1/ips/2001:db8::1")
    assert response.status_code == 200 and response.json()["address"] == "2001:db8::1"


def test_a_machine_cannot_serve_another_datacenters_pool(
    clients: dict[str, APIClient], site: Site
) -> None:
    bob = clients["bob"]
    bob.post("/api/v1/datacenters", {"code": "lhr1", "name": "L", "country": "GB"}, format="json")
    pool = EgressPool.objects.get()
    body = {
        "hostname": "x.lhr1.example.net",
        "datacenter": "lhr1",
        "address": "10.8.0.2",
        "pools": [pool.pk],
    }
    response = bob.post("/api/v1/machines", body, format="json")
    assert response.status_code == 400 and "pools" in response.json()
    assert not Machine.objects.filter(hostname="x.lhr1.example.net").exists()


def test_deleting_a_machine_that_owns_slices_is_a_conflict(clients: dict[str, APIClient]) -> None:
    response = clients["bob"].delete("/api/v1/machines/edge0.fra1.example.net")
    body = response.json()
    assert response.status_code == 409 and "set its state to draining" in body["detail"].lower()
    held = PortSlice.objects.get(machine__hostname="edge0.fra1.example.net")
    assert body["slices"] == [f"{held.ip.address}:{held.lo}-{held.hi} (edge0.fra1.example.net)"]
    assert Machine.objects.filter(hostname="edge0.fra1.example.net").exists()


def test_unknown_objects_are_404(clients: dict[str, APIClient]) -> None:
    vera = clients["vera"]
    assert vera.get("/api/v1/datacenters/nope").status_code == 404
    assert vera.get("/api/v1/machines/nope.example.net/bundle").status_code == 404
    assert vera.get("/api/v1/datacenters/nope/steering").status_code == 404


def test_filters_ordering_and_pagination(clients: dict[str, APIClient]) -> None:
    vera = clients["vera"]
    slices = vera.get("/api/v1/slices?machine=edge1.fra1.example.net").json()
    assert slices["count"] >= 1
    assert {s["machine"] for s in slices["results"]} == {"edge1.fra1.example.net"}
    ordered = vera.get("/api/v1/machines?ordering=-hostname&page_size=2").json()
    assert [m["hostname"] for m in ordered["results"]] == [
        "edge2.fra1.example.net",
        "edge1.fra1.example.net",
    ]
    assert ordered["next"] is not None
    assert vera.get("/api/v1/ips?datacenter=nowhere").json()["count"] == 0


def test_a_body_over_one_mib_is_413(clients: dict[str, APIClient]) -> None:
    big = '{"code": "x1", "name": "' + "x" * (1024 * 1024) + '"}'
    response = clients["bob"].generic(
        "POST", "/api/v1/datacenters", big, content_type="application/json"
    )
    assert response.status_code == 413


def test_malformed_json_is_400(clients: dict[str, APIClient]) -> None:
    response = clients["bob"].generic(
        "POST", "/api/v1/datacenters", "{not json", content_type="application/json"
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/machines/edge0.fra1.example.net", {"datacenter": "ams1"}),
        ("/api/v1/pools/{pool}", {"datacenter": "ams1"}),
        ("/api/v1/ips/192.0.2.1", {"pool": "{other_pool}"}),
    ],
    ids=["machine", "pool", "ip"],
)
def test_nothing_moves_to_another_datacenter(
    clients: dict[str, APIClient], site: Site, path: str, body: dict[str, str]
) -> None:
    bob = clients["bob"]
    bob.post("/api/v1/datacenters", {"code": "ams1", "name": "A", "country": "NL"}, format="json")
    pool = EgressPool.objects.get(datacenter__code="fra1")
    other = bob.post(
        "/api/v1/pools", {"datacenter": "ams1", "purpose": "warp", "country": "NL"}, format="json"
    ).json()["id"]
    path = path.format(pool=pool.pk)
    body = {k: (other if v == "{other_pool}" else v) for k, v in body.items()}
    response = bob.patch(path, body, format="json")
    assert response.status_code == 400, response.content
    assert "another datacenter" in str(response.json())
    # Both sites still plan.
    for code in ("fra1", "ams1"):
        assert bob.post(f"/api/v1/datacenters/{code}/plan/preview").status_code == 200


def test_it_stores_one_spelling_of_an_ipv4_mapped_egress_ip(clients: dict[str, APIClient]) -> None:
    # DRF reads ::ffff:a.b.c.d as a.b.c.d (the model refuses the mapped form
    # outright, for the admin and imports): the same address twice is refused.
    pool = EgressPool.objects.get()
    body = {"address": "::ffff:192.0.2.1", "pool": pool.pk}
    response = clients["bob"].post("/api/v1/ips", body, format="json")
    assert response.status_code == 400 and "address" in response.json()
    body = {"address": "::ffff:192.0.2.99", "pool": pool.pk}
    assert clients["bob"].post("/api/v1/ips", body, format="json").status_code == 201
    assert EgressIP.objects.filter(address="192.0.2.99").exists()
    assert not EgressIP.objects.filter(address__startswith="::ffff:").exists()
