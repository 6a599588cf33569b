"""planner.rebalance: hot machines grow one slice a run up to the ceiling, cold ones
leave a draft for an operator, a full pool records a shortfall, stale agents get
nothing new. Usage goes in the way agents send it: through the contract and the task."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django_celery_beat.models import PeriodicTask
from rest_framework.test import APIClient

import contract
from planner.models import Datacenter, Machine, PortSlice, RebalanceRun, SigningKey
from planner.services.keys import signing_key_generate
from planner.services.plans import plan_apply_current
from planner.services.rebalance import (
    datacenter_rebalance,
    rebalance_due,
    rebalance_runs_expire,
)
from planner.tasks import record_usage
from tests.planner.factories import make_datacenter, make_ip, make_machine, make_pool

pytestmark = pytest.mark.django_db
# Hours before the real clock: usage reports are judged against it (contract window).
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=6)
HOT, COLD, IDLE = "hot.rb1.example.net", "cold.rb1.example.net", "idle.rb1.example.net"


@pytest.fixture
def dc(key_dir: Path, settings: Any) -> Datacenter:
    """rb1: one IP of 7 slots of 8,192 ports; three machines, base 1, ceiling 3."""
    settings.USAGE_SAMPLE_SECONDS = 0  # every report is a history sample
    datacenter = make_datacenter(code="rb1")
    pool = make_pool(datacenter=datacenter, slice_size=8192, max_slices_per_machine=3)
    make_ip("198.51.100.20", pool=pool)
    for n, host in enumerate((HOT, COLD, IDLE)):
        make_machine(host, datacenter=datacenter, address=f"10.9.1.{n + 2}").pools.add(pool)
    if not SigningKey.objects.exists():  # the API actors' site may have made one
        signing_key_generate()
    plan_apply_current(datacenter=datacenter, reason="first", now=T0)
    return datacenter


def _report(host: str, utilization: float, at: datetime) -> None:
    """What the host's agent would send: sockets = utilization x the ports it holds."""
    slices = PortSlice.objects.filter(machine__hostname=host).select_related("ip")
    items = [
        {
            "ip": s.ip.address,
            "lo": s.lo,
            "hi": s.hi,
            "tcp": int(utilization * (s.hi - s.lo + 1)),
            "udp": 0,
            "buckets": {},
        }
        for s in slices
    ]
    record_usage(**contract.usage_message(hostname=host, serial=1, at=at.timestamp(), slices=items))


def _held(host: str) -> int:
    return PortSlice.objects.filter(machine__hostname=host, state="active").count()


def test_it_grows_a_hot_machine_one_slice_per_run_up_to_its_ceiling(dc: Datacenter) -> None:
    held, outcomes = [], []
    for run in range(4):
        now = T0 + timedelta(minutes=5 * (run + 1))
        _report(HOT, 0.95, now - timedelta(minutes=1))
        outcomes.append(datacenter_rebalance(datacenter=dc, now=now).outcome)
        held.append(_held(HOT))
    assert held == [2, 3, 3, 3]
    assert outcomes == ["applied", "applied", "unchanged", "unchanged"]
    assert (_held(COLD), _held(IDLE)) == (1, 1)  # no usage: they keep what they have
    applied = RebalanceRun.objects.filter(outcome="applied").order_by("at")
    assert [r.changed["added"] for r in applied] == [1, 1]
    assert applied[0].saw["hot_machines"] == [f"{HOT} rb1/warp/DE"]


def test_one_quiet_sample_does_not_hide_a_busy_window(dc: Datacenter) -> None:
    now = T0 + timedelta(minutes=5)
    _report(HOT, 0.95, now - timedelta(minutes=10))
    _report(HOT, 0.0, now - timedelta(minutes=1))
    assert datacenter_rebalance(datacenter=dc, now=now).outcome == "applied"
    assert _held(HOT) == 2


def test_usage_older_than_the_window_is_ignored(dc: Datacenter) -> None:
    now = T0 + timedelta(minutes=30)
    _report(HOT, 0.95, now - timedelta(minutes=16))
    _report(HOT, 0.5, now - timedelta(minutes=1))  # reporting, so not stale
    assert datacenter_rebalance(datacenter=dc, now=now).outcome == "unchanged"
    assert _held(HOT) == 1


