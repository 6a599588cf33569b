from __future__ import annotations

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
