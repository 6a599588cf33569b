"""The fields of every report that crosses the broker, with their types and bounds.

An ack (``planner.record_ack``) says what the agent did with one bundle; a
usage report (``planner.record_usage``) counts the sockets in each live slice;
a gateway ack (``planner.record_gateway_ack``) says which steering table a
gateway runs. All travel as the task's keyword arguments, JSON-encoded, over a
broker anyone on it can write to. Keys a message carries beyond these are
ignored (a newer sender may say more); a missing required key, a wrong type or
a value out of bounds makes the whole message invalid: :class:`ContractError`
names the field and the value.

The rules: exact JSON types (``true`` is not an integer, ``7.9`` is not a
revision); numbers within the columns that store them; text without control
characters (a NUL breaks PostgreSQL) and bounded; each slice once per report,
with no more sockets than ``MAX_SOCKETS_PER_PORT`` per port; times within
``MAX_REPORT_AGE`` before and ``MAX_CLOCK_SKEW`` after the receiver's clock.
What only the receiver knows (a serial or revision it never issued, a host or
gateway it does not know) it refuses with the same :class:`ContractError`.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from contract.hostnames import hostname_problem

APPLIED: Final = "applied"
REJECTED: Final = "rejected"
FAILED: Final = "failed"
ACK_STATUSES: Final = frozenset({APPLIED, REJECTED, FAILED})
DUPLICATE: Final = "duplicate"

GATEWAY_STATUSES: Final = frozenset({APPLIED, FAILED})

MAX_SERIAL: Final = 2**63 - 1  # a signed 64-bit column on the planner side
MAX_COUNT: Final = 2**31 - 1  # a signed 32-bit column (revisions, slice counts)
MAX_DETAIL: Final = 2000
MAX_REASON: Final = 64
MAX_ENFORCEMENT_BYTES: Final = 16 * 1024
MAX_ENFORCEMENT_DEPTH: Final = 8
MAX_SLICES: Final = 4096
MAX_BUCKETS: Final = 1024  # a whole IP is 1,008 buckets of 64 ports
MAX_KEYS: Final = 32
#: Usage is counted per bucket of this many ports, aligned on absolute port numbers.
BUCKET_SIZE: Final = 64
#: TCP (and connected UDP) sockets share a source port across destinations, so a
#: slice may hold more sockets than ports; more than this many per port is garbage.
#: With 65,535 ports it also keeps ``tcp + udp`` inside a 32-bit column.
MAX_SOCKETS_PER_PORT: Final = 64
#: The window around the receiver's clock a report's time must fall in: older
#: than a week is a message that sat in a broker (the sender has said more since;
#: a lost ack is resent), ahead by more than the skew is a wrong clock or a lie.
MAX_REPORT_AGE: Final = timedelta(days=7)
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)
MAX_GATEWAY_NAME: Final = 253
MAX_ETAG: Final = 40
MAX_DATACENTER: Final = 32

# One line of text: no C0/C1 control character (NUL included) and no lone
# surrogate (JSON can carry "\ud800"; it cannot be encoded as UTF-8). Prose
# (``detail``) may also hold tabs and newlines.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_IN_PROSE: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_GATEWAY_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]*\Z", re.ASCII)
_DATACENTER: Final = re.compile(r"[A-Za-z0-9_-]+\Z", re.ASCII)
_REQUIRED: Final = object()


_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong = 2, 60, 60, 40


class ContractError(ValueError):
    """A message that breaks the contract; ``field`` and ``value`` say where."""

    def __init__(self, message: str, field: str, value: object, problem: str) -> None:
        # reprlib: bounded in depth and length, whatever nesting a sender chose.
        shown = _SHOW.repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        super().__init__(f"{message}.{field}={shown}: {problem}")
        self.message = message
        self.field = field
        self.value = value
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Field:
    """One key of a message: its documented type, its check, and its default if optional.

    ``check`` returns the value as the receiver should use it, or raises
    ``ValueError`` with what is wrong.
    """

    name: str
    kind: str
    check: Callable[[Any], Any]
    default: Any = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


# --- checks -----------------------------------------------------------------------------------


def _int(value: Any, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"must be between {lo} and {hi}")
    return value


def _serial(value: Any) -> int:
    return _int(value, 0, MAX_SERIAL)


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def _text(limit: int, *, prose: bool = False) -> Callable[[Any], str]:
    control = _CONTROL_IN_PROSE if prose else _CONTROL

    def check(value: Any) -> str:
        if type(value) is not str:
            raise ValueError(f"expected a string, got {type(value).__name__}")
        if len(value) > limit:
            raise ValueError(f"longer than {limit} characters")
        bad = control.search(value)
        if bad:
            raise ValueError(f"holds control character {bad.group()!r} at {bad.start()}")
        return value

    return check


def _pattern(pattern: re.Pattern[str], limit: int, what: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if type(value) is not str:
            raise ValueError(f"expected a string, got {type(value).__name__}")
        if not 1 <= len(value) <= limit or not pattern.match(value):
            raise ValueError(f"not {what} (1-{limit} characters)")
        return value

    return check


def gateway_name_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a gateway's name, or ``None`` (the planner's
    registration and the gateway's config use this check too)."""
    try:
        _pattern(_GATEWAY_NAME, MAX_GATEWAY_NAME, "a gateway name")(value)
    except ValueError as error:
        return str(error)
    return None


