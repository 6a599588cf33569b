"""The heatmap tells the truth: it opens on the slices, and never draws room that is not there."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from planner.heatmap import (
    FREE,
    RESERVED,
    UNUSABLE,
    UTIL_RESERVED,
    UTIL_UNUSABLE,
    IpRow,
    _Grid,
    _pool_occupancy,
    column_edges,
    fit_range,
)

BUCKET = 64
EDGES = column_edges(BUCKET)


def _ports(grid: _Grid, row: IpRow, code: int) -> set[int]:
    """The first port of every column that ``row``'s template draws as ``code``."""
    template = grid.template(row)
    return {grid.edges[i] for i, value in enumerate(template) if value == code}


def test_it_draws_ports_off_the_slot_grid_as_unusable_not_free() -> None:
    grid = _Grid(EDGES, BUCKET)
    row = IpRow("192.0.2.1", 1, "warp · DE", 1024, 65535, (), "active", slice_size=8192)
    unusable = _ports(grid, row, UNUSABLE)
    # 8,192-port slots start at multiples of 8,192: 1,024-8,191 can never be handed out.
    assert unusable == set(range(1024, 8192, BUCKET))
    assert min(_ports(grid, row, FREE)) == 8192


def test_it_keeps_reserved_ports_reserved_and_shrinks_the_grid_around_them() -> None:
    grid = _Grid(EDGES, BUCKET)
    row = IpRow("192.0.2.1", 1, "warp · DE", 1024, 65535, (9000,), "active", slice_size=8192)
    assert _ports(grid, row, RESERVED) == {8960}
    # The slot 8,192-16,383 holds the reserved port: none of it is free.
    assert not _ports(grid, row, FREE) & set(range(8192, 16384))
    assert min(_ports(grid, row, FREE)) == 16384


def test_a_pool_row_keeps_unusable_and_reserved_apart_from_free() -> None:
    column = [[UNUSABLE, RESERVED, FREE, 3], [UNUSABLE, RESERVED, FREE, FREE]]
    assert _pool_occupancy(column) == [UTIL_UNUSABLE, UTIL_RESERVED, 0.0, 0.5]


spans = st.lists(
    st.integers(1024, 65535).flatmap(lambda lo: st.tuples(st.just(lo), st.integers(lo, 65535))),
    min_size=1,
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(spans=spans, bucket=st.sampled_from([64, 128, 256]))
def test_the_fitted_range_shows_every_slice_at_most_four_times_their_span(
    spans: list[tuple[int, int]], bucket: int
) -> None:
    edges = column_edges(bucket)
    lo, end = min(s[0] for s in spans), max(s[1] for s in spans) + 1
    fit = fit_range(spans, edges=edges, bucket=bucket)
    if fit is None:  # only when the slices already fill most of the axis
        assert end - lo > 0.6 * (edges[-1] - edges[0]) / 4
        return
    start, stop = fit
    assert edges[0] <= start <= lo and end <= stop <= edges[-1] <= 65536
    assert stop - start <= 4 * (end - lo)


def test_no_slice_means_the_whole_axis() -> None:
    assert fit_range([], edges=EDGES, bucket=BUCKET) is None
