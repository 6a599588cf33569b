"""Signed config bundles: build one per machine, hand them to the broker."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from planner import constants, signing
from planner.choices import (
    BundleStatus,
    KeyStatus,
)
from planner.models import (
    ConfigBundle,
    Machine,
    PlanRevision,
    SigningKey,
)
from planner.selectors import (
    bundle_claims,
    bundle_slices,
    resend_delay,
    shared_prefixes,
)

# A bundle that may still be (re)sent: not applied, rejected or superseded.
RESENDABLE = (BundleStatus.PENDING, BundleStatus.SENT, BundleStatus.FAILED)
_BATCH = 2000


def bundles_build(
    *,
    machines: Iterable[Machine],
    revision: PlanRevision | None = None,
    now: datetime | None = None,
) -> list[ConfigBundle]:
    """Sign a fresh bundle for each machine: its live slices, a new serial each.

    Serials come from one ``UPDATE ... SET bundle_serial = GREATEST(bundle_serial
    + 1, <now in ms>)``, whose row locks order concurrent builders, so serials
    strictly increase per machine, across deletion and re-creation too. Older
    unacknowledged bundles of those machines are superseded.
    Raises :class:`planner.signing.SigningKeyMissing` without an active key.
    """
    ids = [m.pk for m in machines]
    if not ids:
        return []
    now = now or timezone.now()
    key = SigningKey.objects.filter(status=KeyStatus.ACTIVE).first()
    if key is None:
        raise signing.SigningKeyMissing(constants.ERR_NO_ACTIVE_KEY)
    with transaction.atomic():
        # At least the wall clock in ms: a machine deleted and re-created under
        # its hostname never gets a serial its agent has already applied.
        floor = Value(time.time_ns() // 1_000_000)
        Machine.objects.filter(pk__in=ids).update(
            bundle_serial=Greatest(F("bundle_serial") + 1, floor)
        )
        machines = Machine.objects.filter(pk__in=ids).select_related("datacenter")
        serials = dict(Machine.objects.filter(pk__in=ids).values_list("pk", "bundle_serial"))
        ConfigBundle.objects.filter(
            machine_id__in=ids, status__in=[BundleStatus.PENDING, BundleStatus.SENT]
        ).update(status=BundleStatus.SUPERSEDED)
        slices = bundle_slices(machine_ids=ids)
        shared = shared_prefixes(datacenter_ids={m.datacenter_id for m in machines})
        expires = now + timedelta(seconds=settings.BUNDLE_TTL_SECONDS)
        bundles = [
            ConfigBundle(
                machine=m,
                serial=serials[m.pk],
                revision=revision,
                kid=key.kid,
                expires_at=expires,
                token=signing.sign_claims(
                    bundle_claims(
                        machine=m,
                        serial=serials[m.pk],
                        revision=revision,
                        slices=slices.get(m.pk, []),
                        shared=shared.get(m.datacenter_id, []),
                        now=now,
                    ),
                    kid=key.kid,
                ),
            )
            for m in machines
        ]
        return ConfigBundle.objects.bulk_create(bundles, batch_size=_BATCH)


def bundles_send(*, bundles: Iterable[ConfigBundle], send: Any, now: datetime | None = None) -> int:
    """Claim the bundles, then hand each to ``send(hostname, token)``; returns how many.

    ``send`` puts the token on the machine's queue (the Celery task does it by
    name); the broker is an untrusted transport, the signature protects the host.
    A bundle is claimed only if it is still in the state this caller read (the
    rows are locked, re-read and moved to ``sent`` in one transaction), so when
    two workers hold the same bundles (a publish and a reconcile, two beat
    ticks) each bundle is sent once; one acked meanwhile is not claimed. If
    ``send`` raises (the broker is down), the claims not yet sent are undone,
    so a retry or the next ``planner.reconcile`` finds them as they were.
    Each claim counts an attempt and sets when the bundle is due again
    (:func:`planner.selectors.resend_delay`: doubling, capped).
    """
    read = {bundle.pk: bundle for bundle in bundles}
    now = now or timezone.now()
    claimed = _claim(read, now)
    for sent, bundle in enumerate(claimed):
        try:
            send(bundle.machine.hostname, bundle.token)
        except BaseException:
            unsent = claimed[sent:]
            for old in unsent:
                ConfigBundle.objects.filter(
                    pk=old.pk, status=BundleStatus.SENT, sent_at=now
                ).update(
                    status=old.status,
                    sent_at=old.sent_at,
                    attempts=old.attempts,
                    next_send_at=old.next_send_at,
                )
            raise
    return len(claimed)


def _claim(read: dict[int, ConfigBundle], now: datetime) -> list[ConfigBundle]:
    """The bundles of ``read`` still as read, now marked sent: one transaction, one UPDATE."""
    with transaction.atomic():
        # Wait for rows another claimer holds (in pk order, so two never deadlock),
        # then see what it left: rows it claimed are no longer as this caller read them.
        rows = (
            ConfigBundle.objects.select_for_update()
            .filter(pk__in=list(read), status__in=RESENDABLE)
            .order_by("pk")
        )
        current = {pk: (status, sent_at) for pk, status, sent_at in rows.values_list(
            "pk", "status", "sent_at"
        )}  # fmt: skip
        claimed = [b for pk, b in read.items() if current.get(pk) == (b.status, b.sent_at)]
        # One UPDATE per attempt count (a handful): the next send waits twice as long.
        by_attempts: dict[int, list[int]] = {}
        for bundle in claimed:
            by_attempts.setdefault(bundle.attempts, []).append(bundle.pk)
        for attempts, pks in by_attempts.items():
            ConfigBundle.objects.filter(pk__in=pks).update(
                status=BundleStatus.SENT,
                sent_at=now,
                attempts=attempts + 1,
                next_send_at=now + resend_delay(attempts=attempts + 1),
            )
    return claimed
