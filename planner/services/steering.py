"""Steering marks and gateways: the writes behind the steering table.

A machine's mark is allocated the first time a steering table needs it, from a
per-datacenter counter that only goes up, so a mark is never renumbered when
machines join or leave and never handed to another machine, even after its
owner is deleted (docs/design.md: a renumbered mark sends live flows to the wrong
host, which answers with a reset).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from allocator.steering import MARK_BASE
from planner import signing
from planner.choices import KeyStatus
from planner.models import Datacenter, Gateway, Machine, SigningKey
from planner.selectors import current_revision, steering_table
from planner.services.locks import datacenter_lock
from planner.steering import SteeringRow, steering_document, steering_etag

GATEWAY_AUDIENCE = "portslice-gateway"

GATEWAY_STATUSES = ("applied", "failed")


def steering_marks_assign(*, datacenter: Datacenter) -> int:
    """Give each machine of ``datacenter`` without a mark the next ones; returns how many."""
    if not Machine.objects.filter(datacenter=datacenter, steering_mark__isnull=True).exists():
        return 0
    with transaction.atomic():
        # The datacenter lock orders concurrent allocators (and plan applies).
        datacenter_lock(datacenter.pk, code=datacenter.code)
        issued = Datacenter.objects.values_list("marks_issued", flat=True).get(pk=datacenter.pk)
        unmarked = list(
            Machine.objects.filter(datacenter=datacenter, steering_mark__isnull=True)
            .order_by("hostname")
            .values_list("pk", flat=True)
        )
        for n, pk in enumerate(unmarked, issued + 1):
            Machine.objects.filter(pk=pk).update(steering_mark=MARK_BASE + n)
        Datacenter.objects.filter(pk=datacenter.pk).update(marks_issued=issued + len(unmarked))
    return len(unmarked)


def steering_rows(*, datacenter: Datacenter) -> list[SteeringRow]:
    """The live steering table with every machine marked (allocating marks it lacks)."""
    for _ in range(3):
        steering_marks_assign(datacenter=datacenter)
        rows = steering_table(datacenter=datacenter)
        if all(row.mark for row in rows):
            return rows
        # A plan gave slices to a new machine between the two statements: mark it too.
    raise RuntimeError(f"machines of {datacenter.code} keep appearing without a steering mark")


def gateway_ack(
    *,
    name: str,
    datacenter: str,
    revision: int,
    etag: str,
    status: str,
    detail: str = "",
    slices: int = 0,
    at: datetime | None = None,
) -> Gateway | None:
    """Record which steering table gateway ``name`` runs; ``None`` for an unknown datacenter.

    An ack for an older revision than the one recorded (acks may arrive out of
    order) only refreshes ``last_seen``; so does a heartbeat (the same ETag
    again, with no detail), which the gateway sends after each poll that found
    nothing new.
    """
    if status not in GATEWAY_STATUSES:
        raise ValueError(f"status: {status!r} is not applied or failed")
    dc = Datacenter.objects.filter(code=datacenter).first()
    if dc is None:
        return None
    at = at or timezone.now()
    with transaction.atomic():
        gateway, _ = Gateway.objects.select_for_update().get_or_create(
            name=name, defaults={"datacenter": dc}
        )
        changes: dict[str, Any] = {"last_seen": at, "datacenter": dc}
        if revision >= gateway.revision or gateway.datacenter_id != dc.pk:
            changes.update(revision=revision, etag=etag, status=status)
            if detail:  # an empty detail is a heartbeat: keep what the apply said
                changes["detail"] = detail[:2000]
            if status == "applied" and etag != gateway.etag:
                changes.update(applied_at=at, slices=slices)
        Gateway.objects.filter(pk=gateway.pk).update(**changes)
    gateway.refresh_from_db()
    return gateway


def steering_token(*, datacenter: Datacenter, now: datetime | None = None) -> str | None:
    """The datacenter's steering table signed for its gateway; ``None`` without a signing key.

    Claims: ``iss``, ``aud`` "portslice-gateway", ``sub`` the datacenter code,
    ``iat``, ``exp``, ``revision``, ``etag`` (as the API's ETag) and ``steering``
    (the API's JSON document). The broker is untrusted: the gateway verifies it
    with the keys the agents trust.
    """
    key = SigningKey.objects.filter(status=KeyStatus.ACTIVE).first()
    if key is None:
        return None
    rows = steering_rows(datacenter=datacenter)
    revision = current_revision(datacenter=datacenter)
    document = steering_document(rows, datacenter=datacenter.code, revision=revision)
    issued = int((now or timezone.now()).timestamp())
    claims = {
        "iss": signing.ISSUER,
        "aud": GATEWAY_AUDIENCE,
        "sub": datacenter.code,
        "iat": issued,
        "exp": issued + settings.BUNDLE_TTL_SECONDS,
        "revision": revision,
        "etag": steering_etag(document),
        "steering": document,
    }
    return signing.sign_claims(claims, kid=key.kid)


def steering_publish(*, datacenter: Datacenter, send: Callable[[str, str], None]) -> bool:
    """Hand the signed table to ``send(datacenter_code, token)``; False without a key."""
    token = steering_token(datacenter=datacenter)
    if token is None:
        return False
    send(datacenter.code, token)
    return True
