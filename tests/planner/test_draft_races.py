"""Finding 9 of issue 15: a superseded draft can never be applied.

Approval reads the draft's status again under the datacenter's lock, and
rebalance supersedes drafts under the same lock, so whichever comes second sees
what the first did, in both orders. On PostgreSQL, with the two sides in their
own threads and connections; each waits on the other through the lock itself
(seen in ``pg_stat_activity``), never on a sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction

from planner.models import Datacenter, PlanRevision, PortSlice
from planner.services.locks import datacenter_lock
from planner.services.plans import DraftNotWaiting
from planner.services.rebalance import _supersede_drafts, datacenter_rebalance, revision_approve
from tests.planner.test_rebalance import COLD, _grow_cold_machine, _report, dc  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)
WAIT = 60  # seconds: generous bounds on a loaded machine, never a speed


@pytest.fixture(autouse=True)
def _postgresql_only(settings: Any) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the datacenter lock is a PostgreSQL row lock (SQLite serializes writes)")
    settings.PLAN_LOCK_WAIT_SECONDS = WAIT  # the waiting side waits, rather than giving up


def _draft(datacenter: Datacenter) -> tuple[PlanRevision, datetime]:
    now = _grow_cold_machine(datacenter) + timedelta(minutes=20)
    _report(COLD, 0.01, now - timedelta(minutes=1))
    draft = datacenter_rebalance(datacenter=datacenter, now=now).draft
    assert draft is not None and draft.status == "draft"
    return draft, now


def _in_thread(work: Callable[[], Any], result: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        try:
            result["value"] = work()
        except Exception as error:  # noqa: BLE001 - handed to the test to assert on
            result["error"] = error
        finally:
            connection.close()  # each thread has its own connection

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_for_a_lock_waiter() -> None:
    """Until another backend of this database waits on a lock: the datacenter row."""
    deadline = time.monotonic() + WAIT
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.05)
    raise AssertionError("nobody waited on the datacenter's lock")


def _hold_lock(datacenter: Datacenter, held: threading.Event, release: threading.Event) -> None:
    with transaction.atomic():
        datacenter_lock(datacenter.pk, code=datacenter.code)
        held.set()
        assert release.wait(WAIT)
        # What the rebalance does while it holds the lock.
        _supersede_drafts(datacenter)


def test_a_draft_superseded_while_its_approval_waits_is_not_applied(
    dc: Datacenter,  # noqa: F811
) -> None:
    draft, now = _draft(dc)
    held, release = threading.Event(), threading.Event()
    rebalance: dict[str, Any] = {}
    approve: dict[str, Any] = {}
    holder = _in_thread(lambda: _hold_lock(dc, held, release), rebalance)
    assert held.wait(WAIT)
    # The approval passes the early status check (still a draft), then waits for the lock.
    approver = _in_thread(
        lambda: revision_approve(datacenter=dc, number=draft.number, now=now), approve
    )
    try:
        _wait_for_a_lock_waiter()
    finally:
        release.set()
        holder.join(WAIT)
        approver.join(WAIT)
    assert "error" not in rebalance, rebalance
    assert isinstance(approve.get("error"), DraftNotWaiting), approve
    assert "superseded, not a draft" in str(approve["error"])
    draft.refresh_from_db()
    assert draft.status == "superseded" and draft.applied_at is None
    assert not PortSlice.objects.filter(state="draining").exists()  # nothing of it applied


def test_rebalance_waits_for_the_lock_before_superseding(dc: Datacenter) -> None:  # noqa: F811
    draft, _ = _draft(dc)
    held, release = threading.Event(), threading.Event()
    holder_result: dict[str, Any] = {}
    supersede: dict[str, Any] = {}

    def hold() -> None:
        with transaction.atomic():
            datacenter_lock(dc.pk, code=dc.code)
            held.set()
            assert release.wait(WAIT)

    holder = _in_thread(hold, holder_result)
    assert held.wait(WAIT)
    superseder = _in_thread(lambda: _supersede_drafts(dc), supersede)
    try:
        _wait_for_a_lock_waiter()
        draft.refresh_from_db()
        assert draft.status == "draft"  # not touched while another writer holds the datacenter
    finally:
        release.set()
        holder.join(WAIT)
        superseder.join(WAIT)
    assert supersede == {"value": 1}, supersede
    draft.refresh_from_db()
    assert draft.status == "superseded"


def test_a_superseded_draft_is_refused_outright(dc: Datacenter) -> None:  # noqa: F811
    draft, now = _draft(dc)
    _supersede_drafts(dc)
    with pytest.raises(DraftNotWaiting):
        revision_approve(datacenter=dc, number=draft.number, now=now)
    draft.refresh_from_db()
    assert draft.status == "superseded"