def _grow_cold_machine(dc: Datacenter) -> datetime:
    now = T0 + timedelta(minutes=5)
    _report(COLD, 0.9, now - timedelta(minutes=1))
    datacenter_rebalance(datacenter=dc, now=now)
    assert _held(COLD) == 2
    return now


def test_a_cold_machine_yields_a_draft_not_a_change(dc: Datacenter) -> None:
    now = _grow_cold_machine(dc) + timedelta(minutes=20)
    _report(COLD, 0.01, now - timedelta(minutes=1))
    run = datacenter_rebalance(datacenter=dc, now=now)
    assert run.outcome == "drafted" and run.draft is not None
    assert _held(COLD) == 2 and not PortSlice.objects.filter(state="draining").exists()
    assert run.draft.status == "draft"
    assert run.draft.diff_summary["machines_touched"] == [COLD]
    assert len(run.draft.diff_summary["draining"]) == 1
    assert run.saw["cold_machines"] == [f"{COLD} rb1/warp/DE"]
    again = datacenter_rebalance(datacenter=dc, now=now + timedelta(minutes=5))
    assert again.draft == run.draft  # the same draft waits; no new number


def test_an_operator_approves_the_draft_and_the_cold_slice_drains(
    clients: dict[str, APIClient], dc: Datacenter
) -> None:
    now = _grow_cold_machine(dc) + timedelta(minutes=20)
    _report(COLD, 0.01, now - timedelta(minutes=1))
    draft = datacenter_rebalance(datacenter=dc, now=now).draft
    assert draft is not None
    listed = clients["vera"].get("/api/v1/revisions?status=draft").json()["results"]
    assert [(r["datacenter"], r["number"]) for r in listed] == [("rb1", draft.number)]
    url = f"/api/v1/datacenters/rb1/revisions/{draft.number}/approve"
    assert clients["vera"].post(url).status_code == 403
    response = clients["bob"].post(url)
    assert response.status_code == 200, response.content
    assert (response.json()["number"], response.json()["status"]) == (draft.number, "applied")
    draining = PortSlice.objects.get(state="draining")
    assert draining.machine.hostname == COLD and _held(COLD) == 1
    assert clients["bob"].post(url).status_code == 409  # applied already: not a draft


def test_a_newer_draft_supersedes_the_older_one(dc: Datacenter) -> None:
    now = _grow_cold_machine(dc) + timedelta(minutes=20)
    _report(COLD, 0.01, now - timedelta(minutes=1))
    first = datacenter_rebalance(datacenter=dc, now=now).draft
    make_machine("new.rb1.example.net", datacenter=dc, address="10.9.1.9").pools.add(
        *Datacenter.objects.get(code="rb1").pools.all()
    )
    second = datacenter_rebalance(datacenter=dc, now=now + timedelta(minutes=5))
    assert first is not None and second.draft is not None
    assert second.outcome == "applied_drafted"  # the new machine's slice went out at once
    first.refresh_from_db()
    assert first.status == "superseded" and second.draft.status == "draft"


def test_approving_a_draft_whose_base_moved_on_is_409(
    clients: dict[str, APIClient], dc: Datacenter
) -> None:
    now = _grow_cold_machine(dc) + timedelta(minutes=20)
    _report(COLD, 0.01, now - timedelta(minutes=1))
    draft = datacenter_rebalance(datacenter=dc, now=now).draft
    assert draft is not None
    Machine.objects.filter(hostname=IDLE).update(weight=2)  # inputs change, no revision
    response = clients["bob"].post(f"/api/v1/datacenters/rb1/revisions/{draft.number}/approve")
    assert response.status_code == 409 and "changed" in response.json()["detail"]
    assert _held(COLD) == 2


def test_a_full_pool_records_a_shortfall_instead_of_failing(dc: Datacenter) -> None:
    pool = dc.pools.get()
    for n in range(6):  # 3 + 6 machines, 7 slots
        make_machine(f"x{n}.rb1.example.net", datacenter=dc, address=f"10.9.2.{n + 2}").pools.add(
            pool
        )
    run = datacenter_rebalance(datacenter=dc, now=T0 + timedelta(minutes=5))
    assert run.outcome == "shortfall"
    assert run.changed["shortfalls"][0]["pool"] == "rb1/warp/DE"
    assert "rb1/warp/DE" in run.detail


