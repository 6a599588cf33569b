from __future__ import annotations

from typing import Any

import pytest

from tests.support import need


@pytest.fixture
def postgres(db: None) -> None:
    """Use in tests that only mean something on PostgreSQL (constraints, locks)."""
    from django.db import connection

    need(
        connection.vendor == "postgresql",
        f"needs PostgreSQL; DATABASE_URL points at {connection.vendor}",
    )


@pytest.fixture(autouse=True)
def _plain_static_storage(settings: Any) -> None:
    # The hashed manifest storage needs collectstatic first; tests serve the
    # source files directly instead.
    # Serve static files from the apps' folders (no collectstatic in tests).
    settings.WHITENOISE_USE_FINDERS = True
    settings.WHITENOISE_AUTOREFRESH = True
    # Password hashing is deliberately slow; tests need users, not security.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
