"""Celery tasks: thin wrappers that load, call a service, and retry.

``planner.record_ack``, ``planner.record_usage`` and ``planner.record_gateway_ack``
take the keyword arguments of :mod:`contract` (agent/worker.py and
agent/gateway.py build them). They come off the broker, which is not trusted:
each message is checked against the contract first, and one that breaks it is
logged, counted and dropped, never stored; none of them raises on its input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

import contract
from planner import selectors
from planner.audit import acting_as
from planner.celery import app
from planner.choices import BundleStatus
from planner.models import ConfigBundle, Datacenter, PlanRevision
from planner.services import bundles as bundle_services
from planner.services import plans, rebalance, reports
from planner.services import steering as steering_services
from planner.services.locks import steering_publish_lock

logger = logging.getLogger(__name__)


def _purge(celery: Celery, queue: str) -> None:
    """Drop what ``queue`` holds. Best effort: a queue not declared yet (RabbitMQ) is fine."""
    try:
        with celery.connection_for_write() as connection:
            connection.default_channel.queue_purge(queue)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - see above
        logger.debug("could not purge %s", queue, exc_info=True)


def bundle_sender(celery: Celery, *, replace: bool) -> Callable[[str, str], None]:
    """``send(hostname, token)`` for :func:`bundles_send`: ``agent.apply_bundle`` on
    the host's queue, expiring with the token (an agent that takes it later
    drops it unread; a fresher one follows).

    ``replace`` (reconcile's resends) first drops what the queue still holds:
    only the newest bundle matters, so a host without a running agent keeps one
    message waiting, not one per resend (issue 15: the filesystem broker of the
    quick start grew by 150,000 files a day).
    """

    def send(hostname: str, token: str) -> None:
        queue = contract.agent_queue(hostname)
        if replace:
            _purge(celery, queue)
        celery.send_task(
            contract.APPLY_TASK, args=[token], queue=queue, expires=settings.BUNDLE_TTL_SECONDS
        )

    return send


_send_bundle = bundle_sender(app, replace=False)
_resend_bundle = bundle_sender(app, replace=True)


def _send_steering(datacenter: str, token: str) -> None:
    # Only the newest table matters: drop any a gateway has not taken yet, so a
    # queue nobody consumes (no gateway in that datacenter) holds one table, not
    # every table ever published. Best effort; the gateway's poll covers a race.
    queue = contract.gateway_queue(datacenter)
    _purge(app, queue)
    app.send_task(contract.GATEWAY_APPLY_TASK, args=[token], queue=queue)


@shared_task(name=contract.PUBLISH_TASK, autoretry_for=(OSError,), retry_backoff=True)
def publish_revision(revision_id: int) -> int:
    """Put the revision's pending bundles on their agents' queues, then ask for the
    steering table in a task of its own: signing 100,000 rows takes seconds, and
    the agents' acks should not wait behind it."""
    bundles = ConfigBundle.objects.filter(
        revision_id=revision_id, status=BundleStatus.PENDING
    ).select_related("machine")
    with acting_as("system:celery"):
        sent = bundle_services.bundles_send(bundles=bundles, send=_send_bundle)
    revision = PlanRevision.objects.filter(pk=revision_id).values_list("datacenter_id", "number")
    for datacenter_id, number in revision:
        publish_steering.apply_async((datacenter_id, number), queue=contract.PLANNER_QUEUE)
    return sent


@shared_task(
    name=contract.STEERING_TASK,
    bind=True,
    # Two minutes of waiting for another publish; past that the next plan's task
    # (or the gateway's own poll of the API) brings the table.
    max_retries=int(120 / settings.STEERING_RETRY_SECONDS),
    autoretry_for=(OSError,),
    retry_backoff=True,
)
def publish_steering(self: Any, datacenter_id: int, revision: int) -> bool:
    """Sign and send the datacenter's steering table as of now, for revision ``revision``.

    One at a time per datacenter (:func:`planner.services.locks.steering_publish_lock`):
    while another process publishes, this one retries shortly. Skipped when a
    newer revision has been applied since (asked before waiting, and again once
    the lock is taken): that revision's own task publishes a table that has this
    one's slices too. True when a table was sent.
    """

    def still_newest() -> Datacenter | None:
        """The datacenter, unless it is gone or a newer revision was applied."""
        datacenter = Datacenter.objects.filter(pk=datacenter_id).first()
        if datacenter is None or selectors.current_revision(datacenter=datacenter) > revision:
            return None
        return datacenter

    if still_newest() is None:
        return False
    with steering_publish_lock(datacenter_id) as mine:
        if not mine:
            raise self.retry(countdown=settings.STEERING_RETRY_SECONDS)
        datacenter = still_newest()
        if datacenter is None:
            return False
        return steering_services.steering_publish(datacenter=datacenter, send=_send_steering)


def _consume(kind: str, message: dict[str, Any], store: Callable[[], int]) -> int:
    """Run ``store`` (validate, then write) for one broker message; never raise on input.

    A message that breaks the contract, or one the receiver refuses (unknown
    sender, serial never issued), is logged and counted by kind and field, and
    nothing of it is stored: the write runs in its own transaction (a savepoint
    inside an outer one), rolled back whole on any error. An error no check
    foresaw is counted under the field ``*`` rather than crashing the worker; a
    database that cannot count it either is an outage, not input, and raises.
    """
    try:
        with transaction.atomic():
            return store()
    except contract.ContractError as error:
        logger.warning("%s refused (not stored): %s", kind, error)
        reports.report_reject(kind=kind, error=error)
    except Exception as error:  # noqa: BLE001 - the broker's input must never crash the worker
        logger.exception("%s could not be stored (counted, not stored)", kind)
        refused = contract.ContractError(kind, "*", sorted(message)[:8], f"not storable: {error!r}")
        reports.report_reject(kind=kind, error=refused)
    return 0


@shared_task(name=contract.GATEWAY_ACK_TASK)
def record_gateway_ack(**message: Any) -> bool:
    """What a gateway applied; the kwargs of :func:`contract.gateway_ack_message`."""

    def store() -> int:
        steering_services.gateway_ack(ack=contract.validate_gateway_ack(message))
        return 1

    return bool(_consume("gateway_ack", message, store))


@shared_task(name=contract.ACK_TASK)
def record_ack(**message: Any) -> int:
    def store() -> int:
        ack = contract.validate_ack(message, now=timezone.now())
        return reports.bundle_ack(
            hostname=ack.hostname,
            serial=ack.serial,
            status=ack.status,
            reason=ack.reason,
            detail=ack.detail,
            applied_serial=ack.applied_serial,
            revision=ack.revision,
            enforcement=ack.enforcement,
            at=ack.applied_at,
        )

    return _consume("ack", message, store)


@shared_task(name=contract.USAGE_TASK)
def record_usage(**message: Any) -> int:
    def store() -> int:
        report = contract.validate_usage(message, now=timezone.now())
        return reports.usage_record(
            hostname=report.hostname,
            at=report.at,
            serial=report.serial,
            slices=[item.as_dict() for item in report.slices],
        )

    return _consume("usage", message, store)


@shared_task(name="planner.expire_usage")
def expire_usage() -> int:
    """Usage history and the rebalance runs that read it, past their retention."""
    return reports.usage_expire() + rebalance.rebalance_runs_expire()


@shared_task(name="planner.reconcile")
def reconcile() -> int:
    """Send every machine's newest unapplied bundle again when it is due (a lost
    message, a broker that was down at commit, bundles signed by a key rotation).
    Resends back off per bundle (doubling, capped) and replace what the host's
    queue still holds, so a machine without an agent costs one waiting message."""
    with acting_as("system:celery"):
        return bundle_services.bundles_send(bundles=selectors.bundles_due(), send=_resend_bundle)


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
