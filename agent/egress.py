"""Egress sockets whose source port is inside one of this host's port slices.

TCP (:func:`connect_tcp`) is the kernel's job: ``IP_BIND_ADDRESS_NO_PORT``
defers the port choice to ``connect()``, ``IP_LOCAL_PORT_RANGE`` (Linux >= 6.3)
bounds it to the slice, and the kernel finds a port whose 4-tuple is free, so
one port serves many destinations; ``EADDRNOTAVAIL`` means the slice is full
toward that destination. Measured here: with the per-socket range every port of
a slice is usable (no even/odd split, which only applies to the netns range).
Two caveats the code handles:

* The per-socket bound only narrows ``net.ipv4.ip_local_port_range``; each end
  outside the netns range is ignored. A slice overlapping the netns range gets
  the overlap (ports still inside the slice, fewer of them); a slice disjoint
  from it gets the whole netns range — outside the slice. That is a property of
  the network namespace, not of the socket, so it is proved per namespace:
  :func:`connect_tcp` refuses a slice disjoint from the netns range *before* a
  SYN leaves (:class:`RangeNotEnforced`), re-reading the range (one ``pread``)
  every ``NETNS_RANGE_TTL`` seconds, and :func:`ensure_netns_port_range` widens
  it where allowed. The port is not read back after ``connect()``: that cost a
  ``getsockname`` per connection (0.04-0.07x of a loopback connect) to cover
  only the 0.1 s after someone narrows the range by hand, which the nftables
  guard covers anyway (docs/agent.md has the argument and the figures).
* Ports in ``net.ipv4.ip_local_reserved_ports`` are skipped by the kernel, slice
  or not.

UDP (:func:`connect_udp`) is done in user space because the kernel does not
detect UDP 4-tuple conflicts: two sockets bound with
``SO_REUSEADDR`` and connected to the same destination from the same port both
succeed, and the newer one silently takes the traffic. For a candidate port P of
the slice toward destination D there are two ways to claim it:

* **Exclusive (fast path).** ``bind((IP, P))`` *without* ``SO_REUSEADDR``. The
  kernel lets that bind succeed only if no socket at all holds (IP, P), and while
  our socket has ``SO_REUSEADDR=0`` every other bind of (IP, P) fails — so after
  ``connect(D)`` our 4-tuple is unique with no lookup and no lock. Then
  ``SO_REUSEADDR=1``, so that later sockets to other destinations can share P.
  ``EADDRINUSE`` means P has sockets (to D or elsewhere): use the shared path.
* **Shared.** (1) Take the *port mutex* for (netns, IP, P): a non-blocking OFD
  byte-range lock (``F_OFD_SETLK``) on one lock file per network namespace; if
  another process or thread holds it, P is busy, skip it for now. (2) With
  ``SO_REUSEADDR=1`` ``bind((IP, P))``, then ``SO_REUSEADDR=0`` (Cloudflare's
  connectx lock). (3) Ask the kernel whether a socket is connected from (IP, P)
  to D: one sock_diag exact lookup (:class:`agent.sockdiag.UdpTupleQuery`). If
  so, P is taken. (4) ``connect(D)``, ``SO_REUSEADDR=1``, release the mutex.

Why this is race-free among processes using this module: shared claims of one
(IP, P) are serialized by the mutex, and each looks up *after* binding. A socket
that connected to D from P before our bind is seen by the lookup. One that
comes later must bind P after us: an exclusive bind fails because our socket
exists, a shared one waits for the mutex, which we release only once connected
(where its lookup sees us). An exclusive socket mid-connect has
``SO_REUSEADDR=0``, so our shared bind fails rather than join it. The OFD lock is
released by the kernel when its file is closed, including when the process
dies, so a crash never leaves a port locked.

Why a mutex and not only the ``SO_REUSEADDR=0`` lock: that lock (bind with
``SO_REUSEADDR=1``, then turn it off so later binds of P fail) leaves a window
between ``bind`` and the ``setsockopt`` in which a second process can bind P
too; both then hold the "lock", both look up, neither sees the other (neither is
connected yet), both connect. A preemption between the two calls stretches the
window to milliseconds (tests/agent/test_egress_udp.py steps through it). We
keep the ``SO_REUSEADDR=0`` step so that processes following Cloudflare's
convention fail to bind P while we connect.
Sockets that bind with ``SO_REUSEADDR`` and follow neither convention can
always collide; nothing in user space can prevent that. Sockets of the other
address family (IPv4-mapped IPv6) are not considered.

Choosing P: random ports of the slice, each thread remembering for about a
second (``UDP_MEMORY``) which ports it found connected to D and which ones an
exclusive bind found in use, and picking outside them: on a warm memory the
first port tried is free, so a connect costs one exclusive bind, or on a busy
host one locked claim with its one lookup. The memory only steers the choice
(the lookup after ``bind`` still decides), and it corrects itself: when every
pick lands in it, a lookup decides and a port found free again is forgotten.
A port in use whose state toward D is unknown gets a lock-free lookup before
the lock. If ``UDP_RANDOM_PROBES`` tries fail the slice is crowded: one
sock_diag dump filtered in the kernel (source IP, slice, connected to D) gives
the taken set and the other ports are tried in turn from a random start. Ports
found busy (another process mid-claim) are retried after a short back-off, so
:class:`PortsExhausted` means every port of the slice is connected to D.
Why not dump first, as the design suggested: a dump walks the whole UDP hash
table (16,384 slots here) whatever the filter, about 15 µs before the first
socket, plus ~0.2 µs per socket returned; it loses to a few lookups until the
slice is nearly full (``bench/bench_egress.py --sweep`` measures all three
ways; figures in docs/benchmarks.md).

Per-thread state (the sock_diag socket, the lock file, the memories) is
dropped in a forked child by an ``os.register_at_fork`` hook rather than by
comparing ``getpid()`` on every call.

The lock file lives in ``$PORTSLICE_RUN_DIR`` (default ``/run/portslice``,
created mode 1777, lock files 0666): every process of a network namespace that
uses this module must see the same directory.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import ipaddress
import logging
import os
import random
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final, Literal

from joserfc.jwk import OKPKey

from agent.bundle import Bundle, BundleSlice, decode_unverified
from agent.sockdiag import TCP_ESTABLISHED, SockDiag, family_of
from agent.state import StateStore

log = logging.getLogger(__name__)

IP_BIND_ADDRESS_NO_PORT: Final = 24
IP_LOCAL_PORT_RANGE: Final = 51
PORT_RANGE_SYSCTL: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")
RUN_DIR_ENV: Final = "PORTSLICE_RUN_DIR"
DEFAULT_RUN_DIR: Final = "/run/portslice"

#: Random ports tried before a dump of the slice (a dump costs about ten lookups).
UDP_RANDOM_PROBES: Final = 32
#: How long ports found taken (or in use) toward a destination are skipped, seconds.
UDP_MEMORY: Final = 1.0
#: Share of picks remembered as in use that try an exclusive bind anyway, so that
#: ports whose sockets have closed (often our own) get back to the fast path.
UDP_IN_USE_RECHECK: Final = 1 / 8
_RANDOM_PROBES: Final = range(UDP_RANDOM_PROBES)
#: Further random picks to find a port outside that memory before asking the kernel.
UDP_MEMORY_PICKS: Final = 8
#: How long to keep retrying ports other processes are mid-connect on.
UDP_BUSY_TIMEOUT: Final = 1.0
#: Dump rounds for ports held exclusively (usually a fast-path connect in progress).
UDP_IN_USE_ROUNDS: Final = 3
#: How long a read of the netns port range is trusted, seconds (see connect_tcp).
NETNS_RANGE_TTL: Final = 0.1

# The hot paths are written for the interpreter: names bound once at module level,
# no object per call but the socket, one Python call per syscall where possible.
_socket = socket.socket
_monotonic = time.monotonic
_random = random.random
_F_OFD_SETLK: Final = getattr(fcntl, "F_OFD_SETLK", 37)
_FLOCK = struct.Struct("=hhqqi4x")

Address = tuple[str, int]


class PortsExhausted(OSError):
    """No free source port in the slice toward this destination (``EADDRNOTAVAIL``)."""

    def __init__(
        self,
        message: str,
        *,
        source_ip: str | None = None,
        port_range: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(errno.EADDRNOTAVAIL, message)
        self.source_ip = source_ip
        self.port_range = port_range

    def __str__(self) -> str:
        return str(self.strerror)


class RangeNotEnforced(Exception):
    """The kernel would pick a source port outside the slice (the netns range excludes it)."""


class NoSliceAvailable(LookupError):
    """No active slice of the applied bundle matches the request."""


class EgressError(Exception):
    """The egress library cannot work here (e.g. its lock directory is unusable)."""


# --- the netns port range -------------------------------------------------------------


class _RangeCache(threading.local):
    """This thread's view of the netns port range: (expires, low, high), and the
    sysctl file kept open. Per thread, because a namespace is a thread's own: a
    thread that moved with ``setns`` must never be checked against another's
    range, and the file answers for the namespace it was opened in."""

    range: tuple[float, int, int] | None = None
    #: Kept open: re-reading is then one pread (about 2 µs), so a process that
    #: connects once in a while pays little more than a busy one.
    fd: int = -1


_ranges = _RangeCache()


def netns_port_range() -> tuple[int, int]:
    """``net.ipv4.ip_local_port_range`` of this network namespace, read now."""
    low, high = PORT_RANGE_SYSCTL.read_text().split()
    return int(low), int(high)


def _cached_netns_range() -> tuple[float, int, int]:
    """(expires, low, high): the netns range as this thread read it at most
    NETNS_RANGE_TTL ago."""
    cache = _ranges
    cached = cache.range
    now = _monotonic()
    if cached is None or now > cached[0]:
        if cache.fd < 0:
            cache.fd = os.open(PORT_RANGE_SYSCTL, os.O_RDONLY | os.O_CLOEXEC)
        low, high = os.pread(cache.fd, 64, 0).split()
        cached = cache.range = (now + NETNS_RANGE_TTL, int(low), int(high))
    return cached


def _forget_netns_range() -> None:
    """Re-read (and reopen) the sysctl next time: the range or the namespace changed."""
    cache = _ranges
    cache.range = None
    if cache.fd >= 0:
        os.close(cache.fd)
        cache.fd = -1


def _reset_netns_range_in_child() -> None:
    # The child's one thread re-reads: the parent may have narrowed the range since.
    _ranges.range = None


os.register_at_fork(after_in_child=_reset_netns_range_in_child)


def ensure_netns_port_range(ranges: Iterable[tuple[int, int]]) -> bool:
    """Widen the netns port range to cover every ``(lo, hi)``; True if it now does.

    Only widens, to the smallest range covering the old one and the slices (other
    software's ephemeral ports are drawn from it too). Returns False, and logs
    why, when the sysctl cannot be written (no CAP_NET_ADMIN, read-only
    ``/proc/sys`` in a container) or the kernel refuses (a slice below
    ``net.ipv4.ip_unprivileged_port_start``).
    """
    wanted = list(ranges)
    if not wanted:
        return True
    need_lo = min(lo for lo, _ in wanted)
    need_hi = max(hi for _, hi in wanted)
    low, high = netns_port_range()
    if low <= need_lo and need_hi <= high:
        return True
    new = (min(low, need_lo), max(high, need_hi))
    try:
        PORT_RANGE_SYSCTL.write_text(f"{new[0]} {new[1]}\n")
    except OSError as error:
        log.warning(
            "netns port range %s-%s does not cover slices %s-%s and cannot be widened: %s",
            low,
            high,
            need_lo,
            need_hi,
            error,
        )
        return False
    finally:
        _forget_netns_range()
    low, high = netns_port_range()
    return low <= need_lo and need_hi <= high


def set_netns_port_range(lo: int, hi: int) -> None:
    """Set this namespace's range to exactly ``lo``-``hi`` (exact-range mode, :mod:`agent.exact`);
    OSError when the sysctl cannot be written or the kernel refuses the range."""
    try:
        PORT_RANGE_SYSCTL.write_text(f"{lo} {hi}\n")
    finally:
        _forget_netns_range()


# --- argument checks --------------------------------------------------------------------
# Cached: connect_tcp must cost little more than the kernel's own connect(), and
# ipaddress parsing alone would be a tenth of a loopback TCP handshake.


@functools.lru_cache(maxsize=4096)
def _family(address: str) -> int:
    return family_of(address)


def _check_range(lo: object, hi: object) -> None:
    if not (type(lo) is int and type(hi) is int and 1 <= lo <= hi <= 65535):
        raise ValueError(f"port range ({lo!r}, {hi!r}) is not 1 <= lo <= hi <= 65535")


@functools.lru_cache(maxsize=1024)
def _plan(source_ip: str, lo: int, hi: int) -> tuple[int, int]:
    """The family of ``source_ip`` and the IP_LOCAL_PORT_RANGE value, checked.

    The value is the u32 ``hi << 16 | lo`` as a C int (negative when hi >= 32768):
    CPython's ``setsockopt`` tries the int form first and packed bytes third, after
    two failed argument parses that cost more than the rest of the call.
    """
    _check_range(lo, hi)
    value = hi << 16 | lo
    return _family(source_ip), value - (1 << 32) if value >= 1 << 31 else value


def _check_destination(dst: Address, family: int) -> None:
    if _family(dst[0]) != family:
        raise ValueError(f"destination {dst[0]} is not the source address's IP version")


def _describe(source_ip: str, lo: int, hi: int) -> str:
    return f"{source_ip} ports {lo}-{hi}"


# --- TCP --------------------------------------------------------------------------------

_SOL_IP: Final = socket.SOL_IP
_STREAM: Final = socket.SOCK_STREAM


def _check_enforceable(source_ip: str, lo: int, hi: int) -> None:
    _, low, high = _cached_netns_range()
    if hi < low or lo > high:
        raise RangeNotEnforced(
            f"slice {_describe(source_ip, lo, hi)} lies outside the netns port range "
            f"{low}-{high}: the kernel would ignore it (see ensure_netns_port_range)"
        )


def connect_tcp(
    dst: Address, *, source_ip: str, port_range: tuple[int, int], timeout: float | None = None
) -> socket.socket:
    """A TCP connection to ``dst`` from ``source_ip`` with a source port in ``port_range``.

    ``dst`` is an (IP literal, port) pair of the source's IP version. ``timeout``
    as for :meth:`socket.socket.settimeout` (None keeps the module default); 0
    returns a non-blocking socket whose connect is in progress. Raises
    :class:`PortsExhausted`, :class:`RangeNotEnforced`, or the ``OSError`` of the
    connect.

    The port is not read back after ``connect()``: the slice is enforced by the
    netns range check below, re-read every ``NETNS_RANGE_TTL`` seconds, with the
    nftables guard behind it (the argument and the measurements are in
    docs/agent.md).
    """
    lo, hi = port_range
    family, range_value = _plan(source_ip, lo, hi)
    if _family(dst[0]) != family:
        _check_destination(dst, family)
    netns = _ranges.range
    if netns is None or _monotonic() > netns[0] or hi < netns[1] or lo > netns[2]:
        _check_enforceable(source_ip, lo, hi)  # the slow path; the test above is its fast form
    sock = _socket(family, _STREAM)
    try:
        sock.setsockopt(_SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(_SOL_IP, IP_LOCAL_PORT_RANGE, range_value)
        sock.bind((source_ip, 0))
        if timeout is not None:
            sock.settimeout(timeout)
        try:
            if timeout == 0:
                _connect_nonblocking(sock, dst)
            else:
                sock.connect(dst)
        except OSError as error:
            if error.errno == errno.EADDRNOTAVAIL:
                raise PortsExhausted(
                    f"no free port in {_describe(source_ip, lo, hi)} toward {dst[0]}:{dst[1]}",
                    source_ip=source_ip,
                    port_range=(lo, hi),
                ) from error
            raise
    except BaseException:
        sock.close()
        raise
    return sock


def _connect_nonblocking(sock: socket.socket, dst: Address) -> None:
    code = sock.connect_ex(dst)
    if code not in (0, errno.EINPROGRESS):
        raise OSError(code, os.strerror(code))


# --- UDP --------------------------------------------------------------------------------

_DGRAM: Final = socket.SOCK_DGRAM
_SOL_SOCKET: Final = socket.SOL_SOCKET
_SO_REUSEADDR: Final = socket.SO_REUSEADDR
_EADDRINUSE: Final = errno.EADDRINUSE
_F_WRLCK: Final = fcntl.F_WRLCK
_F_UNLCK: Final = fcntl.F_UNLCK
_SEEK_SET: Final = os.SEEK_SET
_LOCK_CONFLICT: Final = (errno.EAGAIN, errno.EACCES)
_fcntl = fcntl.fcntl


class _PortLocks:
    """Non-blocking per-(source IP, port) mutexes of one network namespace.

    OFD locks belong to an open file description, so each thread opens its own
    (see :func:`_thread_state`) and a forked child reopens rather than sharing
    its parent's.
    """

    def __init__(self) -> None:
        netns = os.stat("/proc/thread-self/ns/net").st_ino
        directory = Path(os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR))
        self.path = directory / f"udp-ports-net{netns}.lock"
        try:
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                os.chmod(directory, 0o1777)
            self.fd = os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666
            )
        except OSError as error:
            raise EgressError(
                f"cannot open the UDP port lock file {self.path} ({error}); "
                f"set {RUN_DIR_ENV} to a directory every egress process can write"
            ) from error
        if os.fstat(self.fd).st_uid == os.geteuid():
            os.fchmod(self.fd, 0o666)

    def close(self) -> None:
        os.close(self.fd)

    def try_lock(self, offset: int) -> bool:
        try:
            _fcntl(self.fd, _F_OFD_SETLK, _FLOCK.pack(_F_WRLCK, _SEEK_SET, offset, 1, 0))
        except OSError as error:
            if error.errno in _LOCK_CONFLICT:
                return False
            raise
        return True

    def unlock(self, offset: int) -> None:
        _fcntl(self.fd, _F_OFD_SETLK, _FLOCK.pack(_F_UNLCK, _SEEK_SET, offset, 1, 0))


class _ThreadState(threading.local):
    diag: SockDiag | None = None
    locks: _PortLocks | None = None

    def __init__(self) -> None:
        self.targets: dict[tuple[str, str, int], _UdpTarget] = {}


_local = _ThreadState()
#: Every thread's sock_diag socket and lock file, so a forked child can close them all.
_opened: set[SockDiag | _PortLocks] = set()


def _thread_state() -> tuple[SockDiag, _PortLocks]:
    """This thread's sock_diag socket and lock file, opened on first use.

    Both belong to the network namespace the thread had when they were opened:
    a thread that changes namespace must call :func:`forget_thread_state`. A
    forked child starts afresh (:func:`_forget_after_fork`): sharing the
    parent's lock file would share its locks, and its netlink socket its replies.
    """
    state = _local
    if state.diag is None or state.locks is None:
        forget_thread_state()
        state.diag = SockDiag()
        _opened.add(state.diag)
        state.locks = _PortLocks()
        _opened.add(state.locks)
    return state.diag, state.locks


def forget_thread_state() -> None:
    """Close this thread's cached sock_diag socket and lock file (after ``setns``)."""
    state = _local
    for resource in (state.diag, state.locks):
        if resource is not None:
            _opened.discard(resource)
            resource.close()
    state.diag = state.locks = None
    state.targets.clear()
    _forget_netns_range()


def _forget_after_fork() -> None:
    # The parent keeps its copies open, so its locks and sockets are unaffected.
    for resource in _opened:
        resource.close()
    _opened.clear()
    _local.diag = _local.locks = None
    _local.targets.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


@functools.lru_cache(maxsize=1024)
def _lock_base(source_ip: str) -> int:
    """The lock-file offset of ``source_ip``'s 65,536 per-port locks."""
    return zlib.crc32(ipaddress.ip_address(source_ip).packed) << 16


class _UdpTarget:
    """What one thread keeps about ``source_ip`` toward ``dst``, and what it has seen.

    ``taken`` holds ports a lookup found connected to ``dst``, ``in_use`` ports an
    exclusive bind found held by some socket; both are forgotten every
    ``UDP_MEMORY`` seconds, and corrected when a port turns out free. They only
    steer which ports are tried: the lookup after ``bind`` still decides.
    """

    __slots__ = (
        "family",
        "source_ip",
        "dst",
        "query",
        "locks",
        "lock_base",
        "taken",
        "in_use",
        "mine",
        "mine_alone",
        "forget_at",
    )

    def __init__(self, source_ip: str, dst: Address) -> None:
        diag, locks = _thread_state()
        self.family = _family(source_ip)
        if _family(dst[0]) != self.family:
            _check_destination(dst, self.family)
        self.source_ip = source_ip
        self.dst = dst
        self.query = diag.udp_tuple_query(src=source_ip, dst=dst[0], dport=dst[1])
        self.locks = locks
        self.lock_base = _lock_base(source_ip)
        self.taken: set[int] = set()
        self.in_use: set[int] = set()
        #: Ports this thread claimed in the period, and those it claimed exclusively.
        self.mine: set[int] = set()
        self.mine_alone: set[int] = set()
        self.forget_at = _monotonic() + UDP_MEMORY

    def forget(self, now: float) -> None:
        self.taken.clear()
        self.in_use.clear()
        self.mine.clear()
        self.mine_alone.clear()
        self.forget_at = now + UDP_MEMORY


_TARGET_CACHE_SIZE: Final = 1024


def _new_target(source_ip: str, dst: Address) -> _UdpTarget:
    target = _UdpTarget(source_ip, (dst[0], dst[1]))
    targets = _local.targets
    if len(targets) >= _TARGET_CACHE_SIZE:
        targets.clear()
    targets[source_ip, dst[0], dst[1]] = target
    return target


# Outcomes of a shared claim; all but _CLAIMED and _BUSY leave the socket unusable.
_CLAIMED, _TAKEN, _BUSY, _IN_USE = 0, 1, 2, 3


def _claim_shared(target: _UdpTarget, sock: socket.socket, port: int) -> int:
    """Shared path, steps 1-4 of the module docstring, for a port others also use."""
    # The port mutex, _PortLocks.try_lock and unlock inlined: this is the hot path
    # of a busy host, and a Python call costs a tenth of the fcntl it wraps.
    offset = target.lock_base | port
    fd = target.locks.fd
    try:
        _fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(_F_WRLCK, _SEEK_SET, offset, 1, 0))
    except OSError as error:
        if error.errno in _LOCK_CONFLICT:
            return _BUSY
        raise
    try:
        sock.setsockopt(_SOL_SOCKET, _SO_REUSEADDR, 1)
        try:
            sock.bind((target.source_ip, port))
        except OSError as error:
            if error.errno == _EADDRINUSE:
                return _IN_USE  # an exclusive (fast-path or foreign) socket holds it
            raise
        sock.setsockopt(_SOL_SOCKET, _SO_REUSEADDR, 0)
        # Looked up only now, bound: a fast-path socket that connected before our bind
        # is seen here, and none can bind after us until we connect.
        if target.query.held(port):
            return _TAKEN
        sock.connect(target.dst)
        sock.setsockopt(_SOL_SOCKET, _SO_REUSEADDR, 1)
        return _CLAIMED
    finally:
        _fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(_F_UNLCK, _SEEK_SET, offset, 1, 0))


