"""One lock per datacenter: plan applies and inventory writes take the same one.

Everything that feeds a datacenter's plan (its IPs, pools, machines, live
slices) changes only under this lock, so an apply never sees an IP vanish
between planning and writing, and an inventory edit never lands between a
plan's computation and its write.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import OperationalError, connection

from planner import constants
from planner.models import Datacenter


class Conflict(Exception):
    """A write that cannot go ahead as asked; the API answers 409 with this text.

    ``details`` carries what a client needs to act (the slices in the way,
    a fresh preview).
    """

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.details = details


class DatacenterBusy(Conflict):
    """Another writer held the datacenter longer than ``PLAN_LOCK_WAIT_SECONDS``."""


def datacenter_lock(datacenter_id: int | None, *, code: str = "") -> None:
    """Hold the datacenter row until the transaction ends (call inside ``atomic``).

    PostgreSQL waits for the row lock at most ``PLAN_LOCK_WAIT_SECONDS``, then
    the caller gets :class:`DatacenterBusy`. SQLite needs nothing here: its
    write transactions are ``BEGIN IMMEDIATE`` and so already one at a time.
    """
    if datacenter_id is None or connection.vendor != "postgresql":
        return
    wait_ms = int(settings.PLAN_LOCK_WAIT_SECONDS * 1000)
    with connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = {wait_ms}")
    try:
        # FOR NO KEY UPDATE: exclusive among lockers, but not against the KEY SHARE a
        # foreign-key check takes. An agent's ack updates its machine row more than
        # once, so PostgreSQL checks the machine's datacenter key at commit; with
        # FOR UPDATE that ack and a locker waiting for the machine's row (steering
        # marks, a plan's bundles) deadlocked.
        rows = Datacenter.objects.select_for_update(no_key=True).filter(pk=datacenter_id)
        list(rows.values_list("pk"))
    except OperationalError:
        raise DatacenterBusy(constants.ERR_LOCKED % {"datacenter": code or datacenter_id}) from None
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = 0")


# pg_try_advisory_lock(key1, key2): key1 names what is locked, key2 the datacenter.
_STEERING_LOCK = 0x5354  # "ST"


@contextmanager
def steering_publish_lock(datacenter_id: int) -> Iterator[bool]:
    """Whether this process may sign and send the datacenter's steering table now: one
    at a time per datacenter, so a burst of plans keeps at most one worker process
    busy with tables (100,000 rows each) and the others free for the agents' acks.

    A session-level advisory lock, not a transaction: nothing else waits on it,
    and a worker that dies releases it with its connection. SQLite (the quick
    start, one worker process) always may.
    """
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_STEERING_LOCK, datacenter_id])
        (acquired,) = cursor.fetchone()
    try:
        yield bool(acquired)
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_STEERING_LOCK, datacenter_id])
