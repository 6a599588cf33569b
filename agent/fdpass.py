"""Hand connected egress sockets to local processes over a Unix socket (``SCM_RIGHTS``).

A process that cannot (or should not) read the agent's state or take the UDP
port locks asks the agent instead. One request per connection, one JSON line::

    {"dst": "203.0.113.9:443", "proto": "tcp", "pool": "fra1/warp/DE",
     "purpose": "warp", "country": "DE"}          # pool/purpose/country optional

The answer is one message: ``{"ok": true, "local": "198.51.100.7:40017"}`` with
the connected socket's descriptor attached, or ``{"ok": false, "code": CODE,
"error": "..."}`` without one. ``CODE`` is ``bad_request``, ``no_slice``,
``ports_exhausted``, ``range_not_enforced`` or ``connect_failed``. ``dst`` is an
IP literal and a port (``[2001:db8::1]:443`` for IPv6); names are not resolved
here, so the caller's resolver policy stays the caller's.

The socket file is created mode 0660 (``socket_mode``): who may ask is decided
by its owner and group, which the operator sets (e.g. ``chgrp portslice``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import socketserver
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from agent.egress import Egress, NoSliceAvailable, PortsExhausted, RangeNotEnforced

log = logging.getLogger(__name__)

MAX_REQUEST: Final = 4096
REQUEST_TIMEOUT: Final = 5.0
CONNECT_TIMEOUT: Final = 10.0
PROTOCOLS: Final = ("tcp", "udp")
FILTERS: Final = ("pool", "purpose", "country")
_UCRED: Final = struct.Struct("=iII")


class FdPassError(Exception):
    """The agent refused a socket request; ``code`` is machine-readable."""

    def __init__(self, code: str, error: str) -> None:
        super().__init__(f"{code}: {error}")
        self.code = code
        self.error = error


def parse_destination(text: str) -> tuple[str, int]:
    """``"203.0.113.9:443"`` or ``"[2001:db8::1]:443"`` → (address, port); ``ValueError`` if not."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"dst={text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"dst={text!r} is not an IP literal and a port") from None
    if address.version == 6 and not text.startswith("["):
        raise ValueError(f"dst={text!r}: write an IPv6 destination as [address]:port")
    if not 1 <= number <= 65535:
        raise ValueError(f"dst={text!r}: port outside 1-65535")
    return str(address), number


def format_address(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_request(raw: bytes) -> tuple[tuple[str, int], str, dict[str, str]]:
    try:
        request = json.loads(raw)
    except ValueError:
        raise ValueError("the request is not JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("dst"), str):
        raise ValueError('the request must be a JSON object with "dst": "host:port"')
    unknown = sorted(set(request) - {"dst", "proto", *FILTERS})
    if unknown:
        raise ValueError(f"unknown request field {unknown[0]!r}")
    proto = request.get("proto", "tcp")
    if proto not in PROTOCOLS:
        raise ValueError(f"proto={proto!r} is not 'tcp' or 'udp'")
    filters = {name: request[name] for name in FILTERS if request.get(name) is not None}
    if not all(isinstance(value, str) for value in filters.values()):
        raise ValueError("pool, purpose and country must be strings")
    return parse_destination(request["dst"]), proto, filters


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(MAX_REQUEST + 1 - len(data))
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError(f"the request is over {MAX_REQUEST} bytes")
    return data.split(b"\n", 1)[0]


def _error_code(error: Exception) -> str:
    if isinstance(error, NoSliceAvailable):
        return "no_slice"
    if isinstance(error, PortsExhausted):
        return "ports_exhausted"
    if isinstance(error, RangeNotEnforced):
        return "range_not_enforced"
    if isinstance(error, ValueError):
        return "bad_request"
    return "connect_failed"


class _Handler(socketserver.BaseRequestHandler):
    server: FdPassServer
    request: socket.socket

    def handle(self) -> None:
        conn = self.request
        conn.settimeout(REQUEST_TIMEOUT)
        peer = _peer(conn)
        try:
            dst, proto, filters = _parse_request(_read_line(conn))
            egress = self.server.egress()
            sock = egress.connect(dst, proto, timeout=CONNECT_TIMEOUT, **filters)  # type: ignore[arg-type]
        except (ValueError, NoSliceAvailable, RangeNotEnforced, OSError) as error:
            log.info("socket request from %s refused: %s", peer, error)
            self._reply({"ok": False, "code": _error_code(error), "error": str(error)})
            return
        with sock:
            # The timeout set O_NONBLOCK on the shared file description; the
            # receiver expects an ordinary blocking socket.
            sock.setblocking(True)
            local = format_address(sock.getsockname())
            log.info("socket %s -> %s (%s) handed to %s", local, format_address(dst), proto, peer)
            self._reply({"ok": True, "local": local}, sock.fileno())

    def _reply(self, response: dict[str, Any], fd: int | None = None) -> None:
        payload = json.dumps(response).encode()
        with contextlib.suppress(OSError):  # the client gave up; nothing to tell it
            socket.send_fds(self.request, [payload], [] if fd is None else [fd])


def _peer(conn: socket.socket) -> str:
    try:
        pid, uid, _gid = _UCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except OSError:
        return "unknown peer"
    return f"pid {pid} uid {uid}"


class FdPassServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The socket service; ``egress`` returns the current :class:`Egress` for each request."""

    daemon_threads = True
    allow_reuse_address = False

    def __init__(
        self, path: str | os.PathLike[str], egress: Callable[[], Egress], *, mode: int = 0o660
    ) -> None:
        self.path = Path(path)
        self.egress = egress
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.path)
        umask = os.umask(0o177)  # no window in which the socket is wider than 0600
        try:
            super().__init__(str(self.path), _Handler)
        finally:
            os.umask(umask)
        os.chmod(self.path, mode)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="portslice-fdpass", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _remove_stale(path: Path) -> None:
    """Unlink a socket file no one answers on; refuse to take over a live one."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise FileExistsError(f"{path}: another agent is already serving sockets there")


def request_socket(
    path: str | os.PathLike[str],
    dst: str,
    proto: str = "tcp",
    *,
    timeout: float = CONNECT_TIMEOUT + REQUEST_TIMEOUT,
    **filters: str,
) -> socket.socket:
    """Ask the agent at ``path`` for a socket connected to ``dst`` ("host:port").

    ``filters`` are ``pool``, ``purpose``, ``country``. Raises :class:`FdPassError`
    when the agent refuses and ``OSError`` when it cannot be reached.
    """
    request = {"dst": dst, "proto": proto, **filters}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(os.fspath(path))
        conn.sendall(json.dumps(request).encode() + b"\n")
        message, fds, _flags, _addr = socket.recv_fds(conn, 65536, 1)
    try:
        response = json.loads(message)
    except ValueError:
        response = {"ok": False, "code": "bad_response", "error": f"{message[:200]!r}"}
    if not response.get("ok") or not fds:
        for fd in fds:
            os.close(fd)
        raise FdPassError(response.get("code", "bad_response"), response.get("error", "no socket"))
    return socket.socket(fileno=fds[0])
