"""Reading inventory files into plain records, and writing geofeeds.

Three input formats, told apart by their content (or named explicitly):

- **JSON**: ``{"datacenters": [...], "pools": [...], "ips": [...], "machines": [...]}``,
  each item an object with the model's field names (pools and IPs name their
  datacenter by code; machines name their pools by key, e.g. ``fra1/warp/DE``).
- **CSV** with a header row: egress IPs (columns ``datacenter, purpose, country,
  region, city, address`` and optionally ``usable_lo, usable_hi, reserved_ports``)
  or machines (``hostname, datacenter, address`` and optionally ``pools``
  separated by ``;``, ``weight``, ``state``).
- **RFC 8805 geofeed**: ``ip_prefix,alpha2code,region,city,postal_code`` with no
  header and ``#`` comments; it carries no datacenter or purpose, so those are
  given by the caller. A prefix stands for every address in it, up to
  :data:`PREFIX_ADDRESSES` of them (a ``/24``) unless an admin opts in with
  ``large_prefixes`` (then up to :data:`MAX_RECORDS`).

Costs are bounded before anything is built: a document is at most
:data:`MAX_BYTES` and :data:`MAX_LINES` lines and yields at most
:data:`MAX_RECORDS` records; reserved ports are read as ranges and counted
(at most :data:`MAX_RESERVED_PORTS`) before a list of them is made.

Nothing here touches the database: parsing yields :class:`InventoryRecord`
objects that ``services.inventory_import`` writes in one transaction.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from planner.constants import ERR_RESERVED_COUNT, MAX_RESERVED_PORTS

KINDS = ("datacenters", "pools", "ips", "machines")
IP_COLUMNS = {"datacenter", "purpose", "country", "address"}
MACHINE_COLUMNS = {"hostname", "datacenter", "address"}
GEOFEED_FIELDS = ("ip_prefix", "alpha2code", "region", "city", "postal_code")
# What one import may cost. The whole import is one transaction under the
# datacenter's lock, so these bound how long it holds it as well as memory
# (docs/benchmarks.md has the largest allowed import's time and peak memory).
MAX_BYTES = 1024 * 1024  # as MAX_REQUEST_BODY: the web would refuse more anyway
MAX_LINES = 20_000
MAX_RECORDS = 1_000
# A geofeed prefix expands to at most this many addresses (a /24) unless an
# admin opts in with large_prefixes; then MAX_RECORDS bounds it.
PREFIX_ADDRESSES = 256

ERR_TOO_BIG = "%(size)s is more than the %(limit)s an import may have; split the file"
ERR_PREFIX_TOO_BIG = (
    "%(count)d addresses; a prefix may stand for at most %(limit)d "
    "(an admin may allow more with large_prefixes)"
)
ERR_NOT_AN_ADDRESS = "not an IP address"


class InventoryError(ValueError):
    """A bad inventory row: where it is, which field, which value, and why."""

    def __init__(self, where: str, field: str, value: Any, message: str) -> None:
        self.where, self.field, self.value, self.message = where, field, value, message
        # The same record's other wrong fields: one error per field, this one first.
        self.also: list[InventoryError] = []
        super().__init__(f"{where}: field {field!r}, value {value!r}: {message}")

    @property
    def every(self) -> list[InventoryError]:
        """This error and the same record's other wrong fields."""
        return [self, *self.also]


@dataclass(frozen=True)
class InventoryRecord:
    """One object to create or update; ``where`` locates it in the source file."""

    kind: str
    where: str
    values: dict[str, Any] = field(default_factory=dict)


def detect_format(text: str) -> str:
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return "json"
    first = next((ln for ln in stripped.splitlines() if ln.strip() and not ln.startswith("#")), "")
    header = {cell.strip() for cell in first.split(",")}
    if header >= MACHINE_COLUMNS and "hostname" in header:
        return "machines-csv"
    if header >= IP_COLUMNS:
        return "ips-csv"
    return "geofeed"


