"""The steering table's rendering: a round trip through JSON, and every slice in the script."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allocator.steering import (
    MARK_BASE,
    RULE_PRIORITY,
    SteeringError,
    SteeringRow,
    render_script,
    rows_from_document,
    steering_document,
)


@st.composite
def tables(draw: st.DrawFn) -> list[SteeringRow]:
    machines = draw(st.integers(1, 6))
    rows = []
    for n, start in enumerate(draw(st.lists(st.integers(1, 60), min_size=1, max_size=20))):
        machine = n % machines
        ip = draw(st.sampled_from(["198.51.100.7", "198.51.100.8", "2001:db8::7"]))
        lo = 1024 * start + n
        hi = lo + draw(st.integers(0, 500))
        hop, mark = f"192.0.2.{machine + 10}", MARK_BASE + 1 + machine
        rows.append(SteeringRow(ip, lo, hi, f"m{machine}", hop, "active", mark))
    return rows


@given(tables())
def test_a_document_reads_back_as_the_rows_it_was_made_of(rows: list[SteeringRow]) -> None:
    document = steering_document(rows, datacenter="fra1", revision=3)
    assert rows_from_document(document) == rows


@given(tables())
def test_the_script_steers_every_slice_and_routes_every_mark(rows: list[SteeringRow]) -> None:
    script = render_script(rows, datacenter="fra1", revision=3)
    for row in rows:
        assert f"{row.ip} . {row.lo}-{row.hi} : {row.mark:#x}" in script
        assert f"default via {row.next_hop} table {row.mark}" in script
        assert f"pref {RULE_PRIORITY} fwmark {row.mark:#x} lookup {row.mark}" in script
    assert script.count("delete table inet portslice_steer") == 1  # one transaction


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"marks": {"m0": 7}}, "marks['m0']=7"),
        ({"marks": {"m0": MARK_BASE + 1, "m1": MARK_BASE + 1}}, "share a mark"),
        ({"slices": [{"ip": "x", "lo": 1, "hi": 2, "machine": "m0", "next_hop": "192.0.2.1"}]},
         "slices[0].ip='x'"),
        ({"slices": [{"ip": "198.51.100.7", "lo": 9, "hi": 2, "machine": "m0",
                      "next_hop": "192.0.2.1"}]}, "slices[0].hi=2"),
        ({"slices": [{"ip": "198.51.100.7", "lo": 1, "hi": 2, "machine": "m9",
                      "next_hop": "192.0.2.1"}]}, "slices[0].machine='m9'"),
    ],
)  # fmt: skip
def test_an_unsound_document_is_refused_naming_the_field(change: dict, message: str) -> None:
    document = {"revision": 1, "marks": {"m0": MARK_BASE + 1}, "slices": [], **change}
    with pytest.raises(SteeringError) as caught:
        rows_from_document(document)
    assert message in str(caught.value)
