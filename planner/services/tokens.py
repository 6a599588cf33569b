"""API tokens: create (the key is shown once) and revoke."""

from __future__ import annotations

from typing import Any

from planner.models import (
    ApiToken,
    Datacenter,
    Machine,
)
from planner.models.tokens import hash_token, new_token_key
from planner.services.inventory import model_save


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
    model_save(instance=token, values={})
    return token, key


def api_token_revoke(*, token: ApiToken) -> None:
    model_save(instance=token, values={"revoked": True})
