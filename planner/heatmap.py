"""The port-space heatmap, aggregated on the server (reads only).

Rows are egress IPs grouped by pool (or one row per pool when collapsed),
columns are port buckets across 1024-65535. A cell holds a code in
ownership mode (who owns the bucket, or why nobody does), a fraction in
utilization mode (sockets in use / ports), or a diff code for a plan preview.
Alongside the grid goes the list of slices per row, so a client can name the
IP, ports, machine, state, drain end and use under the pointer without one
label per cell.

:mod:`planner.charts` turns a :class:`Heatmap` into a Plotly figure; the
datacenter page and ``GET /api/v1/datacenters/{code}/heatmap`` both serve it.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from django.core.cache import cache
from django.db.models import TextField
from django.db.models.functions import Cast

import allocator as alloc
import contract
from allocator.grid import grid_origin, slots_in_gap
from allocator.inventory import address_order
from allocator.ports import PortRange, free_gaps, ranges_of_ports
from planner import constants
from planner.choices import SliceState
from planner.models import Datacenter, EgressIP, EgressPool, Machine, PortSlice, pool_key
from planner.selectors import current_revision

OWNERSHIP, UTILIZATION, DIFF = "ownership", "utilization", "diff"
MODES = (OWNERSHIP, UTILIZATION)

# Cell codes shared by every categorical mode.
UNUSABLE, RESERVED, FREE = 0, 1, 2
# Ownership: machines take MACHINE_BASE + (their rank in the pool mod MACHINE_COLOURS).
MACHINE_BASE, MACHINE_COLOURS = 3, 10
# Plan diff: what the plan does to each slice.
DIFF_KINDS = ("kept", "added", "draining", "freed", "revived", "still_draining")
DIFF_BASE = 3
# Every other kept slice of a row in a second shade, so neighbours stay apart.
KEPT_ALTERNATE = DIFF_BASE + len(DIFF_KINDS)

# More rows than this and the datacenter starts collapsed: one row per pool.
COLLAPSE_ABOVE = 120
# A column is never finer than the buckets agents report usage in.
BUCKET_MIN, BUCKET_MAX, BUCKET_DEFAULT = contract.BUCKET_SIZE, 4096, 256
# Utilization cells that are not a measured use, drawn in bands below 0 %:
# ports nobody may use, reserved ports, and slices whose agent has not reported.
UTIL_UNUSABLE, UTIL_RESERVED, UTIL_NO_REPORT = -0.25, -0.15, -0.05
STATE_CODES = {SliceState.ACTIVE.value: 0, SliceState.DRAINING.value: 1}


@dataclass(frozen=True)
class HeatmapFilter:
    """What the operator narrowed the picture to; ``collapse`` None means automatic."""

    pool: int | None = None
    purpose: str = ""
    country: str = ""
    ip: str = ""
    collapse: bool | None = None
    bucket: int | None = None


@dataclass(frozen=True)
class IpRow:
    """One egress IP as a heatmap row."""

    ip: str
    pool_id: int
    pool_label: str
    usable_lo: int
    usable_hi: int
    reserved: tuple[int, ...]
    state: str
    # The pool's slice size: slots start on its grid, so ports off the grid are unusable.
    slice_size: int = 0

    @property
    def label(self) -> str:
        return f"{self.pool_label} · {self.ip}"


@dataclass(slots=True)
class CellSlice:
    """A slice as the heatmap draws it: where, whose, its state and its use.

    Not frozen: a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, which doubled the cost of reading 80,000 slices.
    """

    ip: str
    lo: int
    hi: int
    machine: str
    state: str = SliceState.ACTIVE
    drain_until: datetime | None = None
    kind: str = ""  # plan diff kind, in the diff picture only
    sockets: int | None = None
    buckets: dict[str, int] | None = None


@dataclass
class Heatmap:
    """The grid and what a client needs to explain each cell."""

    datacenter: str
    mode: str
    revision: int
    bucket: int
    edges: list[int]  # column i spans edges[i] .. edges[i+1]-1
    rows: list[dict[str, Any]]
    z: list[list[Any]]
    collapsed: bool
    machines: list[str]
    slices: list[list[Any]]  # [row, lo, hi, machine index, state code, drain end, use, kind]
    draining: list[tuple[int, int, int]]  # (row, lo, hi) to mark
    total_rows: int
    # The ports the shown slices span, with a margin (None: no slice), and the whole axis.
    fit: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "datacenter": self.datacenter,
            "mode": self.mode,
            "revision": self.revision,
            "bucket": self.bucket,
            "edges": self.edges,
            "collapsed": self.collapsed,
            "rows": self.rows,
            "machines": self.machines,
            "slices": self.slices,
            "total_rows": self.total_rows,
            "fit": list(self.fit) if self.fit else None,
            "whole": [self.edges[0], self.edges[-1]],
        }


def bucket_width(slice_sizes: Iterable[int], requested: int | None = None) -> int:
    """A power of two no wider than the smallest slice, so a bucket rarely holds two owners."""
    if requested:
        width = requested
    else:
        smallest = min(slice_sizes, default=BUCKET_DEFAULT)
        width = 1 << max(smallest.bit_length() - 1, 0)
        width = min(width, BUCKET_DEFAULT)
    return max(BUCKET_MIN, min(BUCKET_MAX, width))


def column_edges(width: int) -> list[int]:
    """Bucket edges aligned to multiples of ``width`` covering 1024-65535."""
    first = constants.USABLE_LO - constants.USABLE_LO % width
    return list(range(first, constants.USABLE_HI + 2, width)) + (
        [constants.USABLE_HI + 1] if (constants.USABLE_HI + 1 - first) % width else []
    )


def ip_rows(
    *, datacenter: Datacenter, filters: HeatmapFilter
) -> tuple[list[IpRow], dict[int, EgressPool]]:
    """The IP rows the filters keep, by pool then address, and the pools by id."""
    pools = EgressPool.objects.filter(datacenter=datacenter)
    if filters.pool:
        pools = pools.filter(pk=filters.pool)
    if filters.purpose:
        pools = pools.filter(purpose=filters.purpose)
    if filters.country:
        pools = pools.filter(country=filters.country.upper())
    by_id = {pool.pk: pool for pool in pools.order_by("purpose", "country", "region", "city", "pk")}
    labels = _unique_pool_labels(by_id.values())
    ips = EgressIP.objects.filter(pool_id__in=list(by_id))
    if filters.ip:
        ips = ips.filter(address=filters.ip)
    order = {pk: rank for rank, pk in enumerate(by_id)}
    rows = [
        IpRow(
            address,
            pool_id,
            labels[pool_id],
            lo,
            hi,
            tuple(reserved or ()),
            state,
            by_id[pool_id].slice_size,
        )
        for address, pool_id, lo, hi, reserved, state in ips.values_list(
            "address", "pool_id", "usable_lo", "usable_hi", "reserved_ports", "state"
        )
    ]
    rows.sort(key=lambda row: (order[row.pool_id], address_order(row.ip)))
    return rows, by_id


def _unique_pool_labels(pools: Iterable[EgressPool]) -> dict[int, str]:
    """``purpose · country``, with the city or the id added when two pools would look alike."""
    pools = list(pools)
    plain = defaultdict(list)
    for pool in pools:
        plain[f"{pool.purpose} · {pool.country}"].append(pool)
    labels = {}
    for label, same in plain.items():
        for pool in same:
            if len(same) == 1:
                labels[pool.pk] = label
            else:
                extra = "/".join(part for part in (pool.region, pool.city) if part) or f"#{pool.pk}"
                labels[pool.pk] = f"{label} ({extra})"
    return labels


def stored_slices(
    *, rows: Sequence[IpRow], with_usage: bool, datacenter: Datacenter, per_bucket: bool = True
) -> list[CellSlice]:
    """The live slices on ``rows``' IPs, with the latest usage when asked.

    ``per_bucket`` False leaves out the 64-port bucket counts (spread evenly
    instead): a pool-wide row does not need them. When they are read, they come
    as the database's JSON text and are decoded in one ``json.loads`` of them
    all: one call per slice (what a JSONField does) cost half a second at 80,000.
    """
    addresses = {row.ip for row in rows}
    if not addresses:
        return []
    # No ORDER BY: the grid sorts each IP's slices itself, and sorting 80,000 rows
    # in the database spilled to disk.
    queryset = PortSlice.objects.filter(ip__pool__datacenter=datacenter).order_by()
    if len(addresses) < 500:
        queryset = queryset.filter(ip__address__in=addresses)
    names = dict(Machine.objects.filter(datacenter=datacenter).values_list("pk", "hostname"))
    fields = ["ip__address", "lo", "hi", "machine_id", "state", "drain_until"]
    if with_usage:
        fields += ["usage__tcp", "usage__udp"]
        if per_bucket:
            queryset = queryset.annotate(buckets_json=Cast("usage__buckets", TextField()))
            fields.append("buckets_json")
    found = [values for values in queryset.values_list(*fields) if values[0] in addresses]
    buckets: list[dict[str, int]] = (
        json.loads("[" + ",".join(values[8] or "{}" for values in found) + "]")
        if with_usage and per_bucket
        else []
    )
    result = []
    for number, values in enumerate(found):
        sockets: int | None = None
        counts: dict[str, int] = {}
        if with_usage and values[6] is not None:
            sockets = values[6] + values[7]
            counts = (buckets[number] or {}) if per_bucket else {}
        result.append(
            CellSlice(
                values[0],
                values[1],
                values[2],
                names[values[3]],
                values[4],
                values[5],
                sockets=sockets,
                buckets=counts,
            )
        )
    return result


def plan_slices(plan: alloc.Plan) -> list[CellSlice]:
    """A previewed plan's slices, each with what the plan does to it (freed ones too)."""
    kinds: dict[tuple[str, int], str] = {}
    for kind in ("kept", "added", "draining", "revived", "still_draining"):
        for slice_ in getattr(plan.diff, kind):
            kinds[(slice_.ip, slice_.lo)] = kind
    cells = [
        CellSlice(
            s.ip, s.lo, s.hi, s.machine, s.state, s.drain_until, kinds.get((s.ip, s.lo), "kept")
        )
        for s in plan.slices
    ]
    taken = {(s.ip, s.lo) for s in plan.slices}
    cells += [
        CellSlice(s.ip, s.lo, s.hi, s.machine, s.state, s.drain_until, "freed")
        for s in plan.diff.freed
        if (s.ip, s.lo) not in taken
    ]
    return cells


