"""API tokens: create (the key is shown once) and revoke."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from planner.models import (
    ApiToken,
    Datacenter,
    Machine,
)
from planner.models.tokens import hash_token, new_token_key


def api_token_create(
    *,
    name: str,
    kind: str,
    user: Any = None,
    machine: Machine | None = None,
    datacenter: Datacenter | None = None,
) -> tuple[ApiToken, str]:
    """Make a token; returns it and its key, which is shown once and never stored."""
    key = new_token_key()
    token = ApiToken(
        name=name,
        kind=kind,
        user=user,
        machine=machine,
        datacenter=datacenter,
        key_hash=hash_token(key),
    )
    _save(token)
    return token, key


def api_token_revoke(*, token: ApiToken) -> None:
    token.revoked = True
    _save(token)


def _save(token: ApiToken) -> None:
    # Validated and audited like any row, but no inventory lock: revoking a
    # leaked token must never wait behind a plan being applied.
    with transaction.atomic():
        token.full_clean()
        token.save()
