"""Celery tasks: thin wrappers that load, call a service, and retry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from celery import shared_task

from planner import services
from planner.audit import acting_as
from planner.celery import agent_queue, app
from planner.models import ConfigBundle


def _send_bundle(hostname: str, token: str) -> None:
    app.send_task("agent.apply_bundle", args=[token], queue=agent_queue(hostname))


@shared_task(name="planner.publish_revision", autoretry_for=(OSError,), retry_backoff=True)
def publish_revision(revision_id: int) -> int:
    bundles = ConfigBundle.objects.filter(revision_id=revision_id).select_related("machine")
    with acting_as("system:celery"):
        return services.bundles_send(bundles=bundles, send=_send_bundle)


@shared_task(name="planner.record_ack")
def record_ack(
    hostname: str,
    serial: int,
    status: str,
    reason: str = "",
    detail: str = "",
    applied_at: float | None = None,
    **extra: Any,
) -> int:
    at = datetime.fromtimestamp(applied_at).astimezone() if applied_at else None
    return services.bundle_ack(
        hostname=hostname, serial=serial, status=status, reason=reason, detail=detail, at=at
    )
