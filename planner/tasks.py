"""Celery tasks: thin wrappers that load, call a service, and retry.

``planner.record_ack`` and ``planner.record_usage`` take the keyword
arguments documented in agent/worker.py: that docstring is the contract.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import shared_task

from planner import selectors
from planner.audit import acting_as
from planner.celery import agent_queue, app
from planner.choices import BundleStatus
from planner.models import ConfigBundle
from planner.services import bundles as bundle_services
from planner.services import plans, reports


def _send_bundle(hostname: str, token: str) -> None:
    app.send_task("agent.apply_bundle", args=[token], queue=agent_queue(hostname))


@shared_task(name="planner.publish_revision", autoretry_for=(OSError,), retry_backoff=True)
def publish_revision(revision_id: int) -> int:
    bundles = ConfigBundle.objects.filter(
        revision_id=revision_id, status=BundleStatus.PENDING
    ).select_related("machine")
    with acting_as("system:celery"):
        return bundle_services.bundles_send(bundles=bundles, send=_send_bundle)


@shared_task(name="planner.record_ack")
def record_ack(
    *,
    hostname: str,
    serial: int | None,
    status: str,
    reason: str = "",
    detail: str = "",
    applied_serial: int | None = None,
    applied_at: str = "",
    enforcement: dict[str, Any] | None = None,
    **extra: Any,
) -> int:
    at = datetime.fromisoformat(applied_at) if applied_at else None
    return reports.bundle_ack(
        hostname=hostname,
        serial=serial,
        status=status,
        reason=reason,
        detail=detail,
        applied_serial=applied_serial,
        enforcement=enforcement,
        at=at,
    )


@shared_task(name="planner.record_usage")
def record_usage(*, hostname: str, at: float, slices: list[dict[str, Any]], **extra: Any) -> int:
    return reports.usage_record(
        hostname=hostname, at=datetime.fromtimestamp(at, tz=UTC), slices=slices
    )


@shared_task(name="planner.expire_usage")
def expire_usage() -> int:
    return reports.usage_expire()


@shared_task(name="planner.reconcile")
def reconcile() -> int:
    """Send every machine's newest unapplied bundle again (a lost message, a broker
    that was down at commit, bundles signed by a key rotation)."""
    with acting_as("system:celery"):
        return bundle_services.bundles_send(bundles=selectors.bundles_due(), send=_send_bundle)


@shared_task(name="planner.expire_drains")
def expire_drains() -> int:
    with acting_as("system:celery"):
        return len(plans.drains_expire())
