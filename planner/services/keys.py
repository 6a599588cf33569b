"""The Ed25519 keys that sign bundles: generate, rotate, retire."""

from __future__ import annotations

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from planner import constants, signing
from planner.choices import (
    KeyStatus,
    MachineState,
)
from planner.models import (
    Machine,
    SigningKey,
)
from planner.services.bundles import bundles_build


class SigningKeyError(Exception):
    """A key operation that cannot be done (no such kid, retiring the active key)."""


def signing_key_generate() -> SigningKey:
    """The first key, active at once; with an active key already, use rotate.

    Machines that already hold slices (a plan applied before any key existed)
    get their first bundle signed with it.
    """
    with transaction.atomic():
        if SigningKey.objects.filter(status=KeyStatus.ACTIVE).exists():
            raise SigningKeyError(constants.ERR_KEY_EXISTS)
        return _activate_new_key(Machine.objects.filter(slices__isnull=False).distinct())


def signing_key_rotate() -> SigningKey:
    """A new active key that re-signs every machine's bundle; the old active one
    stays published (agents trust both until it is retired)."""
    with transaction.atomic():
        SigningKey.objects.select_for_update().filter(status=KeyStatus.ACTIVE).update(
            status=KeyStatus.PUBLISHED
        )
        return _activate_new_key(Machine.objects.exclude(state=MachineState.RETIRED))


def _activate_new_key(machines: QuerySet[Machine]) -> SigningKey:
    """A new active key, and a bundle signed with it for each of ``machines``.

    Runs inside the caller's transaction: the new key and the bundles it signs
    commit together, so no machine is left with only an old key's bundle.
    """
    kid, public = signing.generate_key_file()
    key = SigningKey.objects.create(kid=kid, public_jwk=public, status=KeyStatus.ACTIVE)
    bundles_build(machines=machines)
    return key


def signing_key_retire(*, kid: str) -> SigningKey:
    """Drop a published key from the JWKS. The active key cannot be retired."""
    with transaction.atomic():
        key = SigningKey.objects.select_for_update().filter(kid=kid).first()
        if key is None:
            raise SigningKeyError(constants.ERR_KEY_UNKNOWN % {"kid": kid})
        if key.status == KeyStatus.ACTIVE:
            raise SigningKeyError(constants.ERR_KEY_ACTIVE % {"kid": kid})
        key.status, key.retired_at = KeyStatus.RETIRED, timezone.now()
        key.save()
    return key
