"""Owner colours: slices side by side never share a colour while the palette allows."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from planner.heatmap import MACHINE_COLOURS, CellSlice, IpRow, _machine_colours

SIZE = 2048


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[IpRow], dict[str, list[CellSlice]]]:
    """Up to 6 IPs of one pool, each a run of 2,048-port slices owned by random machines."""
    names = [f"m{n:02d}" for n in range(draw(st.integers(2, 40)))]
    rows, by_ip = [], {}
    for number in range(draw(st.integers(1, 6))):
        ip = f"192.0.2.{number + 1}"
        owners = draw(st.lists(st.sampled_from(names), min_size=1, max_size=31))
        rows.append(IpRow(ip, 1, "warp · DE", 1024, 65535, (), "active"))
        by_ip[ip] = [
            CellSlice(ip, 2048 + SIZE * slot, 2048 + SIZE * (slot + 1) - 1, owner)
            for slot, owner in enumerate(owners)
        ]
    return rows, by_ip


@settings(max_examples=200, deadline=None)
@given(layouts())
def test_it_gives_touching_machines_different_colours(
    layout: tuple[list[IpRow], dict[str, list[CellSlice]]],
) -> None:
    rows, by_ip = layout
    colours = _machine_colours(rows, by_ip)
    neighbours: dict[str, set[str]] = {}
    pairs = []
    for index, row in enumerate(rows):
        cells = by_ip[row.ip]
        pairs += [(a.machine, b.machine) for a, b in zip(cells, cells[1:], strict=False)]
        if index:  # the same slots on the row above
            above = by_ip[rows[index - 1].ip]
            pairs += [(a.machine, b.machine) for a, b in zip(above, cells, strict=False)]
    for one, other in pairs:
        if one != other:
            neighbours.setdefault(one, set()).add(other)
            neighbours.setdefault(other, set()).add(one)
    for one, other in pairs:
        crowded = max(len(neighbours.get(one, ())), len(neighbours.get(other, ())))
        crowded = crowded >= MACHINE_COLOURS
        if one != other and not crowded:
            assert colours[(1, one)] != colours[(1, other)], (one, other)
