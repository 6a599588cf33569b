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
from planner.models import ConfigBundle
from planner.services import bundles as bundle_services
from planner.services import plans, rebalance, reports

logger = logging.getLogger(__name__)


def _send_bundle(hostname: str, token: str) -> None:
    app.send_task(contract.APPLY_TASK, args=[token], queue=contract.agent_queue(hostname))


@shared_task(name=contract.PUBLISH_TASK, autoretry_for=(OSError,), retry_backoff=True)
def publish_revision(revision_id: int) -> int:
    bundles = ConfigBundle.objects.filter(
        revision_id=revision_id, status=BundleStatus.PENDING
    ).select_related("machine")
    with acting_as("system:celery"):
        return bundle_services.bundles_send(bundles=bundles, send=_send_bundle)


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