def pool_key_of(datacenter: Datacenter, pool: EgressPool) -> str:
    """``pool``'s key as plans name it (``pool.datacenter`` need not be loaded)."""
    return pool_key(datacenter.code, pool.purpose, pool.country, pool.region, pool.city)


def plan_heatmap(
    *,
    datacenter: Datacenter,
    plan: alloc.Plan,
    edit: Callable[[IpRow], IpRow] | None = None,
) -> tuple[Heatmap, int]:
    """The picture of what ``plan`` does, and how many IPs the datacenter has.

    On a datacenter too large for one row per IP, only the IPs the plan changes.
    ``edit`` gives a row as an inventory edit not yet written would leave it (its
    usable range, reserved ports, slice size), so the greys match the plan.
    """
    rows, pools = ip_rows(datacenter=datacenter, filters=HeatmapFilter())
    # A scoped plan speaks for its pools only: other pools' rows would look emptied.
    planned = {pk for pk, pool in pools.items() if pool_key_of(datacenter, pool) in plan.capacity}
    rows = [row for row in rows if row.pool_id in planned]
    if edit is not None:
        rows = [edit(row) for row in rows]
    cells = plan_slices(plan)
    shown = len(rows)
    if len(rows) > COLLAPSE_ABOVE:
        changed = {c.ip for c in cells if c.kind not in ("kept", "still_draining")}
        rows = [row for row in rows if row.ip in changed]
    kept = {row.ip for row in rows}
    picture = build_heatmap(
        datacenter=datacenter,
        mode=DIFF,
        rows=rows,
        pools=pools,
        slices=[c for c in cells if c.ip in kept],
        filters=HeatmapFilter(collapse=False),
    )
    return picture, shown


