"""Owner colours: slices side by side never share a colour while the palette allows."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.core.cache import cache
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.heatmap import (
    MACHINE_COLOURS,
    OWNERSHIP,
    CellSlice,
    HeatmapFilter,
    IpRow,
    _machine_colours,
    datacenter_heatmap,
)
from planner.models import Datacenter, Machine
from planner.services.keys import signing_key_generate
from planner.services.plans import plan_apply_current
from tests.planner.factories import make_datacenter, make_ip, make_machine, make_pool

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


# --- the colouring cache: shared by every web process, keyed so it is never stale ----


def _ownership(dc: Datacenter, **narrowed: Any) -> list[list[Any]]:
    filters = HeatmapFilter(collapse=False, **narrowed)
    return datacenter_heatmap(datacenter=dc, mode=OWNERSHIP, filters=filters).z


def _fresh(dc: Datacenter, **narrowed: Any) -> list[list[Any]]:
    cache.clear()
    return _ownership(dc, **narrowed)


@pytest.mark.django_db
def test_cached_colours_follow_each_audited_write_and_the_rows_chosen(key_dir: Path) -> None:
    """The colouring comes from the cache until a write (here a plan apply adding
    machines, which recolours neighbours), and a narrowed view (one IP: no row
    above it) gets its own, as when nothing was cached."""
    signing_key_generate()
    dc = make_datacenter(code="col1")
    pool = make_pool(datacenter=dc, slice_size=2048)
    for n in range(3):
        make_ip(f"198.51.100.{n + 1}", pool=pool)
    for n in range(12):
        make_machine(f"h{n:02d}.col1.example.net", datacenter=dc).pools.set([pool])
    plan_apply_current(datacenter=dc, reason="first", full=True)
    cache.clear()
    before = _ownership(dc)
    calls: list[int] = []
    with mock.patch("planner.heatmap._machine_colours", side_effect=record(calls)):
        assert _ownership(dc) == before
        assert calls == []  # from the cache
    for n in range(12, 40):
        make_machine(f"h{n:02d}.col1.example.net", datacenter=dc).pools.set([pool])
    plan_apply_current(datacenter=dc, reason="more", full=True)  # audited: a new key
    after = _ownership(dc)
    assert after == _fresh(dc) and after != before
    _ownership(dc)  # the whole datacenter's colouring cached, then one IP alone:
    assert _ownership(dc, ip="198.51.100.2") == _fresh(dc, ip="198.51.100.2")


def record(calls: list[int]) -> Any:
    """The real colouring, counting its calls."""

    def colour(*args: Any) -> Any:
        calls.append(1)
        return _machine_colours(*args)

    return colour


@pytest.mark.django_db
def test_a_join_recolours_the_pool_it_joined_and_no_other(key_dir: Path) -> None:
    """Cached per pool and plan version: a scoped plan that writes one pool's slices
    leaves the other pools' colourings in the cache; a rename (no version bump)
    is caught by the owners no longer matching."""
    signing_key_generate()
    dc = make_datacenter(code="col2")
    pools = [make_pool(datacenter=dc, purpose=p, slice_size=2048) for p in ("warp", "cdn")]
    for p, pool in enumerate(pools):
        for n in range(2):
            make_ip(f"198.51.{p}.{n + 1}", pool=pool)
    for n in range(20):
        make_machine(f"h{n:02d}.col2.example.net", datacenter=dc).pools.set(pools)
    plan_apply_current(datacenter=dc, reason="first", full=True)
    cache.clear()
    _ownership(dc)
    make_machine("late.col2.example.net", datacenter=dc).pools.set([pools[1]])
    plan_apply_current(datacenter=dc, reason="join")  # scoped: cdn only
    coloured: list[set[int]] = []

    def colour(rows: Any, by_ip: Any) -> Any:
        coloured.append({row.pool_id for row in rows})
        return _machine_colours(rows, by_ip)

    with mock.patch("planner.heatmap._machine_colours", side_effect=colour):
        after = _ownership(dc)
    assert coloured == [{pools[1].pk}]
    assert after == _fresh(dc)
    Machine.objects.filter(hostname="h03.col2.example.net").update(
        hostname="renamed.col2.example.net"
    )
    coloured.clear()
    with mock.patch("planner.heatmap._machine_colours", side_effect=colour):
        renamed = _ownership(dc)
    assert coloured == [{pools[0].pk, pools[1].pk}]  # both pools had it
    assert renamed == _fresh(dc)
