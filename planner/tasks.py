"""Celery tasks: thin wrappers that load, call a service, and retry.

``planner.record_ack`` and ``planner.record_usage`` take the keyword
arguments documented in agent/worker.py: that docstring is the contract.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import shared_task

from planner import selectors
from planner.audit import acting_as
from planner.celery import agent_queue, app, gateway_queue
from planner.choices import BundleStatus
from planner.models import ConfigBundle, PlanRevision
from planner.services import bundles as bundle_services
from planner.services import plans, reports
from planner.services import steering as steering_services

logger = logging.getLogger(__name__)


def _send_bundle(hostname: str, token: str) -> None:
    app.send_task("agent.apply_bundle", args=[token], queue=agent_queue(hostname))


def _send_steering(datacenter: str, token: str) -> None:
    # Only the newest table matters: drop any a gateway has not taken yet, so a
    # queue nobody consumes (no gateway in that datacenter) holds one table, not
    # every table ever published. Best effort; the gateway's poll covers a race.
    queue = gateway_queue(datacenter)
    try:
        with app.connection_for_write() as connection:
            connection.default_channel.queue_purge(queue)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a queue not declared yet (RabbitMQ) is fine
        logger.debug("could not purge %s", queue, exc_info=True)
    app.send_task("gateway.apply_steering", args=[token], queue=queue)


@shared_task(name="planner.publish_revision", autoretry_for=(OSError,), retry_backoff=True)
def publish_revision(revision_id: int) -> int:
    bundles = ConfigBundle.objects.filter(
        revision_id=revision_id, status=BundleStatus.PENDING
    ).select_related("machine")
    with acting_as("system:celery"):
        sent = bundle_services.bundles_send(bundles=bundles, send=_send_bundle)
    revision = PlanRevision.objects.select_related("datacenter").filter(pk=revision_id).first()
    if revision is not None:
        steering_services.steering_publish(datacenter=revision.datacenter, send=_send_steering)
    return sent


@shared_task(name="planner.record_gateway_ack")
def record_gateway_ack(
    *,
    name: str,
    datacenter: str,
    revision: int,
    etag: str,
    status: str,
    detail: str = "",
    slices: int = 0,
    **extra: Any,
) -> bool:
    """What a gateway applied; the kwargs are agent/gateway.py's ``Gateway._ack``."""
    gateway = steering_services.gateway_ack(
        name=name, datacenter=datacenter, revision=revision, etag=etag, status=status,
        detail=detail, slices=slices,
    )  # fmt: skip
    return gateway is not None


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
