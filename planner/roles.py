"""Roles for people: what the API's permissions and the UI's pages both check.

viewer: every read. operator: inventory writes, plan previews, applies and draft
approvals. admin: keys and tokens. Superusers are admins. A role is a group.
Both ``planner.api`` and ``planner.ui`` import this module.
"""

from __future__ import annotations

from typing import Any

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
RANK = {VIEWER: 1, OPERATOR: 2, ADMIN: 3}


def user_rank(user: Any) -> int:
    """The user's highest role as a number (0: none, or not signed in)."""
    if not getattr(user, "is_authenticated", False) or not hasattr(user, "groups"):
        return 0
    if user.is_superuser:
        return RANK[ADMIN]
    names = user.groups.values_list("name", flat=True)
    return max((RANK.get(name, 0) for name in names), default=0)
