"""Whatever an import file holds, parsing it answers records or an InventoryError
naming where, and never builds more than the caps allow (issue 15, finding 5)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from planner.constants import MAX_RESERVED_PORTS
from planner.inventory_io import (
    MAX_RECORDS,
    InventoryError,
    parse_inventory,
    parse_port_ranges,
)

PORT_TEXT = st.lists(
    st.one_of(
        st.integers(-10, 4_000_000).map(str),
        st.tuples(st.integers(-10, 4_000_000), st.integers(-10, 4_000_000)).map(
            lambda pair: f"{pair[0]}-{pair[1]}"
        ),
        st.text(max_size=6),
    ),
    max_size=8,
).map(";".join)

CSV_CELL = st.one_of(
    st.sampled_from(["fra1", "warp", "DE", "192.0.2.1", "not-an-address", "1-3000000", ""]),
    st.text(max_size=12),
)
DOCUMENT = st.one_of(
    st.text(max_size=400),
    st.lists(st.lists(CSV_CELL, min_size=1, max_size=6).map(",".join), max_size=12).map(
        lambda rows: "datacenter,purpose,country,address,reserved_ports\n" + "\n".join(rows)
    ),
    st.lists(
        st.tuples(
            st.ip_addresses(v=4).map(str), st.integers(8, 32), st.sampled_from(["DE", "", "x"])
        ).map(lambda t: f"{t[0]}/{t[1]},{t[2]},,,"),
        max_size=4,
    ).map("\n".join),
)


@settings(max_examples=300, deadline=None)
@given(text=PORT_TEXT)
def test_reserved_ports_are_bounded_ranges_or_a_named_error(text: str) -> None:
    try:
        ranges = parse_port_ranges("line 2", text)
    except InventoryError as error:
        assert error.where == "line 2" and error.field == "reserved_ports"
        return
    assert all(lo <= hi for lo, hi in ranges)
    assert sum(hi - lo + 1 for lo, hi in ranges) <= MAX_RESERVED_PORTS


@settings(max_examples=300, deadline=None)
@given(text=DOCUMENT, large=st.booleans())
def test_any_document_parses_within_the_caps_or_names_what_is_wrong(text: str, large: bool) -> None:
    try:
        records = parse_inventory(text, datacenter="fra1", purpose="warp", large_prefixes=large)
    except InventoryError as error:
        assert error.where and error.field and error.message
        return
    assert len(records) <= MAX_RECORDS
    for record in records:
        reserved = record.values.get("reserved_ports", [])
        assert len(reserved) <= MAX_RESERVED_PORTS