def _one_of(choices: frozenset[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        # type() first: an unhashable value (a list, a dict) cannot be looked up.
        if type(value) is not str or value not in choices:
            raise ValueError(f"must be one of {sorted(choices)}")
        return value

    return check


def _hostname(value: Any) -> str:
    problem = hostname_problem(value)
    if problem:
        raise ValueError(f"not a host name: {problem}")
    return str(value)


def _iso_time(value: Any) -> datetime | None:
    if value == "":
        return None
    if type(value) is not str or len(value) > 40:
        raise ValueError("expected an ISO 8601 time or ''")
    moment = datetime.fromisoformat(value)  # ValueError names the problem
    if moment.tzinfo is None:
        raise ValueError("has no time zone")
    try:
        return moment.astimezone(UTC)  # year 1 at +01:00 is before year 1 in UTC
    except OverflowError:
        raise ValueError("outside the years a database can store") from None


def _unix_time(value: Any) -> datetime:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError("expected a finite number of seconds")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError("not a time a clock can show") from None


def _json_value(value: Any, depth: int) -> None:
    """Raise unless ``value`` is plain JSON a database stores: no NaN, no control text."""
    if depth > MAX_ENFORCEMENT_DEPTH:
        raise ValueError(f"nested deeper than {MAX_ENFORCEMENT_DEPTH}")
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str or _CONTROL.search(key):
                raise ValueError(f"key {key!r} is not a printable string")
            _json_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _json_value(item, depth + 1)
    elif type(value) is str:
        if _CONTROL_IN_PROSE.search(value):
            raise ValueError("a string holds a control character")
    elif type(value) is float:
        if not math.isfinite(value):
            raise ValueError("a number is not finite")
    elif value is not None and type(value) not in (bool, int):
        raise ValueError(f"{type(value).__name__} is not JSON")


def _json_object(limit: int) -> Callable[[Any], dict[str, Any]]:
    def check(value: Any) -> dict[str, Any]:
        if type(value) is not dict:
            raise ValueError("expected a JSON object")
        _json_value(value, 0)  # before dumps: bounded depth, so no RecursionError
        if len(json.dumps(value).encode()) > limit:
            raise ValueError(f"larger than {limit} bytes")
        return value

    return check


def _port(value: Any) -> int:
    return _int(value, 1, 65535)


def _count(value: Any) -> int:
    return _int(value, 0, MAX_COUNT)


def _address(value: Any) -> str:
    if type(value) is not str or len(value) > 45 or "%" in value:
        raise ValueError("expected an IP address (no zone)")
    return str(ipaddress.ip_address(value))


def within_window(message: str, field: str, moment: datetime, now: datetime) -> datetime:
    """``moment`` if it lies within the window around the receiver's ``now``.

    Raises :class:`ContractError` otherwise: a time from year 1 or 9999 is
    unreadable or eternal to the planner, one from the future freezes a
    machine's figures until the clock catches up.
    """
    if not now - MAX_REPORT_AGE <= moment <= now + MAX_CLOCK_SKEW:
        raise ContractError(
            message,
            field,
            moment.isoformat(),
            f"must lie between {MAX_REPORT_AGE} before and {MAX_CLOCK_SKEW} after"
            f" the receiver's clock ({now.isoformat()})",
        )
    return moment


def not_after_issued(message: str, field: str, value: int | None, issued: int) -> None:
    """Raise :class:`ContractError` when ``value`` names a serial or revision the
    receiver never issued to this sender (``issued`` is its newest)."""
    if value is not None and value > issued:
        raise ContractError(message, field, value, f"newer than the {issued} issued")


# --- typed messages ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """A validated ``planner.record_ack``."""

    hostname: str
    serial: int | None
    status: str
    reason: str
    detail: str
    note: str
    applied_serial: int | None
    revision: int | None
    applied_at: datetime | None
    enforcement: dict[str, Any]


@dataclass(frozen=True, slots=True)
class GatewayAck:
    """A validated ``planner.record_gateway_ack``: the table a gateway runs."""

    name: str
    datacenter: str
    revision: int
    etag: str
    status: str
    detail: str
    slices: int


@dataclass(frozen=True, slots=True)
class SliceReport:
    """Sockets in one slice: TCP established, UDP connected, both per 64-port bucket."""

    ip: str
    lo: int
    hi: int
    tcp: int
    udp: int
    buckets: dict[str, int]

    @property
    def sockets(self) -> int:
        return self.tcp + self.udp

    def as_dict(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "lo": self.lo,
            "hi": self.hi,
            "tcp": self.tcp,
            "udp": self.udp,
            "buckets": dict(self.buckets),
        }


@dataclass(frozen=True, slots=True)
class UsageReport:
    """A validated ``planner.record_usage``."""

    hostname: str
    serial: int
    at: datetime
    slices: tuple[SliceReport, ...]


def _buckets(value: Any, lo: int, hi: int, sockets: int) -> dict[str, int]:
    if type(value) is not dict or len(value) > MAX_BUCKETS:
        raise ValueError(f"expected an object of at most {MAX_BUCKETS} buckets")
    first = lo - lo % BUCKET_SIZE
    total = 0
    for key, count in value.items():
        if not (type(key) is str and key.isascii() and key.isdigit() and len(key) <= 5):
            raise ValueError(f"bucket key {key!r} is not a port number")
        start = int(key)
        if start % BUCKET_SIZE or not first <= start <= hi or key != str(start):
            raise ValueError(f"bucket {key} is not a {BUCKET_SIZE}-port bucket of {lo}-{hi}")
        total += _count(count)
    if total > sockets:
        raise ValueError(f"buckets hold {total} sockets, more than tcp + udp = {sockets}")
    return dict(value)


def _slice(value: Any) -> SliceReport:
    if type(value) is not dict:
        raise ValueError("expected an object")
    try:
        ip, lo, hi = _address(value["ip"]), _port(value["lo"]), _port(value["hi"])
        if lo > hi:
            raise ValueError(f"lo {lo} is above hi {hi}")
        tcp, udp = _count(value["tcp"]), _count(value["udp"])
        most = (hi - lo + 1) * MAX_SOCKETS_PER_PORT
        if tcp + udp > most:
            raise ValueError(
                f"{tcp + udp} sockets in {hi - lo + 1} ports"
                f" (at most {MAX_SOCKETS_PER_PORT} per port)"
            )
        buckets = _buckets(value.get("buckets", {}), lo, hi, tcp + udp)
    except KeyError as missing:
        raise ValueError(f"missing {missing}") from None
    return SliceReport(ip, lo, hi, tcp, udp, buckets)


def _slices(value: Any) -> tuple[SliceReport, ...]:
    if type(value) is not list or len(value) > MAX_SLICES:
        raise ValueError(f"expected a list of at most {MAX_SLICES} slices")
    slices: list[SliceReport] = []
    seen: set[tuple[str, int, int]] = set()
    for index, item in enumerate(value):
        try:
            report = _slice(item)
        except ValueError as error:
            raise ValueError(f"slice {index}: {error}") from None
        key = (report.ip, report.lo, report.hi)
        if key in seen:
            raise ValueError(f"slice {index}: {report.ip} {report.lo}-{report.hi} twice")
        seen.add(key)
        slices.append(report)
    return tuple(slices)


ACK_FIELDS: Final = (
    Field("hostname", "str", _hostname),
    Field("serial", "int | None", _optional(_serial)),
    Field("status", "applied | rejected | failed", _one_of(ACK_STATUSES)),
    Field("reason", "str", _text(MAX_REASON), ""),
    Field("detail", "str", _text(MAX_DETAIL, prose=True), ""),
    Field("note", "'' | duplicate", _one_of(frozenset({"", DUPLICATE})), ""),
    Field("applied_serial", "int | None", _optional(_serial), None),
    Field("revision", "int | None", _optional(lambda v: _int(v, 0, MAX_COUNT)), None),
    Field("applied_at", "ISO 8601 str | ''", _iso_time, ""),
    Field("enforcement", "dict", _json_object(MAX_ENFORCEMENT_BYTES), {}),
)

USAGE_FIELDS: Final = (
    Field("hostname", "str", _hostname),
    Field("serial", "int", _serial),
    Field("at", "float (Unix time)", _unix_time),
    Field("slices", "list[dict]", _slices),
)

GATEWAY_ACK_FIELDS: Final = (
    Field("name", "str", _pattern(_GATEWAY_NAME, MAX_GATEWAY_NAME, "a gateway name")),
    Field("datacenter", "str", _pattern(_DATACENTER, MAX_DATACENTER, "a datacenter code")),
    Field("revision", "int", lambda v: _int(v, 0, MAX_COUNT)),
    Field("etag", "str", _text(MAX_ETAG)),
    Field("status", "applied | failed", _one_of(GATEWAY_STATUSES)),
    Field("detail", "str", _text(MAX_DETAIL, prose=True), ""),
    Field("slices", "int", _count, 0),
)


def _checked(message: str, fields: tuple[Field, ...], values: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(values, Mapping) or len(values) > MAX_KEYS:
        raise ContractError(message, "*", type(values).__name__, "not a message")
    result = {}
    for spec in fields:
        if spec.name not in values:
            if spec.required:
                raise ContractError(message, spec.name, None, "missing")
            result[spec.name] = spec.check(spec.default)
            continue
        raw = values[spec.name]
        try:
            result[spec.name] = spec.check(raw)
        except (ValueError, TypeError, OverflowError, RecursionError) as error:
            raise ContractError(message, spec.name, raw, str(error)) from None
    return result


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def validate_ack(values: Mapping[str, Any], *, now: datetime | None = None) -> Ack:
    """The ack in ``values``, checked against the receiver's clock ``now`` (default:
    this host's); raises :class:`ContractError`."""
    ack = Ack(**_checked("ack", ACK_FIELDS, values))
    if ack.applied_at is not None:
        within_window("ack", "applied_at", ack.applied_at, _now(now))
    return ack


def validate_usage(values: Mapping[str, Any], *, now: datetime | None = None) -> UsageReport:
    """The usage report in ``values``, checked against the receiver's clock ``now``
    (default: this host's); raises :class:`ContractError`."""
    report = UsageReport(**_checked("usage", USAGE_FIELDS, values))
    within_window("usage", "at", report.at, _now(now))
    return report


def validate_gateway_ack(values: Mapping[str, Any]) -> GatewayAck:
    """The gateway ack in ``values``, checked; raises :class:`ContractError`.

    It carries no time: the receiver's clock says when it arrived.
    """
    return GatewayAck(**_checked("gateway_ack", GATEWAY_ACK_FIELDS, values))


def ack_message(**values: Any) -> dict[str, Any]:
    """The kwargs of ``planner.record_ack``: every field, checked.

    Defaults fill the optional fields; ``detail`` longer than the contract
    allows is cut, not refused, and control characters in it and in the texts
    of ``enforcement`` are replaced (they are prose, and a lost ack costs a
    resend). The time window is not checked here: it is the receiver's rule.
    """
    if isinstance(values.get("detail"), str):
        values["detail"] = prose(values["detail"])
    if isinstance(values.get("enforcement"), dict):
        # Its texts are the kernel's and nft's error messages, passed on: cleaned
        # like ``detail``, so an odd byte in one never costs the whole ack.
        values["enforcement"] = _printable(values["enforcement"])
    # Shape only: the time window is the receiver's rule, judged by its clock.
    _checked("ack", ACK_FIELDS, values)
    return {
        spec.name: values.get(spec.name, spec.default)
        for spec in ACK_FIELDS
        if spec.name in values or not spec.required
    }


def usage_message(
    *, hostname: str, serial: int, at: float, slices: list[dict[str, Any]]
) -> dict[str, Any]:
    """The kwargs of ``planner.record_usage``, checked."""
    values = {"hostname": hostname, "serial": serial, "at": at, "slices": slices}
    _checked("usage", USAGE_FIELDS, values)  # the time window is the receiver's rule
    return values


def gateway_ack_message(
    *,
    name: str,
    datacenter: str,
    revision: int,
    etag: str,
    status: str,
    detail: str = "",
    slices: int = 0,
) -> dict[str, Any]:
    """The kwargs of ``planner.record_gateway_ack``, checked; ``detail`` is cut and
    its control characters replaced, as for an ack."""
    values = {
        "name": name,
        "datacenter": datacenter,
        "revision": revision,
        "etag": etag,
        "status": status,
        "detail": prose(detail) if isinstance(detail, str) else detail,
        "slices": slices,
    }
    validate_gateway_ack(values)
    return values


def _printable(value: Any) -> Any:
    """``value`` (JSON) with control characters in its texts replaced."""
    if isinstance(value, dict):
        return {_CONTROL.sub("?", str(k)): _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(item) for item in value]
    if isinstance(value, str):
        return _CONTROL_IN_PROSE.sub("?", value)
    return value


def prose(text: str) -> str:
    """``text`` as a detail the contract accepts: cut to length, control characters
    replaced (it is an error message the sender passes on, not data)."""
    return _CONTROL_IN_PROSE.sub("?", text[:MAX_DETAIL])