def _claim_random(target: _UdpTarget, lo: int, hi: int) -> socket.socket | None:
    """Random ports, preferring ones not remembered as taken; the socket, or None
    after ``UDP_RANDOM_PROBES`` tries.

    A port nobody holds is claimed exclusively (the fast path of the module
    docstring, inlined: the bind without SO_REUSEADDR succeeds only if no socket
    at all holds the port). A port in use is claimed on the shared path straight
    away the first time in a call (the memory says it is not connected to
    ``dst``), with a lock-free lookup first after that (the memory was wrong
    once, so it is probably cold). When every pick lands in the memory a lookup
    decides, and corrects the memory if the port has become free: the memory
    steers, it never makes a port unusable. Ports this thread claimed itself in
    the period are remembered as taken (and ports it claimed exclusively as in
    use) only when seen so twice: the caller closes those sockets unseen, often
    soon, and remembering them would fill the memory with free ports.
    """
    now = _monotonic()
    if now > target.forget_at:
        target.forget(now)
    taken, in_use, mine, address = target.taken, target.in_use, target.mine, target.source_ip
    mine_alone = target.mine_alone
    span = hi - lo + 1
    sock = _socket(target.family, _DGRAM)
    check_first = False
    try:
        for _ in _RANDOM_PROBES:
            port = lo + int(_random() * span)
            if port in taken:
                port = _pick_outside(taken, lo, span)
                if port in taken:
                    if target.query.held(port):
                        continue
                    taken.discard(port)  # its socket has gone (often one of ours):
                    in_use.discard(port)  # try it as a fresh port
            known_in_use = port in in_use
            if not known_in_use or _random() < UDP_IN_USE_RECHECK:
                try:
                    sock.bind((address, port))
                except OSError as error:
                    if error.errno != _EADDRINUSE:
                        raise
                    if not known_in_use:
                        check_first = True  # in use: whether toward dst is unknown
                        if port in mine_alone:
                            mine_alone.discard(port)  # our own socket, probably
                        else:
                            in_use.add(port)
                else:
                    sock.connect(target.dst)
                    sock.setsockopt(_SOL_SOCKET, _SO_REUSEADDR, 1)
                    in_use.discard(port)  # if its sockets are gone, the memory was stale
                    mine.add(port)
                    mine_alone.add(port)
                    return sock
            if check_first and target.query.held(port):
                _remember_taken(taken, mine, port)
                continue
            outcome = _claim_shared(target, sock, port)
            if outcome == _CLAIMED:
                mine.add(port)
                return sock
            if outcome == _TAKEN:
                _remember_taken(taken, mine, port)
            if outcome != _BUSY:
                sock.close()
                sock = _socket(target.family, _DGRAM)
            check_first = True
    except BaseException:
        sock.close()
        raise
    sock.close()
    return None


