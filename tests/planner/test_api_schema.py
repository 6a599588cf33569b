"""The API against its own OpenAPI schema: schemathesis sends generated requests
(valid and invalid) to every operation and checks there is never a 5xx and
every response conforms to the schema. Examples are bounded per operation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis import checks

from planner.choices import TokenKind
from planner.services.tokens import api_token_create
from planner.wsgi import application
from tests.planner.conftest import Site

schema = schemathesis.openapi.from_wsgi("/api/schema/", application)

# What the issue asks: never a 5xx, every response as the schema says. (The
# negative-data checks would also demand that DRF reject ignorable junk such
# as ``?page_size=null``, which it deliberately tolerates.)
RESPONSE_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


@pytest.fixture
def keep_test_connection() -> Iterator[None]:
    """Calling the WSGI app directly fires request_finished, whose handler would
    close the test's connection (it sits inside the test transaction); Django's
    own test client turns it off the same way."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def admin_headers(site: Site, keep_test_connection: None) -> dict[str, str]:
    from django.contrib.auth.models import User

    alice = User.objects.create_superuser("alice", password="unused-Pa55")
    _, key = api_token_create(name="fuzz", kind=TokenKind.USER, user=alice)
    cache.clear()  # throttles
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_5xx_and_no_schema_violations(case: Any, admin_headers: dict[str, str]) -> None:
    case.call_and_validate(headers=admin_headers, checks=RESPONSE_CHECKS)


def test_the_schema_is_served(client: Any) -> None:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert "/api/v1/machines/{hostname}/bundle" in response.json()["paths"]
