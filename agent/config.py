"""The agent's configuration: a TOML file, then ``PORTSLICE_AGENT_*`` variables over it.

The file (``--config PATH``, else ``$PORTSLICE_AGENT_CONFIG``, else
``/etc/portslice/agent.toml`` when it exists) is a flat table::

    hostname = "edge-fra1-07"            # default: socket.gethostname()
    broker_url = "redis://10.0.0.5:6379/0"
    keys_path = "/etc/portslice/planner-keys.json"   # JWKS file or directory of *.pem
    state_dir = "/var/lib/portslice"
    manage_nftables = true
    manage_port_range = true
    port_range_mode = "cover"            # "exact": the range is exactly the active slices
    route_source = "off"                 # exact mode: a shared IP for the default route's src
    add_addresses = false                # add missing egress addresses on lo
    loopback_egress = false              # demo only: 127.0.0.0/8 counts as held
    usage_interval = 5                   # seconds
    metrics_address = "127.0.0.1:9465"   # "off" disables the metrics endpoint
    socket_path = "/run/portslice/agent.sock"
    socket_mode = "0660"
    broker_folder = "/srv/portslice/var/broker"   # only for broker_url = "filesystem://"

Every key can be set in the environment as ``PORTSLICE_AGENT_<KEY>`` (upper
case), which wins over the file. A bad value raises :class:`ConfigError`
naming the key, where it came from, and the value.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

ENV_PREFIX: Final = "PORTSLICE_AGENT_"
CONFIG_ENV: Final = "PORTSLICE_AGENT_CONFIG"
DEFAULT_CONFIG_PATH: Final = Path("/etc/portslice/agent.toml")
METRICS_OFF: Final = "off"
ROUTE_SOURCE_OFF: Final = "off"
COVER: Final = "cover"
EXACT: Final = "exact"
PORT_RANGE_MODES: Final = (COVER, EXACT)

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names key and value."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything ``python -m agent`` needs to know about this host."""

    hostname: str
    broker_url: str = "redis://127.0.0.1:6379/0"
    keys_path: Path = Path("/etc/portslice/planner-keys.json")
    state_dir: Path = Path("/var/lib/portslice")
    manage_nftables: bool = True
    manage_port_range: bool = True
    #: ``cover``: widen the netns port range over every live slice (for the library).
    #: ``exact``: set it to exactly the active aligned range, for a namespace dedicated
    #: to one workload whose programs pick ports themselves (:mod:`agent.exact`).
    port_range_mode: str = COVER
    #: In exact mode, the shared IP the namespace's default route gets as ``src``, or None.
    route_source: str | None = None
    #: Add the slices' egress addresses on ``lo`` when they are missing (off: only report).
    add_addresses: bool = False
    #: Demo without root only: slices on 127.0.0.0/8 count as held (Linux answers on every
    #: address of it). Off: such an address is missing like any other.
    loopback_egress: bool = False
    usage_interval: float = 5.0
    #: ``(host, port)`` of the Prometheus endpoint, or ``None`` when it is off.
    metrics_address: tuple[str, int] | None = ("127.0.0.1", 9465)
    socket_path: Path = Path("/run/portslice/agent.sock")
    socket_mode: int = 0o660
    #: With ``broker_url = "filesystem://"`` (the quick start): the folder the
    #: planner's messages pass through (its ``var/broker``); unset, ``state_dir/broker``
    #: (never the working directory).
    broker_folder: Path | None = None

    @property
    def queue(self) -> str:
        """The Celery queue this agent consumes: ``agent.<hostname>``."""
        return f"agent.{self.hostname}"


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected true or false")


def _interval(text: str) -> float:
    seconds = float(text)
    if not 0 < seconds <= 86400:
        raise ValueError("expected seconds between 0 (excluded) and 86400")
    return seconds


def _metrics_address(text: str) -> tuple[str, int] | None:
    if text.strip().lower() == METRICS_OFF:
        return None
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError('expected "host:port" or "off"')
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError("port outside 0-65535")
    return host.strip("[]"), number


def _mode(text: str) -> int:
    mode = int(text, 8)
    if not 0 <= mode <= 0o777:
        raise ValueError("expected an octal mode like 0660")
    return mode


def _hostname(text: str) -> str:
    name = text.strip()
    # The queue name and the bundle's sub are built from it: no spaces, no empties.
    if not name or any(ch.isspace() for ch in name):
        raise ValueError("expected a host name without spaces")
    return name


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _port_range_mode(text: str) -> str:
    mode = text.strip().lower()
    if mode not in PORT_RANGE_MODES:
        raise ValueError(f"expected one of {', '.join(PORT_RANGE_MODES)}")
    return mode


def _route_source(text: str) -> str | None:
    if text.strip().lower() == ROUTE_SOURCE_OFF:
        return None
    return str(ipaddress.ip_address(text.strip()))  # raises "does not appear to be an IP"


def _path(text: str) -> Path:
    return Path(_nonempty(text))


_PARSERS: Final[Mapping[str, Callable[[str], Any]]] = {
    "hostname": _hostname,
    "broker_url": _nonempty,
    "keys_path": _path,
    "state_dir": _path,
    "manage_nftables": _bool,
    "manage_port_range": _bool,
    "port_range_mode": _port_range_mode,
    "route_source": _route_source,
    "add_addresses": _bool,
    "loopback_egress": _bool,
    "usage_interval": _interval,
    "metrics_address": _metrics_address,
    "socket_path": _path,
    "socket_mode": _mode,
    "broker_folder": _path,
}
KEYS: Final = tuple(field.name for field in fields(AgentConfig))


def _as_text(value: object) -> str:
    """TOML gives typed values; parse them through the same text parsers as the environment."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise ValueError(f"expected a string, number or boolean, got a {type(value).__name__}")


def _parse(key: str, raw: object, source: str) -> Any:
    try:
        return _PARSERS[key](_as_text(raw))
    except ValueError as error:
        raise ConfigError(f"{source}: {key}={raw!r} is invalid ({error})") from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    return table


def config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path | None:
    """The config file to read: the explicit one, ``$PORTSLICE_AGENT_CONFIG``, or the default."""
    if explicit is not None:
        return Path(explicit)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """The configuration from ``path`` (see :func:`config_path`) with the environment over it."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    file = config_path(path, env)
    if file is not None:
        for key, raw in _read_file(file).items():
            values[key] = _parse(key, raw, str(file))
    for key in KEYS:
        name = ENV_PREFIX + key.upper()
        if name in env:
            values[key] = _parse(key, env[name], f"${name}")
    values.setdefault("hostname", socket.gethostname())
    return AgentConfig(**values)