def _remember_taken(taken: set[int], mine: set[int], port: int) -> None:
    """Remember ``port`` as taken, unless this thread claimed it itself lately: then
    only the second sighting counts (the first is probably our own socket, the
    second another process that has taken the port since)."""
    if port in mine:
        mine.discard(port)
    else:
        taken.add(port)


def _pick_outside(taken: set[int], lo: int, span: int) -> int:
    """A random port, up to a few picks to find one outside ``taken`` (else the last)."""
    for _ in range(UDP_MEMORY_PICKS):
        port = lo + int(_random() * span)
        if port not in taken:
            break
    return port


def _claim_free(target: _UdpTarget, lo: int, hi: int) -> socket.socket | None:
    """Try every port not connected to the destination; retry contended ones a while."""
    diag, _ = _thread_state()
    deadline = _monotonic() + UDP_BUSY_TIMEOUT
    backoff = 0.0002
    sock = _socket(target.family, _DGRAM)
    try:
        for round_ in range(1_000_000):
            taken = set(
                diag.dump_sports(
                    family=target.family,
                    protocol=socket.IPPROTO_UDP,
                    states=1 << TCP_ESTABLISHED,
                    src=target.source_ip,
                    sport_range=(lo, hi),
                    dst=target.dst[0],
                    dport=target.dst[1],
                )
            )
            free = [port for port in range(lo, hi + 1) if port not in taken]
            start = random.randrange(len(free)) if free else 0  # cheaper than a shuffle
            busy = in_use = False
            for port in free[start:] + free[:start]:
                outcome = _claim_shared(target, sock, port)
                if outcome == _CLAIMED:
                    return sock
                if outcome != _BUSY:
                    sock.close()
                    sock = _socket(target.family, _DGRAM)
                busy = busy or outcome == _BUSY
                in_use = in_use or outcome == _IN_USE
            # A busy port is another process mid-connect; an in-use one may be a fast-path
            # socket mid-connect (resolved within microseconds) or a foreign exclusive
            # socket (never), hence only a few rounds for those.
            retry = busy or (in_use and round_ < UDP_IN_USE_ROUNDS)
            if not retry or _monotonic() > deadline:
                break
            time.sleep(backoff)
            backoff = min(backoff * 2, 0.01)
    except BaseException:
        sock.close()
        raise
    sock.close()
    return None


