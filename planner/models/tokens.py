"""API tokens: stored hashed, bound to a user, a machine or a load balancer."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models

from planner.choices import TokenKind
from planner.models.inventory import Datacenter, Machine

TOKEN_PREFIX = "ps_"


def hash_token(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_token_key() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class ApiToken(models.Model):
    """A bearer token for the REST API.

    Only a SHA-256 of the key is kept, so a database dump grants nothing; the
    key is shown once, when made. ``user`` tokens act with their user's role;
    ``agent`` tokens may read one machine's bundle and the public keys;
    ``lb`` tokens may read steering tables (of one datacenter when set).
    """

    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=8, choices=TokenKind.choices)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE
    )
    machine = models.ForeignKey(Machine, null=True, blank=True, on_delete=models.CASCADE)
    datacenter = models.ForeignKey(Datacenter, null=True, blank=True, on_delete=models.CASCADE)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked = models.BooleanField(default=False)

    class Meta:
        verbose_name = "API token"
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(kind="user", user__isnull=False, machine__isnull=True)
                    | models.Q(kind="agent", machine__isnull=False, user__isnull=True)
                    | models.Q(kind="lb", user__isnull=True, machine__isnull=True)
                ),
                name="token_binding_matches_kind",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"
