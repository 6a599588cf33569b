"""The contract checks what it documents: what the builders make passes, and any
field pushed out of its bounds is refused with that field named."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import contract
from contract.messages import MAX_COUNT, MAX_SERIAL, MAX_SOCKETS_PER_PORT, prose

HOST = "edge0.fra1.example.net"

serials = st.integers(min_value=0, max_value=MAX_SERIAL)
counts = st.integers(min_value=0, max_value=MAX_COUNT)


@st.composite
def slices(draw: st.DrawFn) -> dict[str, Any]:
    lo = draw(st.integers(min_value=1, max_value=65535))
    hi = draw(st.integers(min_value=lo, max_value=min(lo + 4095, 65535)))
    most = (hi - lo + 1) * MAX_SOCKETS_PER_PORT // 2
    tcp = draw(st.integers(min_value=0, max_value=most))
    udp = draw(st.integers(min_value=0, max_value=most))
    starts = st.sampled_from(range(lo - lo % 64, hi + 1, 64))
    # Eight buckets at most, each an eighth of the sockets: they never add up to more.
    share = st.integers(min_value=0, max_value=(tcp + udp) // 8)
    buckets = draw(st.dictionaries(starts.map(str), share, max_size=8))
    ip = draw(st.sampled_from(["198.51.100.7", "2001:db8::7"]))
    return {"ip": ip, "lo": lo, "hi": hi, "tcp": tcp, "udp": udp, "buckets": buckets}


def _key(item: dict[str, Any]) -> tuple[str, int, int]:
    return (item["ip"], item["lo"], item["hi"])


@given(
    serial=st.none() | serials,
    status=st.sampled_from(sorted(contract.ACK_STATUSES)),
    detail=st.text(max_size=3000),
)
def test_it_builds_acks_that_it_accepts(serial: int | None, status: str, detail: str) -> None:
    message = contract.ack_message(hostname=HOST, serial=serial, status=status, detail=detail)
    assert {spec.name for spec in contract.ACK_FIELDS} == set(message)
    ack = contract.validate_ack(message)
    assert (ack.serial, ack.status, ack.detail) == (serial, status, prose(detail))
    assert len(ack.detail) == len(detail[:2000])  # cut, control characters replaced


@given(
    serial=serials,
    at=st.floats(min_value=1, max_value=2**32),
    items=st.lists(slices(), max_size=5, unique_by=_key),
)
def test_it_builds_usage_reports_that_it_accepts(
    serial: int, at: float, items: list[dict[str, Any]]
) -> None:
    message = contract.usage_message(hostname=HOST, serial=serial, at=at, slices=items)
    report = contract.validate_usage(message, now=datetime.fromtimestamp(at, UTC))
    assert [s.as_dict() for s in report.slices] == items
    assert report.at.timestamp() == pytest.approx(at)


@given(value=st.integers().filter(lambda v: not 0 <= v <= MAX_SERIAL) | st.text() | st.booleans())
def test_it_refuses_any_serial_out_of_bounds(value: object) -> None:
    message = {**contract.ack_message(hostname=HOST, serial=1, status="applied"), "serial": value}
    with pytest.raises(contract.ContractError) as refused:
        contract.validate_ack(message)
    assert refused.value.field == "serial"


@given(item=slices(), count=st.integers(max_value=-1) | st.integers(min_value=MAX_COUNT + 1))
def test_it_refuses_a_socket_count_out_of_bounds(item: dict[str, Any], count: int) -> None:
    message = {"hostname": HOST, "serial": 1, "at": 1.0e9, "slices": [{**item, "tcp": count}]}
    with pytest.raises(contract.ContractError, match=r"usage\.slices=.*slice 0: must be between 0"):
        contract.validate_usage(message)


def test_a_required_field_missing_is_named() -> None:
    with pytest.raises(contract.ContractError) as refused:
        contract.validate_usage({"hostname": HOST, "serial": 1, "slices": []})
    assert (refused.value.field, refused.value.problem) == ("at", "missing")


def test_unknown_keys_are_ignored_but_a_flood_of_keys_is_not() -> None:
    message = contract.ack_message(hostname=HOST, serial=1, status="applied")
    assert contract.validate_ack({**message, "from_the_future": 1}).serial == 1
    with pytest.raises(contract.ContractError):
        contract.validate_ack({**message, **{f"k{i}": i for i in range(40)}})


def test_the_agent_queue_is_named_after_the_host() -> None:
    assert contract.agent_queue(HOST) == f"agent.{HOST}"


def test_the_builder_cleans_what_the_sender_passes_on_and_the_receiver_refuses_raw() -> None:
    enforcement = {"nftables": {"state": "failed", "detail": "nft: \x00bad\r\n"}}
    message = contract.ack_message(
        hostname=HOST, serial=1, status="failed", detail="a\x07b", enforcement=enforcement
    )
    assert message["detail"] == "a?b"
    assert message["enforcement"]["nftables"]["detail"] == "nft: ?bad?\n"
    raw = {**message, "enforcement": enforcement}
    with pytest.raises(contract.ContractError) as refused:
        contract.validate_ack(raw)
    assert refused.value.field == "enforcement"


@pytest.mark.parametrize(
    ("moment", "accepted"),
    [
        (timedelta(days=-7) + timedelta(seconds=1), True),
        (timedelta(minutes=5), True),
        (timedelta(days=-7, seconds=-1), False),
        (timedelta(minutes=5, seconds=1), False),
    ],
)
def test_report_times_must_lie_within_the_window_of_the_receivers_clock(
    moment: timedelta, accepted: bool
) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    message = contract.usage_message(
        hostname=HOST, serial=1, at=(now + moment).timestamp(), slices=[]
    )
    if accepted:
        assert contract.validate_usage(message, now=now).at == now + moment
    else:
        with pytest.raises(contract.ContractError, match="receiver's clock"):
            contract.validate_usage(message, now=now)