def connect_udp(dst: Address, *, source_ip: str, port_range: tuple[int, int]) -> socket.socket:
    """A connected UDP socket to ``dst`` whose 4-tuple no other socket holds.

    The source port is in ``port_range`` and shared with sockets to other
    destinations. Safe to call from many processes and threads at once. Raises
    :class:`PortsExhausted` when every port of the range is connected to ``dst``.
    """
    lo, hi = port_range
    if not (type(lo) is int and type(hi) is int and 1 <= lo <= hi <= 65535):
        _check_range(lo, hi)
    target = _local.targets.get((source_ip, dst[0], dst[1]))
    if target is None:
        target = _new_target(source_ip, dst)
    sock = _claim_random(target, lo, hi) or _claim_free(target, lo, hi)
    if sock is None:
        raise PortsExhausted(
            f"every port of {_describe(source_ip, lo, hi)} is connected to {dst[0]}:{dst[1]}",
            source_ip=source_ip,
            port_range=(lo, hi),
        )
    return sock


# --- the applied bundle -----------------------------------------------------------------


def _weighted_order(slices: list[BundleSlice]) -> list[BundleSlice]:
    """A random order in which bigger slices tend to come first (Efraimidis-Spirakis)."""
    return sorted(slices, key=lambda s: random.random() ** (1.0 / s.size), reverse=True)