def parse_inventory(
    text: str,
    *,
    fmt: str = "auto",
    datacenter: str = "",
    purpose: str = "",
    large_prefixes: bool = False,
) -> list[InventoryRecord]:
    """The records of ``text``, or :class:`InventoryError` for the first bad one.

    ``large_prefixes`` (an admin's choice) lets a geofeed prefix stand for up
    to :data:`MAX_RECORDS` addresses instead of :data:`PREFIX_ADDRESSES`.
    """
    _check_size(text)
    fmt = detect_format(text) if fmt == "auto" else fmt
    if fmt == "json":
        records = _parse_json(text)
    elif fmt in {"ips-csv", "machines-csv"}:
        records = _parse_csv(text, kind="ips" if fmt == "ips-csv" else "machines")
    elif fmt == "geofeed":
        per_prefix = MAX_RECORDS if large_prefixes else PREFIX_ADDRESSES
        records = _parse_geofeed(
            text, datacenter=datacenter, purpose=purpose, per_prefix=per_prefix
        )
    else:
        raise InventoryError(
            "arguments", "format", fmt, "expected auto, json, ips-csv, machines-csv or geofeed"
        )
    parsed: list[InventoryRecord] = []
    for record in records:
        if len(parsed) == MAX_RECORDS:
            limit = f"{MAX_RECORDS:,} records"
            raise InventoryError(
                record.where,
                "(document)",
                f"record {MAX_RECORDS + 1:,}",
                ERR_TOO_BIG % {"size": "more records", "limit": limit},
            )
        parsed.append(_with_address(_without_nul(record)))
    return parsed


def _check_size(text: str) -> None:
    """Refuse a document past the byte or line cap before parsing any of it."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise InventoryError(
            "document",
            "(size)",
            f"{size:,} bytes",
            ERR_TOO_BIG % {"size": f"{size:,} bytes", "limit": f"{MAX_BYTES:,} bytes"},
        )
    lines = text.count("\n") + 1
    if lines > MAX_LINES:
        raise InventoryError(
            "document",
            "(size)",
            f"{lines:,} lines",
            ERR_TOO_BIG % {"size": f"{lines:,} lines", "limit": f"{MAX_LINES:,} lines"},
        )


def _without_nul(record: InventoryRecord) -> InventoryRecord:
    """No name, code or address holds a NUL byte, and PostgreSQL text cannot store
    one: refuse it here, naming the place, before any lookup sends it."""
    for name, value in record.values.items():
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(text, str) and "\x00" in text for text in texts):
            raise InventoryError(record.where, name, value, "holds a NUL byte")
    return record


def _parse_json(text: str) -> Iterator[InventoryRecord]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InventoryError(
            f"line {error.lineno}", "(json)", error.doc[error.pos : error.pos + 20], error.msg
        ) from None
    except RecursionError:
        raise InventoryError("document", "(json)", text[:20], "nested too deeply") from None
    if not isinstance(document, dict):
        raise InventoryError("document", "(root)", type(document).__name__, "expected an object")
    for key in document:
        if key not in KINDS:
            raise InventoryError("document", key, key, f"unknown section; expected one of {KINDS}")
    for kind in KINDS:
        items = document.get(kind, [])
        if not isinstance(items, list):
            raise InventoryError(kind, kind, type(items).__name__, "expected a list")
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise InventoryError(f"{kind}[{index}]", "(item)", item, "expected an object")
            yield InventoryRecord(kind, f"{kind}[{index}]", item)


def _parse_csv(text: str, *, kind: str) -> Iterator[InventoryRecord]:
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)), skipinitialspace=True)
    for row in _csv_rows(reader, text):
        where = f"line {_source_line(text, reader.line_num)}"
        values = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if kind == "machines":
            values["pools"] = [p.strip() for p in values.get("pools", "").split(";") if p.strip()]
        elif "reserved_ports" in values:
            values["reserved_ports"] = parse_port_list(where, values["reserved_ports"])
        yield InventoryRecord(kind, where, {k: v for k, v in values.items() if v != ""})


def _csv_rows(reader: csv.DictReader[str], text: str) -> Iterator[dict[str, Any]]:
    """The reader's rows; a row the csv module refuses (a field over its size
    limit, a stray quote) is an :class:`InventoryError` naming its line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            # The DictReader's own count moves only after a row is read: ask its reader.
            where = f"line {_source_line(text, reader.reader.line_num)}"
            raise InventoryError(where, "(csv)", "(row)", str(error)) from None
        yield row


def _with_address(record: InventoryRecord) -> InventoryRecord:
    """An IP's or machine's address is one, checked here so that no lookup by it
    meets ``not-an-address`` (the database would refuse the query, not the row)."""
    address = record.values.get("address")
    if record.kind in {"ips", "machines"} and address is not None:
        try:
            ipaddress.ip_address(address if isinstance(address, str) else "")
        except ValueError:
            raise InventoryError(record.where, "address", address, ERR_NOT_AN_ADDRESS) from None
    return record