def test_growth_with_no_room_is_recorded_as_denied(dc: Datacenter) -> None:
    pool = dc.pools.get()
    for n in range(4):  # 7 machines fill the 7 slots
        make_machine(f"x{n}.rb1.example.net", datacenter=dc, address=f"10.9.2.{n + 2}").pools.add(
            pool
        )
    plan_apply_current(datacenter=dc, reason="fill", now=T0)
    now = T0 + timedelta(minutes=5)
    _report(HOT, 0.95, now - timedelta(minutes=1))
    run = datacenter_rebalance(datacenter=dc, now=now)
    assert run.outcome == "unchanged" and _held(HOT) == 1
    assert run.saw["growth_denied"] == [f"{HOT} rb1/warp/DE"]


def test_a_stale_machine_gets_no_new_slices(dc: Datacenter, settings: Any) -> None:
    settings.AGENT_STALE_MINUTES = 10
    now = T0 + timedelta(minutes=30)
    _report(HOT, 0.95, now - timedelta(minutes=12))  # in the window, but silent since
    run = datacenter_rebalance(datacenter=dc, now=now)
    assert run.outcome == "unchanged" and _held(HOT) == 1
    assert run.saw["stale"] == [HOT]
    _report(HOT, 0.95, now + timedelta(minutes=1))  # it reports again
    assert datacenter_rebalance(datacenter=dc, now=now + timedelta(minutes=2)).outcome == "applied"


def test_auto_apply_off_leaves_growth_as_a_draft(
    clients: dict[str, APIClient], dc: Datacenter
) -> None:
    response = clients["bob"].patch("/api/v1/datacenters/rb1/rebalance", {"auto_apply": False})
    assert response.status_code == 200 and response.json()["auto_apply"] is False
    now = T0 + timedelta(minutes=5)
    _report(HOT, 0.95, now - timedelta(minutes=1))
    run = datacenter_rebalance(datacenter=dc, now=now)
    assert run.outcome == "drafted" and "auto-apply is off" in run.detail
    assert _held(HOT) == 1


def test_it_runs_once_per_datacenter_per_interval(dc: Datacenter) -> None:
    assert [r.datacenter.code for r in rebalance_due(now=T0)] == ["rb1"]
    assert rebalance_due(now=T0) == []  # a second tick at the same time
    assert rebalance_due(now=T0 + timedelta(minutes=4)) == []
    assert len(rebalance_due(now=T0 + timedelta(minutes=5))) == 1


def test_the_policy_is_validated_whole(clients: dict[str, APIClient], dc: Datacenter) -> None:
    url = "/api/v1/datacenters/rb1/rebalance"
    defaults = clients["vera"].get(url).json()
    assert (defaults["hot"], defaults["cold"], defaults["window_minutes"]) == (0.8, 0.2, 15)
    assert defaults["interval_minutes"] == 5 and defaults["auto_apply"] is True
    refused = clients["bob"].patch(url, {"cold": 0.9, "window_minutes": 30}, format="json")
    assert refused.status_code == 400 and "cold" in refused.json()
    assert clients["vera"].get(url).json()["window_minutes"] == 15  # nothing written
    assert clients["bob"].patch(url, {"hot": 1.5}, format="json").status_code == 400
    assert clients["vera"].patch(url, {"hot": 0.9}, format="json").status_code == 403


def test_runs_are_listed_and_counted_in_metrics(
    clients: dict[str, APIClient], dc: Datacenter, client: Any
) -> None:
    datacenter_rebalance(datacenter=dc, now=T0 + timedelta(minutes=5))
    runs = clients["vera"].get("/api/v1/datacenters/rb1/rebalance/runs").json()["results"]
    assert [r["outcome"] for r in runs] == ["unchanged"]
    body = client.get("/metrics").content.decode()
    assert 'portslice_rebalance_runs_kept{datacenter="rb1",outcome="unchanged"} 1.0' in body
    assert "portslice_rebalance_runs_total" not in body  # not a counter: it falls on expiry


