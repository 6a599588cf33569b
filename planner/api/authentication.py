"""Bearer tokens for the API, looked up by their SHA-256 (keys are never stored)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from planner.choices import TokenKind
from planner.models import ApiToken
from planner.models.tokens import hash_token


@dataclass(frozen=True)
class ServicePrincipal:
    """Who an agent or load-balancer token acts as: no user, no role, one narrow right."""

    token: ApiToken
    is_authenticated: bool = True
    is_anonymous: bool = False
    is_active: bool = True
    is_superuser: bool = False

    @property
    def pk(self) -> str:  # throttles key on it
        return f"token:{self.token.pk}"

    def get_username(self) -> str:
        machine = self.token.machine
        bound = machine.hostname if machine is not None else self.token.name
        return f"{self.token.kind}:{bound}"


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <key>`` (``Token <key>`` also accepted)."""

    keywords = ("bearer", "token")

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode(errors="replace").lower() not in self.keywords:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization: expected 'Bearer <token>'.")
        key = header[1].decode(errors="replace")
        token = (
            ApiToken.objects.select_related("user", "machine", "datacenter")
            .filter(key_hash=hash_token(key), revoked=False)
            .first()
        )
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        if token.kind == TokenKind.USER:
            if not token.user or not token.user.is_active:
                raise exceptions.AuthenticationFailed("The token's user is inactive.")
            return token.user, token
        return ServicePrincipal(token), token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="portslice"'


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """Tells drf-spectacular the API takes bearer tokens."""

    target_class = "planner.api.authentication.ApiTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer"}
