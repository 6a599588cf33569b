"""Finding 10 of issue 15: guessing passwords and tokens is throttled.

Logins go through django-axes: after LOGIN_FAILURE_LIMIT wrong passwords for a
user name from one address, that pair is refused, the right password too,
until ``manage.py axes_reset`` (or the cool-off). API tokens: after the
``token_failures`` rate of wrong ones, the address gets 429 before any lookup.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from planner.api.authentication import TokenFailureThrottle
from planner.choices import TokenKind
from planner.services.tokens import api_token_create

pytestmark = pytest.mark.django_db
PASSWORD = "Right-Pa55word"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    cache.clear()  # the token throttle counts in the cache
    yield
    cache.clear()


@pytest.fixture
def bob(db: None) -> User:
    user = User.objects.create_user("bob", password=PASSWORD)
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    return user


def _login(password: str, *, username: str = "bob", address: str = "192.0.2.10") -> Any:
    return Client(REMOTE_ADDR=address).post("/login/", {"username": username, "password": password})


def _logged_in(response: Any) -> bool:
    return response.status_code == 302 and "_auth_user_id" in response.client.session


def test_wrong_passwords_lock_the_user_out_from_that_address_until_reset(bob: User) -> None:
    limit = settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 1):
        assert _login("wrong").status_code == 200  # the form again, with its error
    assert _login("wrong").status_code == 429  # the limit-th failure locks the pair
    refused = _login(PASSWORD)
    assert refused.status_code == 429 and not _logged_in(refused)
    assert "too many login attempts" in refused.content.decode().lower()

    # Another address, or another user from this one, is not held back.
    assert _logged_in(_login(PASSWORD, address="198.51.100.7"))
    User.objects.create_user("vera", password=PASSWORD)
    assert _logged_in(_login(PASSWORD, username="vera"))

    call_command("axes_reset", verbosity=0)
    assert _logged_in(_login(PASSWORD))


def test_a_success_before_the_limit_clears_the_count(bob: User) -> None:
    limit = settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 1):
        _login("wrong")
    assert _logged_in(_login(PASSWORD))
    for _ in range(limit - 1):
        assert _login("wrong").status_code == 200  # counting again from zero


def test_the_admin_login_is_throttled_too(bob: User) -> None:
    client = Client(REMOTE_ADDR="192.0.2.11")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/admin/login/", {"username": "bob", "password": "wrong"})
    response = client.post("/admin/login/", {"username": "bob", "password": PASSWORD})
    assert response.status_code == 429


def test_wrong_api_tokens_are_throttled_before_any_lookup(bob: User) -> None:
    _, key = api_token_create(name="bob", kind=TokenKind.USER, user=bob)
    rate = TokenFailureThrottle().num_requests
    guesser = APIClient(REMOTE_ADDR="192.0.2.12")
    guesser.credentials(HTTP_AUTHORIZATION="Bearer ps_guess")
    codes = [guesser.get("/api/v1/datacenters").status_code for _ in range(rate)]
    assert codes == [401] * rate
    assert guesser.get("/api/v1/datacenters").status_code == 429
    guesser.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    held = guesser.get("/api/v1/datacenters")
    assert held.status_code == 429 and "Retry-After" in held

    other = APIClient(REMOTE_ADDR="198.51.100.8")
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert other.get("/api/v1/datacenters").status_code == 200

    cache.clear()  # the window passed
    assert guesser.get("/api/v1/datacenters").status_code == 200


def test_right_tokens_are_not_counted(bob: User) -> None:
    _, key = api_token_create(name="bob", kind=TokenKind.USER, user=bob)
    rate = TokenFailureThrottle().num_requests
    client = APIClient(REMOTE_ADDR="192.0.2.13")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert {client.get("/api/v1/datacenters").status_code for _ in range(rate + 1)} == {200}
