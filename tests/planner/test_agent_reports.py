"""What agents report back: acks and usage, as the planner records them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import contract
from planner.models import (
    ConfigBundle,
    Machine,
    PortSlice,
    ReportRejection,
    SliceUsage,
    UsageSample,
)
from planner.services.reports import bundle_ack, usage_expire, usage_record
from planner.tasks import record_ack, record_usage
from tests.planner.conftest import Site

pytestmark = pytest.mark.django_db
HOST = "edge0.fra1.example.net"
# Within the contract's window of the planner's clock (reports are judged against it).
AT = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def _ack(**overrides: Any) -> dict[str, Any]:
    """An ack built by the contract, as the agent builds it."""
    serial = ConfigBundle.objects.get(machine__hostname=HOST).serial
    fields: dict[str, Any] = {
        "hostname": HOST,
        "serial": serial,
        "status": "applied",
        "applied_serial": serial,
        "revision": 1,
        "applied_at": AT.isoformat(),
        "enforcement": {
            "serial": serial,
            "port_range": {"state": "on", "detail": ""},
            "nftables": {"state": "on", "detail": ""},
        },
    }
    return contract.ack_message(**{**fields, **overrides})


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


def _usage(sockets: int, at: datetime = AT) -> dict[str, Any]:
    return contract.usage_message(
        hostname=HOST, serial=1, at=at.timestamp(), slices=_report(sockets)
    )


def test_usage_keeps_the_latest_and_samples_history(site: Site) -> None:
    assert record_usage(**_usage(3)) == 1
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


def test_usage_from_an_unknown_host_is_refused_and_counted(site: Site) -> None:
    with pytest.raises(contract.ContractError, match="no machine by that name"):
        usage_record(hostname="ghost.example.net", at=AT, slices=_report(1))
    ghost = contract.usage_message(
        hostname="ghost.example.net", serial=0, at=AT.timestamp(), slices=_report(1)
    )
    assert record_usage(**ghost) == 0
    assert ReportRejection.objects.get(kind="usage", field="hostname").count == 1
    assert not SliceUsage.objects.exists()


def test_a_late_older_report_does_not_replace_newer_figures(site: Site) -> None:
    usage_record(hostname=HOST, at=AT + timedelta(seconds=10), slices=_report(7))
    usage_record(hostname=HOST, at=AT, slices=_report(3))
    latest = SliceUsage.objects.get()
    assert (latest.tcp, latest.at) == (7, AT + timedelta(seconds=10))


def _bad_acks() -> list[tuple[str, dict[str, Any]]]:
    """Each an ack the contract refuses, and the field it names."""
    return [
        ("serial", {"serial": -1}),
        ("serial", {"serial": 2**63}),
        ("serial", {"serial": "7"}),
        ("status", {"status": "maybe"}),
        ("hostname", {"hostname": "bad host!"}),
        ("applied_at", {"applied_at": "yesterday"}),
        ("applied_at", {"applied_at": "2026-11-26T12:00:00"}),  # no zone
        ("enforcement", {"enforcement": {"junk": "x" * 20_000}}),
        ("reason", {"reason": "r" * 65}),
    ]


@pytest.mark.parametrize(("field", "change"), _bad_acks())
def test_it_drops_and_counts_an_ack_that_breaks_the_contract(
    site: Site, field: str, change: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    before = Machine.objects.get(hostname=HOST)
    assert record_ack(**{**_ack(), **change}) == 0
    after = Machine.objects.get(hostname=HOST)
    assert (after.last_seen, after.applied_serial) == (before.last_seen, before.applied_serial)
    assert ConfigBundle.objects.get(machine__hostname=HOST).status != "applied"
    rejection = ReportRejection.objects.get(kind="ack", field=field)
    assert rejection.count == 1 and field in rejection.last_error
    assert f"ack.{field}=" in caplog.text


def _bad_slices() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("lo 5000 is above hi 4000", {"lo": 5000, "hi": 4000}),
        ("between 1 and 65535", {"hi": 70000}),
        ("between 0 and", {"tcp": -3}),
        ("expected an integer", {"udp": 1.5}),
        ("expected an IP address", {"ip": 12}),
        ("not a 64-port bucket", {"buckets": {"64": 1}}),
        ("missing 'tcp'", {"tcp": None}),
    ]


@pytest.mark.parametrize(("problem", "change"), _bad_slices())
def test_it_stores_nothing_of_a_usage_report_with_one_bad_slice(
    site: Site, problem: str, change: dict[str, Any]
) -> None:
    good = _usage(3)
    bad_slice = {k: v for k, v in {**good["slices"][0], **change}.items() if v is not None}
    message = {**good, "slices": [good["slices"][0], bad_slice]}
    assert record_usage(**message) == 0
    assert not SliceUsage.objects.exists() and not UsageSample.objects.exists()
    rejection = ReportRejection.objects.get(kind="usage", field="slices")
    assert problem in rejection.last_error


def test_a_usage_report_from_the_far_future_or_not_a_number_is_dropped(site: Site) -> None:
    for at in (2.0**34, float("nan"), "now"):
        assert record_usage(**{**_usage(3), "at": at}) == 0
    assert ReportRejection.objects.get(kind="usage", field="at").count == 3
    assert not SliceUsage.objects.exists()


def test_rejections_show_in_metrics(site: Site, client: Any) -> None:
    record_ack(**{**_ack(), "status": "maybe"})
    record_ack(**{**_ack(), "status": "maybe"})
    body = client.get("/metrics").content.decode()
    assert 'portslice_reports_rejected_total{field="status",kind="ack"} 2.0' in body
