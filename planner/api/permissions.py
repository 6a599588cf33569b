"""Who may do what: roles for people, one narrow right per service token.

- viewer: every read. operator: inventory writes, plan previews and applies
  (the web UI's operators apply plans too). admin: keys and tokens.
  Superusers are admins. A role is a group.
- agent token: its own machine's bundle and the public keys, nothing else.
- load-balancer token: steering tables (of its datacenter, when bound).
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from planner.choices import TokenKind
from planner.models import ApiToken
from planner.roles import OPERATOR, RANK, VIEWER, user_rank


class RolePermission(BasePermission):
    """Checks the role a view asks for. Views set ``roles`` (action -> role) and
    ``token_kinds`` (action -> service token kinds admitted); an APIView's
    action is its method name."""

    def has_permission(self, request: Request, view: Any) -> bool:
        token = request.auth if isinstance(request.auth, ApiToken) else None
        if token is not None and token.kind != TokenKind.USER:
            return self._service_token_allowed(token, request, view)
        needed = self._role_needed(request, view)
        return needed is None or user_rank(request.user) >= RANK[needed]

    def _role_needed(self, request: Request, view: Any) -> str | None:
        roles: dict[str, str | None] = getattr(view, "roles", {})
        action = getattr(view, "action", None) or str(request.method).lower()
        if action in roles:
            return roles[action]
        return VIEWER if request.method in SAFE_METHODS else OPERATOR

    def _service_token_allowed(self, token: ApiToken, request: Request, view: Any) -> bool:
        action = getattr(view, "action", None) or str(request.method).lower()
        admitted = getattr(view, "token_kinds", {}).get(action, ())
        if request.method not in SAFE_METHODS or token.kind not in admitted:
            return False
        kwargs = getattr(view, "kwargs", {})
        if token.kind == TokenKind.AGENT and "hostname" in kwargs:
            return token.machine is not None and kwargs["hostname"] == token.machine.hostname
        if token.kind == TokenKind.LOAD_BALANCER and token.datacenter_id and "code" in kwargs:
            return kwargs["code"] == token.datacenter.code  # type: ignore[union-attr]
        return True
