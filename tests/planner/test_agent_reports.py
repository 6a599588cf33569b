"""What agents report back: acks and usage, as the planner records them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from planner.models import ConfigBundle, Machine, PortSlice, SliceUsage, UsageSample
from planner.services.reports import bundle_ack, usage_expire, usage_record
from planner.tasks import record_ack, record_usage
from tests.planner.conftest import Site

pytestmark = pytest.mark.django_db
HOST = "edge0.fra1.example.net"
AT = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _ack(**overrides: object) -> dict[str, Any]:
    """An ack exactly as agent/worker.py documents it."""
    serial = ConfigBundle.objects.get(machine__hostname=HOST).serial
    return {
        "hostname": HOST,
        "serial": serial,
        "status": "applied",
        "reason": "",
        "detail": "",
        "note": "",
        "applied_serial": serial,
        "revision": 1,
        "applied_at": AT.isoformat(),
        "enforcement": {
            "serial": serial,
            "port_range": {"state": "on", "detail": ""},
            "nftables": {"state": "on", "detail": ""},
        },
        **overrides,
    }


def test_an_applied_ack_moves_the_machine_forward(site: Site) -> None:
    assert record_ack(**_ack()) == 1
    machine = Machine.objects.get(hostname=HOST)
    bundle = ConfigBundle.objects.get(machine=machine)
    assert (bundle.status, bundle.acked_at) == ("applied", AT)
    assert machine.applied_serial == bundle.serial and machine.last_seen == AT
    assert machine.enforcement["nftables"]["state"] == "on"


def test_a_late_older_ack_never_moves_it_back(site: Site) -> None:
    Machine.objects.filter(hostname=HOST).update(applied_serial=9)
    record_ack(**_ack(applied_serial=1))
    assert Machine.objects.get(hostname=HOST).applied_serial == 9


def test_a_rejection_is_kept_with_its_reason(site: Site) -> None:
    record_ack(
        **_ack(
            status="rejected",
            reason="bad_signature",
            detail="tampered",
            applied_serial=None,
            applied_at="",
        )
    )
    bundle = ConfigBundle.objects.get(machine__hostname=HOST)
    assert (bundle.status, bundle.error) == ("rejected", "bad_signature: tampered")
    assert Machine.objects.get(hostname=HOST).applied_serial == 0


def test_an_unreadable_rejection_only_marks_the_host_seen(site: Site) -> None:
    assert (
        record_ack(
            **_ack(
                status="rejected",
                reason="malformed",
                serial=None,
                applied_serial=None,
                applied_at="",
            )
        )
        == 0
    )
    assert Machine.objects.get(hostname=HOST).last_seen is not None


def test_an_unknown_status_is_refused(site: Site) -> None:
    with pytest.raises(ValueError, match="status: 'maybe'"):
        bundle_ack(hostname=HOST, serial=1, status="maybe")


def _report(sockets: int) -> list[dict[str, object]]:
    own = PortSlice.objects.get(machine__hostname=HOST)
    return [
        {
            "ip": own.ip.address,
            "lo": own.lo,
            "hi": own.hi,
            "tcp": sockets,
            "udp": 1,
            "buckets": {str(own.lo // 64 * 64): sockets + 1},
        },
        {"ip": "192.0.2.1", "lo": 1, "hi": 2, "tcp": 5, "udp": 0, "buckets": {}},  # not its own
    ]


def test_usage_keeps_the_latest_and_samples_history(site: Site) -> None:
    assert record_usage(hostname=HOST, serial=1, at=AT.timestamp(), slices=_report(3)) == 1
    usage_record(hostname=HOST, at=AT + timedelta(seconds=10), slices=_report(7))
    latest = SliceUsage.objects.get()
    assert (latest.tcp, latest.udp, latest.at) == (7, 1, AT + timedelta(seconds=10))
    assert list(UsageSample.objects.values_list("sockets", flat=True)) == [4]  # one a minute
    usage_record(hostname=HOST, at=AT + timedelta(seconds=70), slices=_report(1))
    assert sorted(UsageSample.objects.values_list("sockets", flat=True)) == [2, 4]


def test_old_history_expires(site: Site) -> None:
    usage_record(hostname=HOST, at=AT, slices=_report(3))
    assert usage_expire(now=AT + timedelta(days=13)) == 0
    assert usage_expire(now=AT + timedelta(days=15)) == 1
    assert SliceUsage.objects.exists()  # the latest figures stay


def test_usage_from_an_unknown_host_is_ignored(site: Site) -> None:
    assert usage_record(hostname="ghost.example.net", at=AT, slices=_report(1)) == 0


def test_a_late_older_report_does_not_replace_newer_figures(site: Site) -> None:
    usage_record(hostname=HOST, at=AT + timedelta(seconds=10), slices=_report(7))
    usage_record(hostname=HOST, at=AT, slices=_report(3))
    latest = SliceUsage.objects.get()
    assert (latest.tcp, latest.at) == (7, AT + timedelta(seconds=10))