def what_if_heatmap(
    *, datacenter: Datacenter, plan: alloc.Plan, pool: EgressPool, usable: tuple[int, int]
) -> Heatmap:
    """The picture of a what-if plan: the pool's IPs, the hypothetical ones after them.

    The what-if IPs exist only in the plan (``what-if-ip-N``), so their rows are made
    here with the pool's typical usable range; nothing is read from them or written.
    """
    rows, pools = ip_rows(datacenter=datacenter, filters=HeatmapFilter(pool=pool.pk))
    known = {row.ip for row in rows}
    label = rows[0].pool_label if rows else f"{pool.purpose} · {pool.country}"
    extra = sorted(
        {s.ip for s in plan.slices if s.ip.startswith("what-if-ip-") and s.ip not in known},
        key=lambda ip: int(ip.rsplit("-", 1)[1]),
    )
    rows += [
        IpRow(ip, pool.pk, label, usable[0], usable[1], (), "active", pool.slice_size)
        for ip in extra
    ]
    shown = {row.ip for row in rows}
    return build_heatmap(
        datacenter=datacenter,
        mode=DIFF,
        rows=rows,
        pools=pools,
        slices=[cell for cell in plan_slices(plan) if cell.ip in shown],
        filters=HeatmapFilter(collapse=False),
    )


