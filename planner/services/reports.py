"""What agents report back: bundle acknowledgements and socket usage."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from contract import ContractError, not_after_issued
from planner.choices import (
    BundleStatus,
)
from planner.models import (
    ConfigBundle,
    Machine,
    PlanRevision,
    PortSlice,
    ReportRejection,
    SliceUsage,
    UsageSample,
)
from planner.selectors import stale_cutoff

logger = logging.getLogger(__name__)

UNKNOWN_HOST = "no machine by that name"


def bundle_ack(
    *,
    hostname: str,
    serial: int | None,
    status: str,
    reason: str = "",
    detail: str = "",
    applied_serial: int | None = None,
    revision: int | None = None,
    enforcement: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> int:
    """Record what an agent did with bundle ``serial``; returns bundle rows updated.

    ``applied_serial`` is what the host enforces after this message; the
    machine's record only moves forward (acks may arrive out of order), and so
    does ``last_seen``. Raises :class:`contract.ContractError`, storing nothing,
    for a host the planner does not know and for a serial or revision newer
    than any it issued to that host: the broker is untrusted.
    """
    at = at or timezone.now()
    if status not in {BundleStatus.APPLIED, BundleStatus.REJECTED, BundleStatus.FAILED}:
        raise ValueError(f"status: {status!r} is not applied, rejected or failed")
    with transaction.atomic():
        # The machine row first, then its bundles: the order bundles_build locks
        # them in, so an ack and a plan apply never wait on each other in a cycle.
        known = (
            Machine.objects.select_for_update()
            .filter(hostname=hostname)
            .values_list("pk", "bundle_serial", "datacenter_id")
            .first()
        )
        if known is None:
            raise ContractError("ack", "hostname", hostname, UNKNOWN_HOST)
        pk, issued, datacenter_id = known
        not_after_issued("ack", "serial", serial, issued)
        not_after_issued("ack", "applied_serial", applied_serial, issued)
        not_after_issued("ack", "revision", revision, _revision_issued(datacenter_id))
        machine = Machine.objects.filter(pk=pk)
        changes: dict[str, Any] = {"stale_since": None}
        if enforcement:
            changes["enforcement"] = enforcement
        machine.update(**changes)
        machine.filter(Q(last_seen__isnull=True) | Q(last_seen__lt=at)).update(last_seen=at)
        if applied_serial:
            machine.filter(applied_serial__lt=applied_serial).update(applied_serial=applied_serial)
        updated = 0
        if serial is not None:
            error = f"{reason}: {detail}"[:500] if reason else ""
            updated = ConfigBundle.objects.filter(machine_id=pk, serial=serial).update(
                status=status, acked_at=at, error=error
            )
    return updated


def _revision_issued(datacenter_id: int | None) -> int:
    """The newest plan revision number of a datacenter (0 for none): what an ack may name."""
    if datacenter_id is None:
        return 0
    newest = (
        PlanRevision.objects.filter(datacenter_id=datacenter_id)
        .order_by("-number")
        .values_list("number", flat=True)
        .first()
    )
    return newest or 0


def usage_record(
    *, hostname: str, at: datetime, slices: Iterable[dict[str, Any]], serial: int | None = None
) -> int:
    """Store an agent's report: the latest figures per slice, and a history row per
    slice at most every ``USAGE_SAMPLE_SECONDS``. Slices the host no longer owns
    are ignored. Returns how many slices were recorded.

    Raises :class:`contract.ContractError`, storing nothing, for a host the
    planner does not know and a ``serial`` (the bundle the host enforces) newer
    than any issued to it.
    """
    machine = Machine.objects.filter(hostname=hostname).first()
    if machine is None:
        raise ContractError("usage", "hostname", hostname, UNKNOWN_HOST)
    not_after_issued("usage", "serial", serial, machine.bundle_serial)
    owned = {
        (ip, lo, hi): pk
        for pk, ip, lo, hi in PortSlice.objects.filter(machine=machine).values_list(
            "pk", "ip__address", "lo", "hi"
        )
    }
    found = [(owned.get((r["ip"], r["lo"], r["hi"])), r) for r in slices]
    reported: list[tuple[int, dict[str, Any]]] = [(pk, r) for pk, r in found if pk is not None]
    since = at - timedelta(seconds=settings.USAGE_SAMPLE_SECONDS)
    with transaction.atomic():
        # Reports may arrive out of order (several workers): an older one never
        # replaces newer figures, and history gets one row per sampling period.
        newer = set(
            SliceUsage.objects.filter(
                slice_id__in=[pk for pk, _ in reported], at__gte=at
            ).values_list("slice_id", flat=True)
        )
        # A report's slices are sampled together or not at all: rebalance adds up
        # one machine's slices at one moment, so a slice sampled out of step with
        # its siblings (a new one, after growth) would halve the machine's figure.
        sampled = UsageSample.objects.filter(machine=machine, at__gt=since).exists()
        SliceUsage.objects.bulk_create(
            [
                SliceUsage(slice_id=pk, at=at, tcp=r["tcp"], udp=r["udp"], buckets=r["buckets"])
                for pk, r in reported
                if pk not in newer
            ],
            update_conflicts=True,
            unique_fields=["slice"],
            update_fields=["at", "tcp", "udp", "buckets"],
        )
        UsageSample.objects.bulk_create(
            UsageSample(
                machine=machine,
                ip=r["ip"],
                lo=r["lo"],
                hi=r["hi"],
                at=at,
                sockets=r["tcp"] + r["udp"],
            )
            for _, r in reported
            if not sampled
        )
        # A late report (older than what the machine last said) does not revive it.
        Machine.objects.filter(pk=machine.pk).filter(
            Q(last_seen__isnull=True) | Q(last_seen__lt=at)
        ).update(last_seen=at, stale_since=None)
    return len(reported)


def usage_expire(*, now: datetime | None = None) -> int:
    """Delete history older than ``USAGE_RETENTION_DAYS``; returns rows deleted."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.USAGE_RETENTION_DAYS)
    deleted, _ = UsageSample.objects.filter(at__lt=cutoff).delete()
    return deleted


def report_reject(*, kind: str, error: ContractError, at: datetime | None = None) -> None:
    """Count a message that broke the contract (by kind and field); it is not stored."""
    at = at or timezone.now()
    text = str(error)[:300]
    with transaction.atomic():
        row, created = ReportRejection.objects.get_or_create(
            kind=kind, field=error.field, defaults={"count": 1, "last_at": at, "last_error": text}
        )
        if not created:
            ReportRejection.objects.filter(pk=row.pk).update(
                count=F("count") + 1, last_at=at, last_error=text
            )


def machines_mark_stale(*, now: datetime | None = None) -> int:
    """Mark machines whose agent has been silent since the stale cutoff; returns how many
    were newly marked. A machine never heard from is not stale: it has no agent yet."""
    now = now or timezone.now()
    marked = Machine.objects.filter(
        last_seen__lt=stale_cutoff(now=now), stale_since__isnull=True
    ).update(stale_since=now)
    if marked:
        logger.warning(
            "%d agent(s) newly stale (silent for %s min)", marked, settings.AGENT_STALE_MINUTES
        )
    return marked
