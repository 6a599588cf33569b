"""Plan preview and apply over HTTP: 200, 201, 409, 422."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from planner.models import PlanRevision, PortSlice
from tests.planner.conftest import Site
from tests.planner.factories import make_machine

pytestmark = pytest.mark.django_db


def test_a_preview_shows_diff_and_capacity_and_writes_nothing(
    clients: dict[str, APIClient], site: Site
) -> None:
    before = PortSlice.objects.count()
    response = clients["bob"].post("/api/v1/datacenters/fra1/plan/preview?scope=full")
    body = response.json()
    assert response.status_code == 200 and body["ok"] and body["base_revision"] == 1
    assert body["diff"]["kept"] == before and body["scope"] == "full"
    assert body["capacity"]["fra1/warp/DE"]["machines_served"] == 3
    assert PortSlice.objects.count() == before


def test_a_preview_plans_only_changed_pools_unless_asked_for_all(
    clients: dict[str, APIClient], site: Site
) -> None:
    body = clients["bob"].post("/api/v1/datacenters/fra1/plan/preview").json()
    assert body["scope"] == "changed" and body["pools_planned"] == []
    assert body["diff"]["kept"] == 0
    make_machine("edge9.fra1.example.net", datacenter=site.datacenter).pools.add(
        site.datacenter.pools.get()
    )
    body = clients["bob"].post("/api/v1/datacenters/fra1/plan/preview").json()
    assert body["pools_planned"] == ["fra1/warp/DE"] and body["diff"]["added"] == 1


def test_a_full_apply_refuses_a_scoped_preview_digest_once_they_differ(
    clients: dict[str, APIClient], site: Site
) -> None:
    scoped = clients["alice"].post("/api/v1/datacenters/fra1/plan/preview").json()
    response = clients["alice"].post(
        "/api/v1/datacenters/fra1/plan/apply?scope=full",
        {"inputs_digest": scoped["inputs_digest"]},
        format="json",
    )
    assert response.status_code == 409
    assert response.json()["preview"]["scope"] == "full"


def test_an_unknown_scope_is_refused_naming_it(clients: dict[str, APIClient], site: Site) -> None:
    response = clients["bob"].post("/api/v1/datacenters/fra1/plan/preview?scope=some")
    assert response.status_code == 400 and "'some'" in response.json()["scope"]


def _digest(client: APIClient) -> str:
    digest = client.post("/api/v1/datacenters/fra1/plan/preview").json()["inputs_digest"]
    assert isinstance(digest, str)
    return digest


def test_apply_returns_the_new_revision(clients: dict[str, APIClient], site: Site) -> None:
    site.machines[2].state = "retired"
    site.machines[2].save()
    response = clients["alice"].post(
        "/api/v1/datacenters/fra1/plan/apply",
        {"inputs_digest": _digest(clients["alice"]), "reason": "retire edge2"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["number"], body["status"], body["created_by"]) == (2, "applied", "alice")
    assert body["diff_summary"]["draining"] == 1  # its one slice in the pool
    assert PortSlice.objects.get(state="draining").machine == site.machines[2]


def test_a_stale_preview_is_409_with_a_fresh_one(clients: dict[str, APIClient], site: Site) -> None:
    seen = _digest(clients["alice"])  # nothing to do: the first plan is applied
    pool = site.datacenter.pools.get()
    pool.slice_size = 4096  # then the inventory changes under the operator
    pool.save()
    make_machine("late.fra1.example.net", datacenter=site.datacenter).pools.add(pool)
    url = "/api/v1/datacenters/fra1/plan/apply"
    response = clients["alice"].post(url, {"inputs_digest": seen}, format="json")
    body = response.json()
    assert response.status_code == 409 and "changed since this preview" in body["detail"]
    assert PlanRevision.objects.count() == 1 and PortSlice.objects.count() == 3
    fresh = body["preview"]
    assert fresh["inputs_digest"] != seen and fresh["diff"]["added"] == 4
    again = clients["alice"].post(url, {"inputs_digest": fresh["inputs_digest"]}, format="json")
    assert again.status_code == 201 and again.json()["diff_summary"]["added"] == 4


def test_a_short_pool_is_422_with_the_shortfall(clients: dict[str, APIClient], site: Site) -> None:
    pool = site.datacenter.pools.get()
    for n in range(12):  # 2 IPs of 7 slots (8,192 ports) each: the 15th machine is left out
        make_machine(f"extra{n}.fra1.example.net", datacenter=site.datacenter).pools.add(pool)
    response = clients["alice"].post(
        "/api/v1/datacenters/fra1/plan/apply",
        {"inputs_digest": _digest(clients["alice"])},
        format="json",
    )
    assert response.status_code == 422
    (shortfall,) = response.json()["shortfalls"]
    assert shortfall["pool"] == "fra1/warp/DE" and shortfall["ips_needed"] == 1
    assert PlanRevision.objects.count() == 1


def test_a_bad_body_names_the_field(clients: dict[str, APIClient]) -> None:
    response = clients["alice"].post(
        "/api/v1/datacenters/fra1/plan/apply", {"inputs_digest": "soon"}, format="json"
    )
    assert response.status_code == 400 and "inputs_digest" in response.json()