def datacenter_heatmap(
    *, datacenter: Datacenter, mode: str = OWNERSHIP, filters: HeatmapFilter | None = None
) -> Heatmap:
    """The heatmap of the datacenter's live slices in ``mode``."""
    filters = filters or HeatmapFilter()
    rows, pools = ip_rows(datacenter=datacenter, filters=filters)
    if filters.collapse is None:
        filters = replace(filters, collapse=len(rows) > COLLAPSE_ABOVE)
    coloured = mode == OWNERSHIP and not filters.collapse
    key = colours_key(datacenter=datacenter, filters=filters) if coloured else None
    # 80,000 slices and a million cells, none in a reference cycle: the cyclic
    # collector rescanning them again and again cost a tenth of the build.
    with alloc.collector_paused():
        slices = stored_slices(
            rows=rows,
            with_usage=mode == UTILIZATION,
            datacenter=datacenter,
            per_bucket=not filters.collapse,
        )
        return build_heatmap(
            datacenter=datacenter,
            mode=mode,
            rows=rows,
            pools=pools,
            slices=slices,
            filters=filters,
            colour_key=key,
        )


def build_heatmap(
    *,
    datacenter: Datacenter,
    mode: str,
    rows: list[IpRow],
    pools: dict[int, EgressPool],
    slices: list[CellSlice],
    filters: HeatmapFilter,
    colour_key: str | None = None,
) -> Heatmap:
    """The picture of ``slices`` on ``rows``; ``colour_key`` (:func:`colours_key`), for
    the stored slices only, lets an ownership grid take its colouring from the cache."""
    width = bucket_width((pool.slice_size for pool in pools.values()), filters.bucket)
    edges = column_edges(width)
    collapse = filters.collapse
    if collapse is None:
        collapse = len(rows) > COLLAPSE_ABOVE
    grid = _Grid(edges, width)
    by_ip = defaultdict(list)
    for cell in slices:
        by_ip[cell.ip].append(cell)
    for cells in by_ip.values():
        cells.sort(key=lambda cell: cell.lo)
    machines = sorted({cell.machine for cell in slices})
    machine_index = {name: index for index, name in enumerate(machines)}
    # A pool row only counts owned cells, so one code does for every machine there;
    # only the ownership grid shows machine colours (0.3 s at 80,000 slices to pick).
    colour: dict[tuple[int, str], int] = (
        defaultdict(lambda: MACHINE_BASE)
        if collapse or mode != OWNERSHIP
        else _machine_colours(rows, by_ip)
        if colour_key is None
        else cached_colours(
            colour_key, rows, by_ip, {pk: pool.plan_version for pk, pool in pools.items()}
        )
    )
    z: list[list[Any]] = []
    hover: list[list[Any]] = []
    draining: list[tuple[int, int, int]] = []
    # Collapsed utilization is summed per pool from the slices: no per-IP grid needed.
    per_ip_grid = not (collapse and mode == UTILIZATION)
    for number, row in enumerate(rows):
        cells = by_ip.get(row.ip, [])
        if per_ip_grid:
            z.append(grid.row(row, cells, mode, colour))
        if collapse:
            continue
        for cell in cells:
            use = _slice_use(cell) if mode == UTILIZATION else None
            hover.append(
                [
                    number,
                    cell.lo,
                    cell.hi,
                    machine_index[cell.machine],
                    STATE_CODES.get(cell.state, 0),
                    cell.drain_until.isoformat(timespec="minutes") if cell.drain_until else None,
                    use,
                    cell.kind,
                ]
            )
            if cell.state == SliceState.DRAINING and mode != DIFF:
                draining.append((number, cell.lo, cell.hi))
    row_dicts = [
        {
            "label": row.label,
            "ip": row.ip,
            "pool": row.pool_id,
            "pool_label": row.pool_label,
            "state": row.state,
            "usable": [row.usable_lo, row.usable_hi],
            "reserved": len(row.reserved),
        }
        for row in rows
    ]
    heatmap = Heatmap(
        datacenter=datacenter.code,
        mode=mode,
        revision=current_revision(datacenter=datacenter),
        bucket=width,
        edges=edges,
        rows=row_dicts,
        z=z,
        collapsed=False,
        machines=machines,
        slices=hover,
        draining=draining,
        total_rows=len(rows),
        fit=fit_range([(cell.lo, cell.hi) for cell in slices], edges=edges, bucket=width),
    )
    if collapse:
        return _collapsed(heatmap, rows, pools, grid, by_ip)
    return heatmap


