from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client

from tests.planner.ui.fixtures import UiSite, build_ui_site, make_users


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    # Cache keys carry row ids, and rolled-back tests may reuse ids on SQLite.
    cache.clear()


@pytest.fixture
def ui_site(db: None, key_dir: Path) -> UiSite:
    return build_ui_site()


@pytest.fixture
def users(db: None) -> dict[str, User]:
    return make_users()


@pytest.fixture
def clients(users: dict[str, User]) -> dict[str, Client]:
    """A logged-in browser-like client per actor, and an anonymous one."""
    result = {"anonymous": Client()}
    for name, user in users.items():
        client = Client()
        client.force_login(user)
        result[name] = client
    return result
