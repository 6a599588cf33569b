"""Bearer tokens for the API, looked up by their SHA-256 (keys are never stored)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, throttling
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


class TokenFailureThrottle(throttling.SimpleRateThrottle):
    """Wrong or revoked tokens per client address, at the ``token_failures`` rate.

    DRF's own throttles run after authentication, so they never see a failed
    one: this counts failures only, and once the rate is reached the address
    is answered 429 before any token is looked up, the right one included,
    until the window has passed.
    """

    scope = "token_failures"
    num_requests: int  # set from the rate by SimpleRateThrottle.__init__
    duration: int

    def get_cache_key(self, request: Any, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def check(self, request: Request) -> None:
        """Raise :class:`~rest_framework.exceptions.Throttled` while the address is held back."""
        self.key = self.get_cache_key(request, None)
        self.history = self.cache.get(self.key, [])
        self.now = self.timer()
        while self.history and self.history[-1] <= self.now - self.duration:
            self.history.pop()
        if len(self.history) >= self.num_requests:
            raise exceptions.Throttled(self.wait())

    def record_failure(self) -> None:
        """Count one failure (after :meth:`check`, which read the history)."""
        self.history.insert(0, self.now)
        self.cache.set(self.key, self.history, self.duration)


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <key>`` (``Token <key>`` also accepted)."""

    keywords = ("bearer", "token")

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode(errors="replace").lower() not in self.keywords:
            return None
        throttle = TokenFailureThrottle()
        throttle.check(request)
        if len(header) != 2:
            throttle.record_failure()
            raise exceptions.AuthenticationFailed("Authorization: expected 'Bearer <token>'.")
        key = header[1].decode(errors="replace")
        token = (
            ApiToken.objects.select_related("user", "machine", "datacenter")
            .filter(key_hash=hash_token(key), revoked=False)
            .first()
        )
        if token is None:
            throttle.record_failure()
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
