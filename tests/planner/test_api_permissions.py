"""Every role against every endpoint and method: allowed gets a non-403/401, denied gets one."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.planner.conftest import Site

pytestmark = pytest.mark.django_db

OWN = "edge0.fra1.example.net"
OTHER = "edge1.fra1.example.net"
ALL = {"alice", "bob", "vera", "charlie", "agent", "lb", "anonymous"}
READERS = {"alice", "bob", "vera"}
WRITERS = {"alice", "bob"}

# (method, path, body, actors allowed)
MATRIX: list[tuple[str, str, dict[str, Any] | None, set[str]]] = [
    ("get", "/api/v1/datacenters", None, READERS),
    ("post", "/api/v1/datacenters", {"code": "ams1", "name": "A", "country": "NL"}, WRITERS),
    ("get", "/api/v1/datacenters/fra1", None, READERS),
    ("patch", "/api/v1/datacenters/fra1", {"name": "Frankfurt"}, WRITERS),
    ("get", "/api/v1/pools", None, READERS),
    ("get", "/api/v1/ips", None, READERS),
    ("post", "/api/v1/ips", {"address": "192.0.2.99", "pool": 1}, WRITERS),
    ("get", "/api/v1/machines", None, READERS),
    ("patch", f"/api/v1/machines/{OTHER}", {"weight": 1}, WRITERS),
    ("get", "/api/v1/slices", None, READERS),
    ("get", "/api/v1/revisions", None, READERS),
    ("post", "/api/v1/datacenters/fra1/plan/preview", None, WRITERS),
    ("post", "/api/v1/datacenters/fra1/plan/apply", {"inputs_digest": "0" * 64}, WRITERS),
    ("get", f"/api/v1/machines/{OWN}/bundle", None, READERS | {"agent"}),
    ("get", f"/api/v1/machines/{OTHER}/bundle", None, READERS),
    ("get", "/api/v1/keys", None, READERS | {"agent"}),
    ("get", "/api/v1/datacenters/fra1/steering", None, READERS | {"lb"}),
    ("get", "/api/v1/datacenters/fra1/steering?format=nft", None, READERS | {"lb"}),
    ("get", "/api/v1/geofeed.csv", None, ALL),
    ("delete", f"/api/v1/machines/{OTHER}", None, WRITERS),
]

CASES = [(m, p, b, actor, actor in allowed) for m, p, b, allowed in MATRIX for actor in sorted(ALL)]


@pytest.mark.parametrize(
    ("method", "path", "body", "actor", "allowed"),
    CASES,
    ids=[f"{c[3]}-{c[0]}-{c[1]}" for c in CASES],
)
def test_role_matrix(
    clients: dict[str, APIClient],
    site: Site,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    actor: str,
    allowed: bool,
) -> None:
    response = getattr(clients[actor], method)(path, body, format="json")
    if allowed:
        assert response.status_code not in (401, 403), (response.status_code, response.content)
        assert response.status_code < 500
    else:
        expected = 401 if actor == "anonymous" else 403
        assert response.status_code == expected, (response.status_code, response.content)


def test_a_revoked_token_is_refused(clients: dict[str, APIClient]) -> None:
    from planner.models import ApiToken

    ApiToken.objects.filter(name="vera").update(revoked=True)
    assert clients["vera"].get("/api/v1/datacenters").status_code == 401


def test_a_session_user_needs_csrf_for_writes(site: Site) -> None:
    from django.contrib.auth.models import User

    client = APIClient(enforce_csrf_checks=True)
    client.force_login(User.objects.create_superuser("sam", password="unused-Pa55"))
    assert client.get("/api/v1/datacenters").status_code == 200
    response = client.post("/api/v1/datacenters", {"code": "x1", "name": "X", "country": "DE"})
    assert response.status_code == 403 and b"CSRF" in response.content
