"""Celery tasks: thin wrappers that load, call a service, and retry.

``planner.record_ack`` and ``planner.record_usage`` take the keyword arguments
of :mod:`contract` (agent/worker.py shows them). They come off the broker, which
is not trusted: each message is checked against the contract first, and one
that breaks it is logged, counted and dropped, never stored.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

import contract
from planner import selectors
from planner.audit import acting_as
from planner.celery import app
from planner.choices import BundleStatus
from planner.models import ConfigBundle, PlanRevision
from planner.services import bundles as bundle_services
from planner.services import plans, rebalance, reports
from planner.services import steering as steering_services

logger = logging.getLogger(__name__)


def _send_bundle(hostname: str, token: str) -> None:
    app.send_task(contract.APPLY_TASK, args=[token], queue=contract.agent_queue(hostname))


def _send_steering(datacenter: str, token: str) -> None:
    # Only the newest table matters: drop any a gateway has not taken yet, so a
    # queue nobody consumes (no gateway in that datacenter) holds one table, not
    # every table ever published. Best effort; the gateway's poll covers a race.
    queue = contract.gateway_queue(datacenter)
    try:
        with app.connection_for_write() as connection:
            connection.default_channel.queue_purge(queue)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a queue not declared yet (RabbitMQ) is fine
        logger.debug("could not purge %s", queue, exc_info=True)
    app.send_task(contract.GATEWAY_APPLY_TASK, args=[token], queue=queue)


@shared_task(name=contract.PUBLISH_TASK, autoretry_for=(OSError,), retry_backoff=True)
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


@shared_task(name=contract.GATEWAY_ACK_TASK)
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


@shared_task(name=contract.ACK_TASK)
def record_ack(**message: Any) -> int:
    try:
        ack = contract.validate_ack(message)
    except contract.ContractError as error:
        logger.warning("ack refused (not stored): %s", error)
        reports.report_reject(kind="ack", error=error)
        return 0
    return reports.bundle_ack(
        hostname=ack.hostname,
        serial=ack.serial,
        status=ack.status,
        reason=ack.reason,
        detail=ack.detail,
        applied_serial=ack.applied_serial,
        enforcement=ack.enforcement,
        at=ack.applied_at,
    )


@shared_task(name=contract.USAGE_TASK)
def record_usage(**message: Any) -> int:
    try:
        report = contract.validate_usage(message)
    except contract.ContractError as error:
        logger.warning("usage report refused (not stored): %s", error)
        reports.report_reject(kind="usage", error=error)
        return 0
    return reports.usage_record(
        hostname=report.hostname,
        at=report.at,
        slices=[item.as_dict() for item in report.slices],
    )


@shared_task(name="planner.expire_usage")
def expire_usage() -> int:
    """Usage history and the rebalance runs that read it, past their retention."""
    return reports.usage_expire() + rebalance.rebalance_runs_expire()


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


@shared_task(name="planner.mark_stale")
def mark_stale() -> int:
    return reports.machines_mark_stale()


@shared_task(name="planner.rebalance")
def rebalance_due() -> int:
    """Rebalance every datacenter whose interval has passed; returns how many ran."""
    with acting_as("system:rebalance"):
        return len(rebalance.rebalance_due())
