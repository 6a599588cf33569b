"""Hostile messages off the broker, on PostgreSQL: the probes of issue 15 (findings
1, 2 and 3) replayed, and a property over every task that consumes broker
messages: whatever the payload, the task returns, and either the message is
stored as valid rows or it is counted as rejected, never both and never neither."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db.models import Sum
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

import contract
from planner.models import (
    ConfigBundle,
    Datacenter,
    Gateway,
    Machine,
    PortSlice,
    ReportRejection,
    SliceUsage,
    UsageSample,
)
from planner.services.steering import gateway_register
from planner.tasks import record_ack, record_gateway_ack, record_usage
from tests.planner.conftest import Site
from tests.planner.factories import make_datacenter

pytestmark = pytest.mark.django_db
HOST = "edge0.fra1.example.net"


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _rejected(kind: str, field: str | None = None) -> int:
    rows = ReportRejection.objects.filter(kind=kind)
    if field is not None:
        rows = rows.filter(field=field)
    return rows.aggregate(n=Sum("count"))["n"] or 0


def _ack(**overrides: Any) -> dict[str, Any]:
    serial = Machine.objects.get(hostname=HOST).bundle_serial
    fields: dict[str, Any] = {
        "hostname": HOST,
        "serial": serial,
        "status": "applied",
        "applied_serial": serial,
        "revision": 1,
        "applied_at": _now().isoformat(),
        "enforcement": {"serial": serial, "nftables": {"state": "on", "detail": ""}},
    }
    return {**contract.ack_message(**fields), **overrides}


def _slice(**overrides: Any) -> dict[str, Any]:
    own = PortSlice.objects.filter(machine__hostname=HOST).order_by("pk").first()
    assert own is not None
    fields = {"ip": own.ip.address, "lo": own.lo, "hi": own.hi, "tcp": 3, "udp": 1, "buckets": {}}
    return {**fields, **overrides}


def _usage(**overrides: Any) -> dict[str, Any]:
    serial = Machine.objects.get(hostname=HOST).bundle_serial
    message = contract.usage_message(
        hostname=HOST, serial=serial, at=_now().timestamp(), slices=[_slice()]
    )
    return {**message, **overrides}


def _gateway_ack(**overrides: Any) -> dict[str, Any]:
    message = contract.gateway_ack_message(
        name="gw1", datacenter="fra1", revision=1, etag='"e1"', status="applied", slices=3
    )
    return {**message, **overrides}


# --- finding 1: one ack from year 1 broke every page --------------------------------------------


@pytest.mark.parametrize(
    "applied_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59+00:00", "2242-01-01T00:00Z"]
)
def test_it_refuses_an_ack_dated_outside_the_window_and_pages_still_answer(
    site: Site, clients: dict[str, APIClient], applied_at: str
) -> None:
    assert record_ack(**_ack(applied_at=applied_at)) == 0
    assert _rejected("ack", "applied_at") == 1
    bundle = ConfigBundle.objects.get(machine__hostname=HOST)
    assert bundle.acked_at is None and bundle.status != "applied"
    assert Machine.objects.get(hostname=HOST).last_seen is None
    browser = Client()
    browser.force_login(User.objects.get(username="alice"))
    for url in ("/", "/datacenters/fra1/", f"/machines/{HOST}/"):
        assert browser.get(url).status_code == 200, url
    for url in ("/api/v1/machines", "/api/v1/slices"):
        assert clients["vera"].get(url).status_code == 200, url


def test_an_ack_from_an_hour_ago_is_still_stored(site: Site) -> None:
    at = _now() - timedelta(hours=1)
    assert record_ack(**_ack(applied_at=at.isoformat())) == 1
    assert Machine.objects.get(hostname=HOST).last_seen == at


# --- finding 2: report garbage raised or was stored ---------------------------------------------


def _bad_acks() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("reason", {"status": "rejected", "reason": "bad\x00sig", "applied_at": ""}),
        ("detail", {"status": "failed", "detail": "nft\x00 said no", "applied_at": ""}),
        ("enforcement", {"enforcement": {"nft\x00ables": {"state": "on"}}}),
        ("enforcement", {"enforcement": {"nftables": {"state": "o\x00n"}}}),
        ("enforcement", {"enforcement": {"ratio": float("nan")}}),
        ("detail", {"status": "failed", "detail": "lone \ud800 surrogate", "applied_at": ""}),
        ("applied_serial", {"applied_serial": 2**62}),
        ("serial", {"serial": 2**62}),
        ("revision", {"revision": 2**31 - 1}),
        ("serial", {"serial": True}),
        ("serial", {"serial": 1.0}),
        ("revision", {"revision": 7.9}),
        ("status", {"status": ["applied"]}),
        ("hostname", {"hostname": "ghost.example.net"}),
    ]


@pytest.mark.parametrize(("field", "change"), _bad_acks())
def test_it_counts_a_garbage_ack_and_stores_nothing_of_it(
    site: Site, field: str, change: dict[str, Any]
) -> None:
    before = Machine.objects.values("last_seen", "applied_serial", "enforcement").get(hostname=HOST)
    assert record_ack(**_ack(**change)) == 0
    assert _rejected("ack", field) == 1
    after = Machine.objects.values("last_seen", "applied_serial", "enforcement").get(hostname=HOST)
    assert after == before
    assert ConfigBundle.objects.get(machine__hostname=HOST).acked_at is None


def _bad_usage() -> list[tuple[str, Any]]:
    return [
        ("slices", lambda: {"slices": [_slice(), _slice()]}),  # the same slice twice
        ("slices", lambda: {"slices": [_slice(tcp=2**31 - 1, udp=2**31 - 1)]}),
        ("slices", lambda: {"slices": [_slice(tcp=2**31)]}),
        ("slices", lambda: {"slices": [_slice(tcp=1, udp=0, buckets={"1024": 5})]}),
        ("at", lambda: {"at": datetime(2242, 1, 1, tzinfo=UTC).timestamp()}),
        ("at", lambda: {"at": (_now() - timedelta(days=30)).timestamp()}),
        ("at", lambda: {"at": -62135596800.0}),  # year 1
        ("serial", lambda: {"serial": 2**62}),
        ("hostname", lambda: {"hostname": "m9.\u017fite.net"}),
    ]


@pytest.mark.parametrize(("field", "change"), _bad_usage())
def test_it_counts_a_garbage_usage_report_and_stores_nothing_of_it(
    site: Site, field: str, change: Any
) -> None:
    assert record_usage(**_usage(**change())) == 0
    assert _rejected("usage", field) == 1
    assert not SliceUsage.objects.exists() and not UsageSample.objects.exists()
    assert Machine.objects.get(hostname=HOST).last_seen is None


def test_a_2048_port_slice_takes_no_more_than_64_sockets_a_port(site: Site) -> None:
    own = _slice()
    ports = own["hi"] - own["lo"] + 1
    limit = ports * contract.messages.MAX_SOCKETS_PER_PORT
    assert record_usage(**_usage(slices=[_slice(tcp=limit + 1, udp=0)])) == 0
    assert record_usage(**_usage(slices=[_slice(tcp=limit, udp=0)])) == 1
    assert SliceUsage.objects.get().tcp == limit


# --- finding 3: gateway acks had no contract ----------------------------------------------------


def _bad_gateway_acks() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("name", {"name": 12345}),
        ("name", {"name": {"a": 1}}),
        ("name", {"name": "gw-probe"}),  # nobody registered it
        ("name", {"name": "gw\x001"}),
        ("datacenter", {"datacenter": "ams1"}),  # registered in fra1
        ("datacenter", {"datacenter": ["fra1"]}),
        ("revision", {"revision": 7.9}),
        ("revision", {"revision": True}),
        ("revision", {"revision": 2**31}),
        ("revision", {"revision": 99}),  # fra1 has issued r1 only
        ("etag", {"etag": "x" * 41}),
        ("etag", {"etag": None}),
        ("status", {"status": "rejected"}),
        ("detail", {"detail": "\x00"}),
        ("slices", {"slices": -1}),
        ("slices", {"slices": 2**63}),
    ]


@pytest.mark.parametrize(("field", "change"), _bad_gateway_acks())
def test_it_counts_a_garbage_gateway_ack_and_creates_or_moves_nothing(
    site: Site, field: str, change: dict[str, Any]
) -> None:
    make_datacenter(code="ams1")
    gateway_register(name="gw1", datacenter=site.datacenter)
    before = list(Gateway.objects.values())
    assert record_gateway_ack(**_gateway_ack(**change)) is False
    assert _rejected("gateway_ack", field) == 1
    assert list(Gateway.objects.values()) == before


def test_an_ack_from_an_unregistered_gateway_creates_no_row(site: Site) -> None:
    for n in range(5):
        assert record_gateway_ack(**_gateway_ack(name=f"gw-probe-{n}")) is False
    assert not Gateway.objects.exists()
    assert _rejected("gateway_ack", "name") == 5


def test_a_registered_gateway_is_recorded_by_its_ack(site: Site) -> None:
    gateway_register(name="gw1", datacenter=site.datacenter)
    assert record_gateway_ack(**_gateway_ack()) is True
    stored = Gateway.objects.get(name="gw1")
    assert (stored.revision, stored.etag, stored.slices, stored.status) == (1, '"e1"', 3, "applied")
    assert not ReportRejection.objects.exists()


def test_rejections_are_counted_by_kind_and_field_in_metrics(site: Site, client: Client) -> None:
    record_gateway_ack(**_gateway_ack(name="gw-probe"))
    record_usage(**_usage(serial=2**62))
    body = client.get("/metrics").content.decode()
    assert 'portslice_reports_rejected_total{field="name",kind="gateway_ack"} 1.0' in body
    assert 'portslice_reports_rejected_total{field="serial",kind="usage"} 1.0' in body


# --- the property: any payload, no raise, stored or counted -------------------------------------

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**62, 2**63, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "\x00",
            "applied",
            "failed",
            HOST,
            "fra1",
            "gw1",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59+00:00",
            "2242-01-01T00:00:00+00:00",
        ]
    ),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
)


def _mutations(fields: tuple[contract.messages.Field, ...]) -> st.SearchStrategy[Any]:
    names = st.sampled_from([spec.name for spec in fields])
    return st.tuples(
        st.dictionaries(names, junk, max_size=3),  # fields replaced by junk
        st.sets(names, max_size=2),  # fields dropped
        st.dictionaries(st.text(max_size=8), junk, max_size=2),  # keys nobody defined
    )


def _apply(message: dict[str, Any], mutation: Any) -> dict[str, Any]:
    replaced, dropped, extra = mutation
    result = {**extra, **message, **replaced}
    return {k: v for k, v in result.items() if k not in dropped}


def _times_readable() -> None:
    """Every stored time reads back (psycopg cannot read a BC date) and lies in the window."""
    now = datetime.now(UTC)
    low, high = now - contract.MAX_REPORT_AGE, now + contract.MAX_CLOCK_SKEW
    times = [
        *Machine.objects.values_list("last_seen", flat=True),
        *ConfigBundle.objects.values_list("acked_at", flat=True),
        *SliceUsage.objects.values_list("at", flat=True),
        *Gateway.objects.values_list("last_seen", flat=True),
    ]
    assert all(low <= t <= high for t in times if t is not None)


_PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_PROPERTY
@given(mutation=_mutations(contract.ACK_FIELDS))
def test_any_ack_payload_is_stored_valid_or_counted(site: Site, mutation: Any) -> None:
    message = _apply(_ack(), mutation)
    counted, before = _rejected("ack"), _ack_rows()
    record_ack(**message)
    refused = _rejected("ack") - counted
    assert refused in (0, 1)
    if not _valid(contract.validate_ack, message):
        assert refused == 1
    if refused:
        assert _ack_rows() == before  # nothing of a refused ack
    _times_readable()


def _ack_rows() -> list[Any]:
    return [
        *Machine.objects.values_list("last_seen", "applied_serial", "enforcement", "stale_since"),
        *ConfigBundle.objects.values_list("status", "acked_at", "error"),
    ]


def _usage_rows() -> list[Any]:
    return [
        *Machine.objects.values_list("last_seen", "stale_since"),
        *SliceUsage.objects.values_list("slice_id", "at", "tcp", "udp", "buckets"),
        *UsageSample.objects.values_list("ip", "lo", "at", "sockets"),
    ]


@_PROPERTY
@given(mutation=_mutations(contract.USAGE_FIELDS), slices=st.lists(junk | st.just({}), max_size=3))
def test_any_usage_payload_is_stored_valid_or_counted(
    site: Site, mutation: Any, slices: list[Any]
) -> None:
    message = _apply(_usage(slices=[_slice(), *slices]), mutation)
    counted, before = _rejected("usage"), _usage_rows()
    record_usage(**message)
    refused = _rejected("usage") - counted
    assert refused in (0, 1)
    if not _valid(contract.validate_usage, message):
        assert refused == 1
    if refused:
        assert _usage_rows() == before  # nothing of a refused report
    assert all(
        u.tcp + u.udp <= (u.slice.hi - u.slice.lo + 1) * 64 for u in SliceUsage.objects.all()
    )
    _times_readable()


@_PROPERTY
@given(mutation=_mutations(contract.GATEWAY_ACK_FIELDS))
def test_any_gateway_ack_payload_is_stored_valid_or_counted(site: Site, mutation: Any) -> None:
    if not Datacenter.objects.filter(code="ams1").exists():
        make_datacenter(code="ams1")
    if not Gateway.objects.exists():
        gateway_register(name="gw1", datacenter=site.datacenter)
    message = _apply(_gateway_ack(), mutation)
    counted, before = _rejected("gateway_ack"), list(Gateway.objects.values())
    stored = record_gateway_ack(**message)
    refused = _rejected("gateway_ack") - counted
    assert refused == (0 if stored else 1)
    assert list(Gateway.objects.values_list("name", "datacenter__code")) == [("gw1", "fra1")]
    if stored:
        assert message["name"] == "gw1" and message["datacenter"] == "fra1"
    else:
        assert list(Gateway.objects.values()) == before
    _times_readable()


def _valid(validate: Any, message: dict[str, Any]) -> bool:
    """Whether the contract alone accepts ``message`` (the planner may still refuse it)."""
    try:
        validate(message)
    except contract.ContractError:
        return False
    return True
