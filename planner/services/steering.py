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

import contract
from allocator.steering import MARK_BASE
from planner import signing
from planner.choices import KeyStatus
from planner.models import Datacenter, Gateway, Machine, SigningKey
from planner.selectors import current_revision, steering_table
from planner.services.locks import datacenter_lock
from planner.steering import SteeringRow, steering_document, steering_etag

GATEWAY_AUDIENCE = contract.GATEWAY_AUDIENCE


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


def gateway_register(*, name: str, datacenter: Datacenter) -> Gateway:
    """Register gateway ``name`` for ``datacenter`` (an admin's act); audited.

    Only a registered gateway's acks are recorded: the broker is untrusted, so
    a message cannot create a row or move a gateway to another datacenter. The
    name must be what the gateway sends (``PORTSLICE_GATEWAY_NAME``). Raises
    ``ValidationError`` naming the field for a bad or taken name.
    """
    gateway = Gateway(name=name, datacenter=datacenter)
    gateway.full_clean(exclude=["revision", "etag", "status", "detail", "slices"])
    gateway.save()
    return gateway


def gateway_unregister(*, gateway: Gateway) -> None:
    """Forget a gateway; its acks are refused from now on. Audited."""
    gateway.delete()


def gateway_ack(*, ack: contract.GatewayAck, at: datetime | None = None) -> Gateway:
    """Record which steering table the registered gateway ``ack.name`` runs.

    Raises :class:`contract.ContractError` (the task counts it, nothing is
    stored) for a gateway nobody registered, one acking for a datacenter not its
    own, and a revision newer than the datacenter's applied plan. An ack for an
    older revision than the one recorded (acks may arrive out of order) only
    refreshes ``last_seen``; so does a heartbeat (the same ETag again, with no
    detail), which the gateway sends after each poll that found nothing new.
    """
    at = at or timezone.now()
    with transaction.atomic():
        gateway = (
            Gateway.objects.select_for_update()
            .select_related("datacenter")
            .filter(name=ack.name)
            .first()
        )
        if gateway is None:
            raise contract.ContractError(
                "gateway_ack", "name", ack.name, "no gateway registered by that name"
            )
        if gateway.datacenter.code != ack.datacenter:
            raise contract.ContractError(
                "gateway_ack",
                "datacenter",
                ack.datacenter,
                f"gateway is registered in {gateway.datacenter.code}",
            )
        contract.not_after_issued(
            "gateway_ack", "revision", ack.revision, current_revision(datacenter=gateway.datacenter)
        )
        changes: dict[str, Any] = {"last_seen": at}
        if ack.revision >= gateway.revision:
            changes.update(revision=ack.revision, etag=ack.etag, status=ack.status)
            if ack.detail:  # an empty detail is a heartbeat: keep what the apply said
                changes["detail"] = ack.detail
            if ack.status == contract.APPLIED and ack.etag != gateway.etag:
                changes.update(applied_at=at, slices=ack.slices)
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
