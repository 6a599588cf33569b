"""Bytes and shapes no client should send: NUL bytes, over-long strings, wrong
types and deep nesting get a 4xx with a message, never a 5xx, on PostgreSQL
(which refuses NUL in text) as on SQLite."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from rest_framework.test import APIClient

from planner.models import Datacenter, EgressPool, Machine
from tests.planner.conftest import Site

pytestmark = pytest.mark.django_db

LONG = "x" * 100_000

UNAUTHENTICATED_GETS = [
    "/api/v1/geofeed.csv?datacenter=%00",
    f"/api/v1/geofeed.csv?datacenter={LONG}",
    "/api/v1/geofeed.csv?datacenter=fra1%00",
]

OPERATOR_GETS = [
    "/api/v1/datacenters/%00",
    "/api/v1/datacenters/fra1%00",
    f"/api/v1/datacenters/{LONG}",
    "/api/v1/datacenters/%00/steering",
    "/api/v1/revisions?datacenter=x%00",
    f"/api/v1/revisions?datacenter={LONG}",
    "/api/v1/revisions?status=%00",
    "/api/v1/machines?datacenter=%00",
    "/api/v1/machines?pool=%00",
    "/api/v1/machines?pool=99999999999999999999999",
    "/api/v1/machines/%00",
    f"/api/v1/machines/{LONG}",
    "/api/v1/machines/edge0.fra1.example.net%00/bundle",
    "/api/v1/pools/%00",
    "/api/v1/pools/99999999999999999999999",
    "/api/v1/pools?datacenter=%00&purpose=%00&country=%00",
    "/api/v1/ips/%00",
    "/api/v1/ips/192.0.2.1%00",
    "/api/v1/ips?datacenter=%00&purpose=%00",
    "/api/v1/slices?machine=%00&ip=%00&datacenter=%00",
    "/api/v1/slices?page=%00&page_size=%00&ordering=%00",
    "/api/v1/datacenters?ordering=%00&country=%00",
]


def test_it_never_answers_5xx_to_nul_or_long_lookups_without_login(site: Site) -> None:
    for url in UNAUTHENTICATED_GETS:
        response = Client().get(url)
        assert 400 <= response.status_code < 500, (url, response.status_code)
        assert response.content, url


@pytest.mark.parametrize("url", OPERATOR_GETS)
def test_it_answers_a_lookup_that_cannot_match_with_400_or_404(
    clients: dict[str, APIClient], url: str
) -> None:
    response = clients["bob"].get(url)
    assert response.status_code in {400, 404}, (url, response.status_code)
    assert "detail" in response.json() or response.json()


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/datacenters/%00/plan/preview",
        "/api/v1/datacenters/fra1%00/plan/apply",
        f"/api/v1/datacenters/{LONG[:5000]}/plan/preview",
    ],
)
def test_it_refuses_plan_actions_on_a_nul_code(clients: dict[str, APIClient], url: str) -> None:
    response = clients["alice"].post(url, {"inputs_digest": "0" * 64}, format="json")
    assert response.status_code in {400, 404}, response.status_code


MACHINE = {"hostname": "n.example.net", "datacenter": "fra1", "address": "10.1.0.2"}
POOL = {"datacenter": "fra1", "purpose": "p", "country": "DE"}
BODIES = [
    ("/api/v1/machines", {**MACHINE, "datacenter": "a\u0000"}),
    ("/api/v1/machines", {**MACHINE, "datacenter": LONG}),
    ("/api/v1/machines", {**MACHINE, "datacenter": ["fra1"]}),
    ("/api/v1/machines", {**MACHINE, "hostname": "n\u0000.example.net"}),
    ("/api/v1/machines", {**MACHINE, "address": "10.1.0.2\u0000"}),
    ("/api/v1/machines", {**MACHINE, "pools": ["\u0000"]}),
    ("/api/v1/pools", {**POOL, "datacenter": "a\u0000"}),
    ("/api/v1/pools", {**POOL, "city": "Fr\u0000nkfurt"}),
    ("/api/v1/pools", {**POOL, "city": LONG}),
    ("/api/v1/datacenters", {"code": "ams1", "name": "A\u0000", "country": "NL"}),
    ("/api/v1/datacenters", {"code": "ams1", "name": "A", "country": "N\u0000"}),
    ("/api/v1/datacenters", {"code": "ams1", "name": "A", "country": "NL", "region": {"a": 1}}),
    ("/api/v1/ips", {"address": "192.0.2.9", "pool": "\u0000"}),
    ("/api/v1/ips", {"address": "192.0.2.9", "pool": 1, "reserved_ports": ["\u0000"]}),
    ("/api/v1/ips", {"address": "192.0.2.9", "pool": 1, "state": "\u0000"}),
]


@pytest.mark.parametrize(("url", "body"), BODIES)
def test_it_refuses_bad_bodies_with_a_field_error(
    clients: dict[str, APIClient], url: str, body: dict[str, object]
) -> None:
    before = (Datacenter.objects.count(), EgressPool.objects.count(), Machine.objects.count())
    response = clients["bob"].post(url, body, format="json")
    assert response.status_code == 400, (response.status_code, response.content[:300])
    assert set(response.json()) & set(body), response.json()
    after = (Datacenter.objects.count(), EgressPool.objects.count(), Machine.objects.count())
    assert after == before


def test_it_names_the_nul_datacenter_in_its_error(clients: dict[str, APIClient]) -> None:
    body = {"hostname": "n.example.net", "datacenter": "a\u0000", "address": "10.1.0.2"}
    response = clients["bob"].post("/api/v1/machines", body, format="json")
    assert response.status_code == 400
    assert "null" in str(response.json()["datacenter"]).lower()


@pytest.mark.parametrize("depth", [100, 1000, 5000, 100_000])
@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("post", "/api/v1/machines"),
        ("post", "/api/v1/pools"),
        ("put", "/api/v1/datacenters/fra1"),
        ("patch", "/api/v1/ips/192.0.2.1"),
        ("post", "/api/v1/datacenters/fra1/plan/apply"),
    ],
)
def test_it_answers_deeply_nested_json_with_400(
    clients: dict[str, APIClient], method: str, url: str, depth: int
) -> None:
    body = "[" * depth + "]" * depth
    response = getattr(clients["alice"], method)(url, body, content_type="application/json")
    assert response.status_code == 400, (depth, response.status_code)
    assert response.json()


def test_it_answers_nesting_inside_a_field_with_400(clients: dict[str, APIClient]) -> None:
    nested = "[" * 5000 + "]" * 5000
    body = '{"address": "192.0.2.9", "pool": 1, "reserved_ports": ' + nested + "}"
    response = clients["bob"].post("/api/v1/ips", body, content_type="application/json")
    assert response.status_code == 400


def test_nul_in_a_form_body_is_a_field_error(clients: dict[str, APIClient]) -> None:
    response = clients["bob"].post(
        "/api/v1/datacenters", {"code": "ams1", "name": "\u0000", "country": "NL"}
    )
    assert response.status_code == 400 and "name" in response.json()


def test_the_admin_search_survives_a_nul(site: Site) -> None:
    from django.contrib.auth.models import User

    client = Client()
    client.force_login(User.objects.create_superuser("alice", password="x-Secret-1"))
    for url in [
        "/admin/planner/machine/?q=%00",
        "/admin/planner/machine/?state__exact=%00",
        "/admin/planner/egressip/?q=%00",
        "/admin/planner/datacenter/%00/change/",
    ]:
        response = client.get(url)
        assert response.status_code < 500, (url, response.status_code)


def test_nul_in_json_is_escaped_in_the_error_not_dropped(clients: dict[str, APIClient]) -> None:
    body = json.dumps({"code": "ams\u00001", "name": "A", "country": "NL"})
    response = clients["bob"].post("/api/v1/datacenters", body, content_type="application/json")
    assert response.status_code == 400 and "code" in response.json()


def test_models_refuse_nul_in_any_text_field_as_a_field_error(site: Site) -> None:
    from django.core.exceptions import ValidationError

    pool = EgressPool(datacenter=site.datacenter, purpose="cdn", country="DE", city="F\x00")
    with pytest.raises(ValidationError) as caught:
        pool.full_clean()  # on PostgreSQL the uniqueness check would raise DataError
    assert set(caught.value.message_dict) == {"city"}
    assert "Null characters are not allowed." in caught.value.message_dict["city"]
    datacenter = Datacenter(code="ams1", name="A\x00", country="NL", city="\x00")
    with pytest.raises(ValidationError) as caught:
        datacenter.full_clean()
    assert set(caught.value.message_dict) == {"name", "city"}


def test_a_nul_in_any_url_is_a_json_400_with_a_message() -> None:
    from planner.middleware import ERR_NUL_IN_URL

    for url in ["/admin/%00", "/metrics?x=%00", "/api/docs/?%00=1", "/%00"]:
        response = Client().get(url)
        assert response.status_code == 400 and response.json()["detail"] == ERR_NUL_IN_URL


def test_a_database_data_error_that_slips_through_is_a_400_not_a_500() -> None:
    # The last line of defence: every known path is refused earlier, by the
    # middleware, the fields or the models.
    from django.db import DataError

    from planner.api.exceptions import ERR_DATA, handle

    error = DataError("value too long for type character varying(32)\nCONTEXT: ...")
    response = handle(error, {})
    assert response is not None and response.status_code == 400
    assert response.data["detail"] == f"{ERR_DATA} value too long for type character varying(32)"


def test_it_refuses_a_nul_in_a_cookie_before_the_session_lookup(site: Site) -> None:
    client = Client()
    client.cookies["sessionid"] = "abcdefghijkl\x00"
    response = client.get("/admin/")
    assert response.status_code == 400 and "cookie" in response.json()["detail"]
