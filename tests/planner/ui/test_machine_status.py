"""A machine's status is derived once (``selectors.machine_status``) and every page,
the API and /metrics show that one: a host whose agent acked ``failed`` is failed
everywhere, never "ok"; only "applied and enforcing" is green.

The acks are built by the agent's own code (``agent.service.Ack``, ``agent.enforce``)
and go through the planner's real ``planner.record_ack`` task body.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from agent.enforce import FAILED, OFF, ON, Enforcement, Part
from agent.service import Ack
from planner import selectors
from planner.choices import AgentStatus, TokenKind
from planner.models import Machine
from planner.services.tokens import api_token_create
from planner.tasks import record_ack
from tests.planner.ui.fixtures import UiSite

pytestmark = pytest.mark.django_db

EDGE0, EDGE1, EDGE2 = (f"edge{n}.fra1.example.net" for n in range(3))
RANGE_ON = Part(ON, "netns port range 1024-65535 covers the slices (1024-9215)")
GUARD_ON = Part(ON, "table inet portslice guards 2 shared prefixes, 1 slices")
GUARD_OFF = Part(OFF, "manage_nftables is off")
ADDRESSES_ON = Part(ON, "all 1 egress addresses are local")
ADDRESSES_MISSING = Part(FAILED, "not on this host: 192.0.2.1; connects from them fail")


def ack(hostname: str, port_range: Part, nftables: Part, addresses: Part) -> None:
    """The agent's ack for the machine's newest bundle, as its service builds it."""
    machine = Machine.objects.get(hostname=hostname)
    enforcement = Enforcement(machine.bundle_serial, port_range, nftables, addresses)
    failed = not enforcement.ok
    message = Ack(
        hostname=hostname,
        serial=machine.bundle_serial,
        status="failed" if failed else "applied",
        reason="enforcement_failed" if failed else "",
        detail=enforcement.errors,
        applied_serial=machine.bundle_serial,
        applied_at=timezone.now().isoformat(),
        enforcement=enforcement.as_dict(),
    )
    assert record_ack(**message.as_kwargs()) == 1


@pytest.fixture
def acked(ui_site: UiSite) -> UiSite:
    """edge0 enforcing in full, edge1 failed (an egress address missing), edge2 with
    the nftables guard off (an unprivileged agent)."""
    ack(EDGE0, RANGE_ON, GUARD_ON, ADDRESSES_ON)
    ack(EDGE1, RANGE_ON, GUARD_ON, ADDRESSES_MISSING)
    ack(EDGE2, RANGE_ON, GUARD_OFF, ADDRESSES_ON)
    return ui_site


def _status(hostname: str) -> selectors.MachineStatus:
    return selectors.machine_status(machine=Machine.objects.get(hostname=hostname))


def _counts(html: str) -> dict[str, tuple[str, str]]:
    """``{status: (count, css class)}`` of the machine counts in a page."""
    found = re.findall(r'<span data-status="(\w+)" class="(\w*)">(\d+) [a-z ]+</span>', html)
    return {status: (count, css) for status, css, count in found}


def test_it_derives_each_status_from_the_agents_ack(acked: UiSite) -> None:
    assert _status(EDGE0).status == AgentStatus.ENFORCING
    failed = _status(EDGE1)
    assert failed.status == AgentStatus.FAILED and failed.bundle_status == "failed"
    assert "192.0.2.1" in failed.reason and failed.reason.startswith("bundle ")
    partial = _status(EDGE2)
    assert partial.status == AgentStatus.PARTIAL
    assert partial.reason == "nftables guard off: manage_nftables is off"


def test_it_says_never_seen_pending_stale_rejected_and_retired(ui_site: UiSite) -> None:
    assert _status(EDGE1).status == AgentStatus.NEVER_SEEN
    assert _status(EDGE0).status == AgentStatus.PENDING  # usage reported, bundle not acked
    ack(EDGE0, RANGE_ON, GUARD_ON, ADDRESSES_ON)
    long_ago = timezone.now() - timedelta(hours=1)
    Machine.objects.filter(hostname=EDGE0).update(last_seen=long_ago)
    assert _status(EDGE0).status == AgentStatus.STALE
    machine = Machine.objects.get(hostname=EDGE2)
    record_ack(hostname=EDGE2, serial=machine.bundle_serial, status="rejected",
               reason="bad_signature", detail="kid unknown")  # fmt: skip
    rejected = _status(EDGE2)
    assert rejected.status == AgentStatus.REJECTED and "kid unknown" in rejected.reason
    Machine.objects.filter(hostname=EDGE2).update(state="retired")
    assert _status(EDGE2).status == AgentStatus.RETIRED


def test_an_agent_that_reports_no_parts_is_not_shown_enforcing(ui_site: UiSite) -> None:
    # An older agent (or a hostile message) that acks applied with no enforcement report.
    machine = Machine.objects.get(hostname=EDGE1)
    record_ack(hostname=EDGE1, serial=machine.bundle_serial, status="applied",
               applied_serial=machine.bundle_serial)  # fmt: skip
    status = _status(EDGE1)
    assert status.status == AgentStatus.PARTIAL
    assert {part.state for part in status.enforcement} == {"unknown"}


def test_the_overview_and_the_datacenter_page_count_failed_machines_as_failed(
    acked: UiSite, clients: dict[str, Client]
) -> None:
    for url in ("/", "/datacenters/fra1/"):
        counts = _counts(clients["vera"].get(url).content.decode())
        assert counts == {
            "enforcing": ("1", "ok"),
            "partial": ("1", "warn"),
            "failed": ("1", "bad"),
        }, url


def test_nothing_is_green_when_no_machine_enforces(
    ui_site: UiSite, clients: dict[str, Client]
) -> None:
    for hostname in (EDGE0, EDGE1, EDGE2):
        ack(hostname, RANGE_ON, GUARD_ON, ADDRESSES_MISSING)
    counts = _counts(clients["vera"].get("/").content.decode())
    assert counts == {"enforcing": ("0", ""), "failed": ("3", "bad")}


def test_the_machine_page_shows_failed_with_the_part_that_failed(
    acked: UiSite, clients: dict[str, Client]
) -> None:
    html = clients["vera"].get(f"/machines/{EDGE1}/").content.decode()
    assert 'data-fact="status" data-status="failed" class="bad">failed</b>' in html
    assert "not on this host: 192.0.2.1" in html
    assert '<dt>egress addresses</dt><dd data-part="addresses" class="bad"><b>failed</b>' in html
    assert "{&#x27;state&#x27;" not in html  # parts in words, not raw dicts
    healthy = clients["vera"].get(f"/machines/{EDGE0}/").content.decode()
    assert 'data-status="enforcing" class="ok">applied and enforcing</b>' in healthy


def test_the_api_carries_the_status_the_bundle_status_and_named_parts(
    acked: UiSite, users: dict[str, User]
) -> None:
    client = APIClient()
    key = api_token_create(name="vera", kind=TokenKind.USER, user=users["vera"])[1]
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    body = client.get("/api/v1/machines").json()
    rows = {row["hostname"]: row for row in body["results"]}
    failed = rows[EDGE1]
    assert (failed["status"], failed["bundle_status"]) == ("failed", "failed")
    assert failed["applied_serial"] == failed["bundle_serial"]  # what fooled readers before
    assert "192.0.2.1" in failed["status_reason"]
    assert {"part": "addresses", "name": "egress addresses", "state": "failed",
            "detail": ADDRESSES_MISSING.detail} in failed["enforcement"]  # fmt: skip
    assert (rows[EDGE0]["status"], rows[EDGE2]["status"]) == ("enforcing", "partial")
    one = client.get(f"/api/v1/machines/{EDGE1}").json()
    assert one["status"] == "failed" and one["enforcement"] == failed["enforcement"]


def test_the_api_lists_machines_in_a_fixed_number_of_queries(
    acked: UiSite, users: dict[str, User], django_assert_max_num_queries: object
) -> None:
    client = APIClient()
    client.force_authenticate(users["vera"])
    with django_assert_max_num_queries(8):  # type: ignore[operator]
        assert len(client.get("/api/v1/machines").json()["results"]) == 3


def test_metrics_count_machines_per_status(acked: UiSite) -> None:
    text = Client().get("/metrics").content.decode()
    for status, n in (("enforcing", 1), ("partial", 1), ("failed", 1), ("rejected", 0)):
        line = f'portslice_machines_status{{datacenter="fra1",status="{status}"}} {n}.0'
        assert line in text, line
