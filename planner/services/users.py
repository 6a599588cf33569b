"""People: an account with one role (viewer, operator, admin), made in one transaction."""

from __future__ import annotations

from typing import Any, Final

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from planner.roles import ADMIN, OPERATOR, VIEWER

ROLES: Final = (VIEWER, OPERATOR, ADMIN)
ERR_ROLE: Final = "role: expected one of viewer, operator, admin, got %(value)r."
ERR_USER_EXISTS: Final = "username: a user named %(value)r exists already."


def user_create(*, username: str, role: str, password: str) -> Any:
    """A user with ``role``: a viewer or operator is a member of that group (the role is a
    group); an admin is a superuser (superusers are admins, and may use /admin/)."""
    if role not in ROLES:
        raise ValidationError({"role": ERR_ROLE % {"value": role}})
    model = get_user_model()
    if model.objects.filter(username=username).exists():
        raise ValidationError({"username": ERR_USER_EXISTS % {"value": username}})
    user = model(username=username, is_staff=role == ADMIN, is_superuser=role == ADMIN)
    user.full_clean(exclude=["password"])
    try:
        validate_password(password, user)
    except ValidationError as error:
        raise ValidationError({"password": error.messages}) from None
    user.set_password(password)
    with transaction.atomic():
        user.save()
        if role != ADMIN:
            user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user
