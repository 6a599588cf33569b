"""Recording the audit trail.

Every save and delete of an inventory, slice or revision row writes an
``AuditEntry`` through model signals, so the admin, the API, management
commands and services are all covered without each remembering to. Bulk
writes skip signals; the services that make them call :func:`audit_record`
themselves with a summary (a plan apply records its diff, not 100,000 rows).

Who acted comes from a context variable: the request's user (set by
:class:`AuditActorMiddleware`, read lazily so token-authenticated API users
count too), or a name given with :func:`acting_as` in commands and tasks.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import models
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.http import HttpRequest, HttpResponse

from planner.choices import AuditAction

Actor = Callable[[], Any]  # returns a User, or a str such as "system:seed_demo"

_actor: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("audit_actor", default=None)


@contextmanager
def acting_as(actor: Any) -> Iterator[None]:
    """Attribute changes made inside the block to ``actor`` (a User or a name)."""
    token = _actor.set(lambda: actor)
    try:
        yield
    finally:
        _actor.reset(token)


class AuditActorMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _actor.set(lambda: getattr(request, "user", None))
        try:
            return self.get_response(request)
        finally:
            _actor.reset(token)


def _current_actor() -> tuple[str, Any]:
    actor = _actor.get()
    who = actor() if actor else None
    if who is None or getattr(who, "is_anonymous", False):
        return "system", None
    if isinstance(who, str):
        return who, None
    return who.get_username(), who


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str | list | dict):
        return value
    return str(value)


def field_values(instance: models.Model) -> dict[str, Any]:
    return {
        field.name: _jsonable(getattr(instance, field.attname))
        for field in instance._meta.concrete_fields
    }


def audit_record(
    *,
    action: str,
    instance: models.Model | None = None,
    model: str = "",
    object_pk: str = "",
    object_repr: str = "",
    changes: dict[str, Any] | None = None,
) -> None:
    from planner.models import AuditEntry

    actor, user = _current_actor()
    if instance is not None:
        model = model or instance._meta.label
        object_pk = object_pk or str(instance.pk)
        object_repr = object_repr or str(instance)[:200]
    AuditEntry.objects.create(
        actor=actor,
        user=user,
        action=action,
        model=model,
        object_pk=object_pk,
        object_repr=object_repr,
        changes=changes or {},
    )


def _before_save(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    # Read the stored row (one query) rather than snapshot every loaded
    # instance: loads outnumber saves by far (a plan reads 100,000 slices).
    old = sender._default_manager.filter(pk=instance.pk).first() if instance.pk else None
    instance._audit_before = field_values(old) if old else None  # type: ignore[attr-defined]


def _after_save(
    sender: type[models.Model], instance: models.Model, created: bool, **kwargs: Any
) -> None:
    after = field_values(instance)
    before = getattr(instance, "_audit_before", None)
    if created or before is None:
        audit_record(action=AuditAction.CREATE, instance=instance, changes=after)
        return
    changed = {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}
    if changed:
        audit_record(action=AuditAction.UPDATE, instance=instance, changes=changed)


def _after_delete(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    audit_record(action=AuditAction.DELETE, instance=instance, changes=field_values(instance))


def _m2m_changed(
    sender: Any, instance: models.Model, action: str, pk_set: set[Any] | None, **kwargs: Any
) -> None:
    if action in {"post_add", "post_remove", "post_clear"}:
        field = sender._meta.model_name
        audit_record(
            action=AuditAction.UPDATE,
            instance=instance,
            changes={field: {action.removeprefix("post_"): sorted(pk_set or [])}},
        )


# What a person's row may change that decides what they may do. Their password
# hash and last login stay out of the trail.
USER_FIELDS = ("username", "is_active", "is_staff", "is_superuser")


def _user_before_save(sender: Any, instance: Any, **kwargs: Any) -> None:
    old = sender._default_manager.filter(pk=instance.pk).values(*USER_FIELDS).first()
    instance._audit_before = old if instance.pk else None


def _user_after_save(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    after = {name: getattr(instance, name) for name in USER_FIELDS}
    before = getattr(instance, "_audit_before", None)
    if created or before is None:
        audit_record(action=AuditAction.CREATE, instance=instance, changes=after)
        return
    changed = {k: [before[k], v] for k, v in after.items() if before[k] != v}
    if changed:
        audit_record(action=AuditAction.UPDATE, instance=instance, changes=changed)


def _roles_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: set[Any] | None, **kwargs: Any
) -> None:
    """A role is a group: record who gained or lost which, by name, on the user's row."""
    from django.contrib.auth.models import Group, User

    if action not in {"pre_clear", "post_add", "post_remove"}:
        return
    if action == "pre_clear":  # after the clear, nothing says what was there
        related = instance.user_set if reverse else instance.groups
        action, pk_set = "post_remove", set(related.values_list("pk", flat=True))
    verb = action.removeprefix("post_")
    if reverse:  # group.user_set.add(...): one entry per user
        for user in User.objects.filter(pk__in=pk_set or []):
            audit_record(
                action=AuditAction.UPDATE,
                instance=user,
                changes={"groups": {verb: [instance.name]}},
            )
        return
    names = sorted(Group.objects.filter(pk__in=pk_set or []).values_list("name", flat=True))
    if names:
        audit_record(
            action=AuditAction.UPDATE, instance=instance, changes={"groups": {verb: names}}
        )


def connect_audit_signals() -> None:
    from django.contrib.auth.models import User

    from planner import models as m

    pre_save.connect(_user_before_save, sender=User, dispatch_uid="audit-user-pre")
    post_save.connect(_user_after_save, sender=User, dispatch_uid="audit-user-post")
    m2m_changed.connect(_roles_changed, sender=User.groups.through, dispatch_uid="audit-roles")
    models_audited = (
        m.Datacenter,
        m.EgressPool,
        m.EgressIP,
        m.Machine,
        m.PortSlice,
        m.PlanRevision,
        m.RebalancePolicy,
        m.Gateway,
    )
    for model in models_audited:
        uid = f"audit-{model._meta.label}"
        pre_save.connect(_before_save, sender=model, dispatch_uid=f"{uid}-pre")
        post_save.connect(_after_save, sender=model, dispatch_uid=f"{uid}-post")
        post_delete.connect(_after_delete, sender=model, dispatch_uid=f"{uid}-delete")
    m2m_changed.connect(_m2m_changed, sender=m.Machine.pools.through, dispatch_uid="audit-pools")