# The default view shows the slices plus this share of their span on each side.
FIT_MARGIN = 8
# A fitted view wider than this share of the axis is no help: show the whole axis.
FIT_AT_MOST = 0.6


def fit_range(
    spans: Sequence[tuple[int, int]], *, edges: list[int], bucket: int
) -> tuple[int, int] | None:
    """The x range that shows every slice with a margin, inside the axis; None for the whole axis.

    The margin is an eighth of the span but at least a column (and never more than the
    span itself), so a lone 64-port slice is still wide enough to hover, and the range
    stays within four times the span: what a sparse pool needs to be seen at all.
    """
    if not spans:
        return None
    lo = min(span[0] for span in spans)
    hi = max(span[1] for span in spans) + 1  # the right edge of the last port
    width = hi - lo
    margin = max(width // FIT_MARGIN, min(bucket, width))
    start, end = max(edges[0], lo - margin), min(edges[-1], hi + margin)
    if end - start > FIT_AT_MOST * (edges[-1] - edges[0]):
        return None
    return start, end


# A pool's colouring outlives no change of its slices (its key changes); this only
# bounds the cache's size.
COLOURS_CACHE_SECONDS = 600


def colours_key(*, datacenter: Datacenter, filters: HeatmapFilter) -> str:
    """Where the colourings of the datacenter's pools under ``filters`` are cached,
    one entry per pool and plan version under this prefix (:func:`cached_colours`).

    A pool's colours depend on its live slices and on which of its rows sit
    next to which: both change only with a change the database counts in the
    pool's ``plan_version`` (its slices, its IPs; planner/plan_triggers.py), and
    the filters choose the rows. A join recolours the pool it joined, not the
    forty others.
    """
    chosen = repr((filters.pool, filters.purpose, filters.country.upper(), filters.ip))
    rows = hashlib.sha256(chosen.encode()).hexdigest()[:16]
    return f"portslice:colours:{datacenter.pk}:{rows}"


def cached_colours(
    key: str,
    rows: Sequence[IpRow],
    by_ip: dict[str, list[CellSlice]],
    versions: Mapping[int, int],
) -> dict[tuple[int, str], int]:
    """:func:`_machine_colours`, pool by pool from the cache every web process shares
    when another view picked them already at the pool's version in ``versions``
    (read before the slices: a write in between leaves its colours under the
    version it made obsolete). Only the pools missing are coloured here; an
    entry whose machines are not the pool's owners now (a machine renamed, which
    bumps no version) is picked again."""
    rows_of: dict[int, list[IpRow]] = defaultdict(list)
    for row in rows:
        rows_of[row.pool_id].append(row)
    keys = {pool: f"{key}:{pool}:{versions[pool]}" for pool in rows_of}
    found = cache.get_many(list(keys.values()))
    colours: dict[tuple[int, str], int] = {}
    missing = []
    for pool, pool_rows in rows_of.items():
        cached = found.get(keys[pool])
        owners = {cell.machine for row in pool_rows for cell in by_ip.get(row.ip, ())}
        if cached is None or cached.keys() != owners:
            missing.append(pool)
            continue
        colours.update(((pool, name), code) for name, code in cached.items())
    if missing:
        picked = _machine_colours([row for pool in missing for row in rows_of[pool]], by_ip)
        per_pool: dict[int, dict[str, int]] = {pool: {} for pool in missing}
        for (pool, name), code in picked.items():
            per_pool[pool][name] = code
        cache.set_many(
            {keys[pool]: codes for pool, codes in per_pool.items()}, COLOURS_CACHE_SECONDS
        )
        colours.update(picked)
    return colours


def _machine_colours(
    rows: Sequence[IpRow], by_ip: dict[str, list[CellSlice]]
) -> dict[tuple[int, str], int]:
    """Colour code per (pool, machine), so that slices side by side differ.

    Machines whose slices touch (next to each other on a row, or overlapping
    on neighbouring rows of the pool) are coloured greedily, by name, with the
    least used palette colour none of their coloured neighbours has; only when
    all ten are taken around a machine does its colour repeat a neighbour's. Colours
    repeat across pools, which is fine: the hover names the host.
    """
    # Pairs of machines whose slices touch, per pool, gathered first (a row's
    # neighbours in one C-level zip): 80,000 slices give as many pairs, most twice.
    pairs: dict[int, set[tuple[str, str]]] = defaultdict(set)
    owners: dict[int, set[str]] = defaultdict(set)
    above: tuple[int, list[CellSlice]] | None = None
    for row in rows:
        cells = by_ip.get(row.ip, [])
        names = [cell.machine for cell in cells]
        pairs[row.pool_id].update(zip(names, names[1:], strict=False))
        owners[row.pool_id].update(names)
        if above is not None and above[0] == row.pool_id:
            pairs[row.pool_id].update(_overlapping(above[1], cells))
        above = (row.pool_id, cells)
    colours: dict[tuple[int, str], int] = {}
    for pool, names_of_pool in owners.items():
        for name, code in _pool_colours(names_of_pool, pairs[pool]).items():
            colours[(pool, name)] = code
    return colours


def _pool_colours(owners: set[str], pairs: set[tuple[str, str]]) -> dict[str, int]:
    """The colours of one pool's ``owners``, given the ``pairs`` whose slices touch."""
    touching: dict[str, set[str]] = defaultdict(set)
    for one, other in pairs:
        if one != other:
            touching[one].add(other)
            touching[other].add(one)
    colours: dict[str, int] = {}
    used = [0] * MACHINE_COLOURS  # the least used free colour: all ten get used
    palette = range(MACHINE_COLOURS)
    for rank, name in enumerate(sorted(owners)):
        taken = {colours.get(other) for other in touching[name]}
        free = [c for c in palette if MACHINE_BASE + c not in taken]
        # The first of the least used: free is in palette order.
        pick = min(free, key=used.__getitem__) if free else rank % MACHINE_COLOURS
        used[pick] += 1
        colours[name] = MACHINE_BASE + pick
    return colours


def _overlapping(upper: list[CellSlice], lower: list[CellSlice]) -> list[tuple[str, str]]:
    """Machines whose slices overlap in ports on two neighbouring rows (both sorted by lo)."""
    found = []
    i = j = 0
    while i < len(upper) and j < len(lower):
        a, b = upper[i], lower[j]
        if a.hi >= b.lo and b.hi >= a.lo:
            found.append((a.machine, b.machine))
        if a.hi <= b.hi:
            i += 1
        else:
            j += 1
    return found


def _slice_use(cell: CellSlice) -> float | None:
    if cell.sockets is None:
        return None
    return round(cell.sockets / (cell.hi - cell.lo + 1), 4)


def _slot_runs(row: IpRow) -> list[tuple[int, int]]:
    """The port runs whole slots of the row's slice size can occupy (the free gaps if unknown)."""
    usable = PortRange(row.usable_lo, row.usable_hi)
    gaps = free_gaps(usable, ranges_of_ports(row.reserved))
    if not row.slice_size:
        return gaps
    origin = grid_origin(row.slice_size, usable)
    runs = []
    for lo, hi in gaps:
        first, count = slots_in_gap(lo, hi, row.slice_size, origin)
        if count:
            runs.append((first, first + count * row.slice_size - 1))
    return runs


class _Grid:
    """Builds one row of cells; rows of the same shape share their empty template."""

    def __init__(self, edges: list[int], width: int) -> None:
        self.edges = edges
        self.width = width
        self.first = edges[0]
        self.columns = len(edges) - 1
        self._templates: dict[tuple[int, int, tuple[int, ...], int], list[int]] = {}
        self._spans: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self._columns: dict[tuple[int, int], tuple[int, int]] = {}
        self._util_templates: dict[tuple[int, int, tuple[int, ...], int], list[Any]] = {}
        # Utilization of (sockets, ports) as drawn: thousands of cells share a few pairs.
        self._ratios: dict[tuple[float, int], float] = {}
        self._bucket_columns: dict[str, int] = {}

    def column(self, port: int) -> int:
        return min(max((port - self.first) // self.width, 0), self.columns - 1)

    def template(self, row: IpRow) -> list[int]:
        """Free where a slot of the pool's size could go, reserved, else unusable.

        Unusable covers both sides of the usable range and the ports the slot grid
        cannot reach (1,024-8,191 on an 8,192-port pool): nothing can be handed out
        there, so drawing them free would promise room that is not there.
        """
        key = (row.usable_lo, row.usable_hi, row.reserved, row.slice_size)
        if key not in self._templates:
            cells = [UNUSABLE] * self.columns
            for lo, hi in _slot_runs(row):
                cells[self.column(lo) : self.column(hi) + 1] = [FREE] * (
                    self.column(hi) - self.column(lo) + 1
                )
            for port in row.reserved:
                if row.usable_lo <= port <= row.usable_hi:
                    cells[self.column(port)] = RESERVED
            self._templates[key] = cells
        return self._templates[key]

    def row(
        self,
        row: IpRow,
        cells: Sequence[CellSlice],
        mode: str,
        colour: dict[tuple[int, str], int],
    ) -> list[Any]:
        if mode == UTILIZATION:
            return self.utilization_row(row, cells)
        values: list[Any] = list(self.template(row))
        kept = 0
        for cell in cells:
            if mode == DIFF:
                code = DIFF_BASE + DIFF_KINDS.index(cell.kind or "kept")
                if cell.kind == "freed" and values[self.column(cell.lo)] >= DIFF_BASE:
                    continue  # a new slice took the freed ports: show the new one
                if code == DIFF_BASE:
                    code = KEPT_ALTERNATE if kept % 2 else code
                    kept += 1
            else:
                code = colour[(row.pool_id, cell.machine)]
            a, b = self.columns_of(cell.lo, cell.hi)
            values[a : b + 1] = [code] * (b - a + 1)
        return values

    def columns_of(self, lo: int, hi: int) -> tuple[int, int]:
        """The first and last column ``lo``-``hi`` touches; cached like :meth:`spans`."""
        key = (lo, hi)
        found = self._columns.get(key)
        if found is None:
            found = self._columns[key] = (self.column(lo), self.column(hi))
        return found

    def ports_in(self, index: int, lo: int, hi: int) -> int:
        return max(0, min(hi, self.edges[index + 1] - 1) - max(lo, self.edges[index]) + 1)

    def spans(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """(column, ports of lo-hi in it) for each column lo-hi touches; cached, since
        thousands of slices share a handful of positions."""
        key = (lo, hi)
        if key not in self._spans:
            self._spans[key] = [
                (index, self.ports_in(index, lo, hi))
                for index in range(self.column(lo), self.column(hi) + 1)
            ]
        return self._spans[key]

    def bucket_column(self, bucket_lo: str) -> int:
        if bucket_lo not in self._bucket_columns:
            self._bucket_columns[bucket_lo] = self.column(int(bucket_lo))
        return self._bucket_columns[bucket_lo]

    def sockets_per_column(self, cell: CellSlice) -> dict[int, float]:
        """Sockets of a slice per column: from its 64-port buckets, else spread evenly."""
        per_column: dict[int, float] = {}
        if cell.buckets:
            columns = self._bucket_columns
            for bucket_lo, sockets in cell.buckets.items():
                index = columns.get(bucket_lo)
                if index is None:
                    index = self.bucket_column(bucket_lo)
                per_column[index] = per_column.get(index, 0.0) + sockets
        elif cell.sockets:
            size = cell.hi - cell.lo + 1
            for index, ports in self.spans(cell.lo, cell.hi):
                per_column[index] = per_column.get(index, 0.0) + cell.sockets * ports / size
        return per_column

    def utilization_template(self, row: IpRow) -> list[Any]:
        """:meth:`template` in utilization's bands (None where a slot could go)."""
        key = (row.usable_lo, row.usable_hi, row.reserved, row.slice_size)
        if key not in self._util_templates:
            grey = {UNUSABLE: UTIL_UNUSABLE, RESERVED: UTIL_RESERVED, FREE: None}
            self._util_templates[key] = [grey[code] for code in self.template(row)]
        return self._util_templates[key]

    def utilization_row(self, row: IpRow, cells: Sequence[CellSlice]) -> list[Any]:
        """Each cell a slice covers: its sockets there over its ports there, at most 1,
        to four places (memoized: thousands of cells share a few (sockets, ports);
        inline, as it runs 640,000 times for 4,000 IPs)."""
        values = list(self.utilization_template(row))
        ratios = self._ratios
        for cell in cells:
            spans = self.spans(cell.lo, cell.hi)
            if cell.sockets is None:  # no report: not the same as idle
                for index, _ in spans:
                    values[index] = UTIL_NO_REPORT
                continue
            per_column = self.sockets_per_column(cell)
            for index, ports in spans:
                if ports:
                    key = (per_column.get(index, 0.0), ports)
                    ratio = ratios.get(key)
                    if ratio is None:
                        ratio = ratios[key] = round(min(key[0] / ports, 1.0), 4)
                    values[index] = ratio
        return values


def _collapsed(
    heatmap: Heatmap,
    rows: list[IpRow],
    pools: dict[int, EgressPool],
    grid: _Grid,
    by_ip: dict[str, list[CellSlice]],
) -> Heatmap:
    """One row per pool: the share of its IPs handed out per bucket, or their use."""
    members: dict[int, list[int]] = defaultdict(list)
    for number, row in enumerate(rows):
        members[row.pool_id].append(number)
    z, row_dicts = [], []
    for pool_id, numbers in members.items():
        if heatmap.mode == UTILIZATION:
            z.append(_pool_utilization(grid, [rows[n] for n in numbers], by_ip))
        else:
            z.append(_pool_occupancy([heatmap.z[n] for n in numbers]))
        pool = pools[pool_id]
        label = rows[numbers[0]].pool_label
        row_dicts.append(
            {
                "label": f"{label} · {len(numbers)} IPs",
                "ip": "",
                "pool": pool_id,
                "pool_label": label,
                "state": "",
                "ips": len(numbers),
                "slice_size": pool.slice_size,
            }
        )
    heatmap.z, heatmap.rows, heatmap.collapsed = z, row_dicts, True
    heatmap.slices, heatmap.draining, heatmap.machines = [], [], []
    return heatmap


def _pool_base(grid: _Grid, rows: list[IpRow]) -> list[float | None]:
    """Per column of a pool row: unusable or reserved on every IP (their band), else None."""
    result: list[float | None] = []
    templates = {id(t): t for t in (grid.template(row) for row in rows)}.values()
    for column in zip(*templates, strict=True):
        if FREE in column:
            result.append(None)
        elif RESERVED in column:
            result.append(UTIL_RESERVED)
        else:
            result.append(UTIL_UNUSABLE)
    return result


def _pool_occupancy(ip_rows_z: list[list[Any]]) -> list[float | None]:
    """Share of the IPs handed out per column; unusable and reserved columns keep their band."""
    result: list[float | None] = []
    for column in zip(*ip_rows_z, strict=True):
        usable = len(column) - column.count(UNUSABLE)
        free = column.count(FREE)
        taken = usable - column.count(RESERVED) - free
        if not usable:
            result.append(UTIL_UNUSABLE)
        elif not taken and not free:
            result.append(UTIL_RESERVED)
        else:
            result.append(round(taken / (taken + free), 4))
    return result


def _pool_utilization(
    grid: _Grid, rows: list[IpRow], by_ip: dict[str, list[CellSlice]]
) -> list[float | None]:
    """Sockets ÷ ports per column over the pool's reported slices.

    Slices without bucket counts are summed per position first: thousands of
    them share a handful of (lo, hi), so each position is spread once. A
    column whose slices never reported is "no report", not 0 %.
    """
    sockets = [0.0] * grid.columns
    ports = [0] * grid.columns
    silent = [False] * grid.columns
    at_position: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        for cell in by_ip.get(row.ip, ()):
            if cell.sockets is None:
                for index, _ in grid.spans(cell.lo, cell.hi):
                    silent[index] = True
                continue
            if cell.buckets:
                for index, count in grid.sockets_per_column(cell).items():
                    sockets[index] += count
                for index, held in grid.spans(cell.lo, cell.hi):
                    ports[index] += held
            else:
                position = at_position[(cell.lo, cell.hi)]
                position[0] += cell.sockets
                position[1] += 1
    for (lo, hi), (total, slices) in at_position.items():
        size = hi - lo + 1
        for index, held in grid.spans(lo, hi):
            sockets[index] += total * held / size
            ports[index] += held * slices
    base = _pool_base(grid, rows)
    return [
        round(min(s / p, 1.0), 4) if p else (UTIL_NO_REPORT if quiet else empty)
        for s, p, quiet, empty in zip(sockets, ports, silent, base, strict=True)
    ]
