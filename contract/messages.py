"""The fields of the two reports an agent sends, with their types and bounds.

An ack (``planner.record_ack``) says what the agent did with one bundle; a
usage report (``planner.record_usage``) counts the sockets in each live slice.
Both travel as the task's keyword arguments, JSON-encoded. Keys a message
carries beyond these are ignored (a newer agent may say more); a missing
required key, a wrong type or a value out of bounds makes the whole message
invalid: :class:`ContractError` names the field and the value.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

APPLIED: Final = "applied"
REJECTED: Final = "rejected"
FAILED: Final = "failed"
ACK_STATUSES: Final = frozenset({APPLIED, REJECTED, FAILED})
DUPLICATE: Final = "duplicate"

MAX_SERIAL: Final = 2**63 - 1  # a signed 64-bit column on the planner side
MAX_COUNT: Final = 2**31 - 1
MAX_DETAIL: Final = 2000
MAX_REASON: Final = 64
MAX_ENFORCEMENT_BYTES: Final = 16 * 1024
MAX_SLICES: Final = 4096
MAX_BUCKETS: Final = 1024  # a whole IP is 1,008 buckets of 64 ports
MAX_KEYS: Final = 32
BUCKET_SIZE: Final = 64
LATEST_TIME: Final = 2**33  # the year 2242: a Unix time beyond it is garbage

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$",
    re.IGNORECASE,
)
_REQUIRED: Final = object()


class ContractError(ValueError):
    """A message that breaks the contract; ``field`` and ``value`` say where."""

    def __init__(self, message: str, field: str, value: object, problem: str) -> None:
        shown = repr(value)
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


def _text(limit: int) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        if len(value) > limit:
            raise ValueError(f"longer than {limit} characters")
        return value

    return check


def _one_of(choices: frozenset[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {sorted(choices)}")
        return str(value)

    return check


def _hostname(value: Any) -> str:
    if not isinstance(value, str) or not _HOSTNAME.match(value):
        raise ValueError("not an RFC 1123 host name")
    return value


def _iso_time(value: Any) -> datetime | None:
    if value == "":
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError("expected an ISO 8601 time or ''")
    moment = datetime.fromisoformat(value)  # ValueError names the problem
    if moment.tzinfo is None:
        raise ValueError("has no time zone")
    return moment


def _unix_time(value: Any) -> datetime:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError("expected a finite number of seconds")
    if not 0 < value < LATEST_TIME:
        raise ValueError(f"must be between 0 and {LATEST_TIME}")
    return datetime.fromtimestamp(value, UTC)


def _json_object(limit: int) -> Callable[[Any], dict[str, Any]]:
    def check(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError("expected a JSON object")
        if len(json.dumps(value)) > limit:
            raise ValueError(f"larger than {limit} bytes")
        return value

    return check


def _port(value: Any) -> int:
    return _int(value, 1, 65535)


def _count(value: Any) -> int:
    return _int(value, 0, MAX_COUNT)


def _address(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 45:
        raise ValueError("expected an IP address")
    return str(ipaddress.ip_address(value))


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


def _buckets(value: Any, lo: int, hi: int) -> dict[str, int]:
    if not isinstance(value, dict) or len(value) > MAX_BUCKETS:
        raise ValueError(f"expected an object of at most {MAX_BUCKETS} buckets")
    first = lo - lo % BUCKET_SIZE
    for key, count in value.items():
        if not (isinstance(key, str) and key.isdigit() and len(key) <= 5):
            raise ValueError(f"bucket key {key!r} is not a port number")
        start = int(key)
        if start % BUCKET_SIZE or not first <= start <= hi:
            raise ValueError(f"bucket {key} is not a 64-port bucket of {lo}-{hi}")
        _count(count)
    return dict(value)


def _slice(value: Any) -> SliceReport:
    if not isinstance(value, dict):
        raise ValueError("expected an object")
    try:
        ip, lo, hi = _address(value["ip"]), _port(value["lo"]), _port(value["hi"])
        if lo > hi:
            raise ValueError(f"lo {lo} is above hi {hi}")
        tcp, udp = _count(value["tcp"]), _count(value["udp"])
        buckets = _buckets(value.get("buckets", {}), lo, hi)
    except KeyError as missing:
        raise ValueError(f"missing {missing}") from None
    return SliceReport(ip, lo, hi, tcp, udp, buckets)


def _slices(value: Any) -> tuple[SliceReport, ...]:
    if not isinstance(value, list) or len(value) > MAX_SLICES:
        raise ValueError(f"expected a list of at most {MAX_SLICES} slices")
    slices = []
    for index, item in enumerate(value):
        try:
            slices.append(_slice(item))
        except ValueError as error:
            raise ValueError(f"slice {index}: {error}") from None
    return tuple(slices)


ACK_FIELDS: Final = (
    Field("hostname", "str", _hostname),
    Field("serial", "int | None", _optional(_serial)),
    Field("status", "applied | rejected | failed", _one_of(ACK_STATUSES)),
    Field("reason", "str", _text(MAX_REASON), ""),
    Field("detail", "str", _text(MAX_DETAIL), ""),
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
        except ValueError as error:
            raise ContractError(message, spec.name, raw, str(error)) from None
    return result


def validate_ack(values: Mapping[str, Any]) -> Ack:
    """The ack in ``values``, checked; raises :class:`ContractError`."""
    return Ack(**_checked("ack", ACK_FIELDS, values))


def validate_usage(values: Mapping[str, Any]) -> UsageReport:
    """The usage report in ``values``, checked; raises :class:`ContractError`."""
    return UsageReport(**_checked("usage", USAGE_FIELDS, values))


def ack_message(**values: Any) -> dict[str, Any]:
    """The kwargs of ``planner.record_ack``: every field, checked.

    Defaults fill the optional fields; ``detail`` longer than the contract
    allows is cut, not refused (it is prose, and a lost ack costs a resend).
    """
    if isinstance(values.get("detail"), str):
        values["detail"] = values["detail"][:MAX_DETAIL]
    validate_ack(values)
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
    validate_usage(values)
    return values