def parse_port_ranges(where: str, text: str) -> list[tuple[int, int]]:
    """``"1080;3128;5000-5002"`` -> ``[(1080, 1080), (3128, 3128), (5000, 5002)]``.

    Ranges, never the ports themselves: ``1-3000000`` is refused by its count,
    which is checked against :data:`MAX_RESERVED_PORTS` before anyone
    lists the ports.
    """
    ranges: list[tuple[int, int]] = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise InventoryError(
                where, "reserved_ports", part, "expected a port or lo-hi"
            ) from None
        if first > last:
            raise InventoryError(where, "reserved_ports", part, "lo is above hi")
        ranges.append((first, last))
    count = sum(last - first + 1 for first, last in ranges)
    if count > MAX_RESERVED_PORTS:
        raise InventoryError(
            where,
            "reserved_ports",
            text if len(text) <= 40 else text[:40] + "…",
            ERR_RESERVED_COUNT % {"count": count, "limit": MAX_RESERVED_PORTS},
        )
    return ranges


def parse_port_list(where: str, text: str) -> list[int]:
    """``"1080;3128;5000-5002"`` -> ``[1080, 3128, 5000, 5001, 5002]``: the model
    stores a list, made only once :func:`parse_port_ranges` has bounded it."""
    return [port for lo, hi in parse_port_ranges(where, text) for port in range(lo, hi + 1)]


def _source_line(text: str, data_line: int) -> int:
    """Map a csv reader line number (comments removed) back to the file's line."""
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.lstrip().startswith("#"):
            seen += 1
            if seen == data_line:
                return number
    return data_line


def _parse_geofeed(
    text: str, *, datacenter: str, purpose: str, per_prefix: int
) -> Iterator[InventoryRecord]:
    if not datacenter or not purpose:
        missing = "datacenter" if not datacenter else "purpose"
        raise InventoryError("arguments", missing, "", "a geofeed names neither; give --" + missing)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"line {number}"
        cells = next(csv.reader([line]))
        if len(cells) > len(GEOFEED_FIELDS) or len(cells) < 2:
            raise InventoryError(where, "(row)", line, f"expected {len(GEOFEED_FIELDS)} fields")
        entry = dict(zip(GEOFEED_FIELDS, [c.strip() for c in cells], strict=False))
        for address in _prefix_addresses(where, entry["ip_prefix"], limit=per_prefix):
            yield InventoryRecord(
                "ips",
                where,
                {
                    "datacenter": datacenter,
                    "purpose": purpose,
                    "country": entry.get("alpha2code", ""),
                    "region": entry.get("region", ""),
                    "city": entry.get("city", ""),
                    "address": address,
                },
            )


def _prefix_addresses(where: str, prefix: str, *, limit: int) -> Iterator[str]:
    try:
        network = ipaddress.ip_network(prefix, strict=True)
    except ValueError as error:
        raise InventoryError(where, "ip_prefix", prefix, str(error)) from None
    if network.num_addresses > limit:
        raise InventoryError(
            where,
            "ip_prefix",
            prefix,
            ERR_PREFIX_TOO_BIG % {"count": network.num_addresses, "limit": limit},
        )
    for address in network:
        yield str(address)


@dataclass(frozen=True)
class GeofeedEntry:
    address: str
    country: str
    region: str
    city: str


def render_geofeed(entries: Iterable[GeofeedEntry], *, comment: str = "") -> str:
    """An RFC 8805 feed: adjacent addresses with the same place collapse to one prefix."""
    by_place: dict[tuple[str, str, str], list[Any]] = {}
    for entry in entries:
        place = (entry.country, entry.region, entry.city)
        by_place.setdefault(place, []).append(ipaddress.ip_address(entry.address))
    rows = []
    for (country, region, city), addresses in by_place.items():
        for version in (4, 6):
            same_family = [a for a in addresses if a.version == version]
            for network in ipaddress.collapse_addresses(same_family):
                rows.append((network, country, region, city))
    rows.sort(key=lambda row: (row[0].version, row[0]))
    out = io.StringIO()
    if comment:
        out.write(f"# {comment}\n")
    writer = csv.writer(out, lineterminator="\n")
    for network, country, region, city in rows:
        writer.writerow([str(network), country, region, city, ""])
    return out.getvalue()
