"""One lock per datacenter: plan applies and inventory writes take the same one.

Everything that feeds a datacenter's plan (its IPs, pools, machines, live
slices) changes only under this lock, so an apply never sees an IP vanish
between planning and writing, and an inventory edit never lands between a
plan's computation and its write.
"""

from __future__ import annotations

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
        list(Datacenter.objects.select_for_update().filter(pk=datacenter_id).values_list("pk"))
    except OperationalError:
        raise DatacenterBusy(constants.ERR_LOCKED % {"datacenter": code or datacenter_id}) from None
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = 0")