def test_the_default_schedules_are_in_the_database() -> None:
    tasks = dict(PeriodicTask.objects.values_list("task", "interval__every"))
    assert tasks == {
        "planner.rebalance": 60,
        "planner.reconcile": 60,
        "planner.expire_drains": 60,
        "planner.expire_usage": 3600,
        "planner.mark_stale": 60,
    }


def test_drafts_are_in_the_schema(clients: dict[str, APIClient]) -> None:
    """Approve and the policy are part of the OpenAPI schema."""
    schema = clients["vera"].get("/api/schema/?format=json").json()
    assert "/api/v1/datacenters/{code}/revisions/{number}/approve" in schema["paths"]
    assert "/api/v1/datacenters/{code}/rebalance" in schema["paths"]


def test_a_grown_machine_is_measured_on_all_its_slices_at_once(
    dc: Datacenter, settings: Any
) -> None:
    settings.USAGE_SAMPLE_SECONDS = 60
    now = T0 + timedelta(minutes=5)
    _report(HOT, 0.95, now - timedelta(seconds=20))
    assert datacenter_rebalance(datacenter=dc, now=now).outcome == "applied"
    # Reports every 30 s: the new slice must be sampled in step with the old one,
    # or each sample would see half the machine and it would never grow again.
    for seconds in (30, 60, 90, 120, 150):
        _report(HOT, 0.95, now + timedelta(seconds=seconds))
    run = datacenter_rebalance(datacenter=dc, now=now + timedelta(minutes=5))
    assert run.outcome == "applied" and _held(HOT) == 3


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-1", "0.8"])
def test_a_threshold_that_is_not_a_share_is_refused(
    clients: dict[str, APIClient], dc: Datacenter, value: str
) -> None:
    response = clients["bob"].patch("/api/v1/datacenters/rb1/rebalance", {"cold": value})
    assert response.status_code == 400 and "cold" in response.json()


def test_run_records_expire_with_the_usage_they_read(dc: Datacenter, settings: Any) -> None:
    settings.USAGE_RETENTION_DAYS = 14
    datacenter_rebalance(datacenter=dc, now=T0)
    assert rebalance_runs_expire(now=T0 + timedelta(days=13)) == 0
    assert rebalance_runs_expire(now=T0 + timedelta(days=15)) == 1


def test_the_plan_page_approves_a_draft_for_operators_only(dc: Datacenter) -> None:
    from django.contrib.auth.models import Group, User
    from django.test import Client

    from planner.models import PlanRevision

    now = _grow_cold_machine(dc) + timedelta(minutes=20)
    _report(COLD, 0.01, now - timedelta(minutes=1))
    draft = datacenter_rebalance(datacenter=dc, now=now).draft
    assert draft is not None
    actors = {}
    for role in ("viewer", "operator"):
        user = User.objects.create_user(f"ui-{role}", password="unused-Pa55")
        user.groups.add(Group.objects.get_or_create(name=role)[0])
        actors[role] = Client()
        actors[role].force_login(user)
    button = f"Approve r{draft.number}"
    assert button in actors["operator"].get("/datacenters/rb1/plan/").content.decode()
    assert button not in actors["viewer"].get("/datacenters/rb1/plan/").content.decode()
    url = f"/datacenters/rb1/drafts/{draft.number}/approve/"
    assert actors["viewer"].post(url).status_code == 403
    assert PlanRevision.objects.get(pk=draft.pk).status == "draft"
    unconfirmed = actors["operator"].post(url, follow=True)  # the box must be ticked
    assert f"Draft r{draft.number} was not applied" in unconfirmed.content.decode()
    assert PlanRevision.objects.get(pk=draft.pk).status == "draft"
    response = actors["operator"].post(url, {"confirm": "on"}, follow=True)
    assert f"Draft r{draft.number} approved" in response.content.decode()
    assert PlanRevision.objects.get(pk=draft.pk).status == "applied"
    assert PortSlice.objects.get(state="draining").machine.hostname == COLD
    again = actors["operator"].post(url, {"confirm": "on"}, follow=True)  # applied already
    assert f"Draft r{draft.number} was not applied" in again.content.decode()