class Egress:
    """Connections from the slices of the bundle this host has applied.

    ``Egress.load(state_dir)`` reads the agent's state store. Without ``keys`` it
    trusts the file as the agent's own (it is root-owned and only the agent
    writes it; the schema is still checked); with ``keys`` and ``hostname`` it
    verifies the token as :meth:`StateStore.load_verified` does. An ``Egress``
    is a snapshot: load again after the agent applies a new bundle.
    """

    def __init__(self, bundle: Bundle | None) -> None:
        self.bundle = bundle

    @classmethod
    def load(
        cls,
        state_dir: str | os.PathLike[str],
        *,
        keys: Mapping[str, OKPKey] | None = None,
        hostname: str | None = None,
        now: float | None = None,
    ) -> Egress:
        store = StateStore(state_dir)
        if keys is not None:
            if hostname is None:
                raise TypeError("Egress.load: hostname is required with keys")
            clock = time.time() if now is None else now
            return cls(store.load_verified(keys=keys, hostname=hostname, now=clock))
        state = store.load()
        return cls(None if state is None else decode_unverified(state.token))

    def slices(
        self,
        *,
        version: int,
        pool: str | None = None,
        purpose: str | None = None,
        country: str | None = None,
    ) -> list[BundleSlice]:
        """Active slices of IP ``version`` matching every filter given."""
        if self.bundle is None:
            return []
        return [
            s
            for s in self.bundle.slices
            if s.active
            and s.version == version
            and pool in (None, s.pool)
            and purpose in (None, s.purpose)
            and country in (None, s.country)
        ]

    def connect(
        self,
        dst: Address,
        proto: Literal["tcp", "udp"] = "tcp",
        *,
        pool: str | None = None,
        purpose: str | None = None,
        country: str | None = None,
        timeout: float | None = None,
    ) -> socket.socket:
        """Connect from a random matching active slice, moving on when one is full.

        Raises :class:`NoSliceAvailable` when no active slice matches and
        :class:`PortsExhausted` when every matching slice is full toward ``dst``.
        """
        if proto not in ("tcp", "udp"):
            raise ValueError(f"proto={proto!r} is not 'tcp' or 'udp'")
        version = ipaddress.ip_address(dst[0]).version
        matches = self.slices(version=version, pool=pool, purpose=purpose, country=country)
        if not matches:
            raise NoSliceAvailable(self._no_match(version, pool, purpose, country))
        for chosen in _weighted_order(matches):
            try:
                if proto == "tcp":
                    return connect_tcp(
                        dst, source_ip=chosen.ip, port_range=(chosen.lo, chosen.hi), timeout=timeout
                    )
                return connect_udp(dst, source_ip=chosen.ip, port_range=(chosen.lo, chosen.hi))
            except PortsExhausted:
                log.debug("slice %s %s-%s is full toward %s", chosen.ip, chosen.lo, chosen.hi, dst)
        raise PortsExhausted(
            f"all {len(matches)} matching slices are out of {proto} ports toward {dst[0]}:{dst[1]}"
        )

    def _no_match(
        self, version: int, pool: str | None, purpose: str | None, country: str | None
    ) -> str:
        if self.bundle is None:
            return "no bundle has been applied on this host"
        return (
            f"no active IPv{version} slice with pool={pool!r} purpose={purpose!r} "
            f"country={country!r} in bundle serial {self.bundle.serial}"
        )
