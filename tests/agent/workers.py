"""Scenarios the tests run inside a network namespace.

``python -m tests.agent.workers NAME '{"json": "kwargs"}'`` calls ``NAME(**kwargs)``
and prints its result as one JSON line. ``udp_hold`` is the exception: it talks
to the test over stdin/stdout while it holds its sockets.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from agent import egress
from agent.sockdiag import UDP_STATES, SockDiag

Result = dict[str, Any]


def tcp_fill(
    source_ip: str, lo: int, hi: int, origins: list[str], port: int, spread: int
) -> Result:
    """``spread`` connections round-robin over ``origins``, then fill the first origin."""
    held: list[socket.socket] = []
    tuples = []
    for i in range(spread):
        dst = (origins[i % len(origins)], port)
        sock = egress.connect_tcp(dst, source_ip=source_ip, port_range=(lo, hi), timeout=5)
        held.append(sock)
        tuples.append([*sock.getsockname()[:2], *sock.getpeername()[:2]])
    to_first = sum(1 for t in tuples if t[2] == origins[0])
    error = None
    while error is None:
        try:
            sock = egress.connect_tcp(
                (origins[0], port), source_ip=source_ip, port_range=(lo, hi), timeout=5
            )
        except egress.PortsExhausted as exc:
            error = {"type": type(exc).__name__, "errno": exc.errno, "message": str(exc)}
        else:
            held.append(sock)
            tuples.append([*sock.getsockname()[:2], *sock.getpeername()[:2]])
            to_first += 1
    return {"tuples": tuples, "to_first": to_first, "error": error}


def tcp_connect(source_ip: str, lo: int, hi: int, dst: str, port: int, count: int = 1) -> Result:
    """Up to ``count`` connections; the ports obtained and how it stopped."""
    held, ports, error = [], [], None
    for _ in range(count):
        try:
            sock = egress.connect_tcp(
                (dst, port), source_ip=source_ip, port_range=(lo, hi), timeout=5
            )
        except (egress.PortsExhausted, egress.RangeNotEnforced) as exc:
            error = type(exc).__name__
            break
        held.append(sock)
        ports.append(sock.getsockname()[1])
    return {"ports": ports, "error": error, "netns_range": list(egress.netns_port_range())}


def widen_then_connect(source_ip: str, lo: int, hi: int, dst: str, port: int) -> Result:
    before = tcp_connect(source_ip, lo, hi, dst, port)
    widened = egress.ensure_netns_port_range([(lo, hi)])
    after = tcp_connect(source_ip, lo, hi, dst, port)
    return {"before": before, "widened": widened, "after": after}


def stale_range_check(source_ip: str, lo: int, hi: int, dst: str, port: int) -> Result:
    """Narrow the netns range behind the cached view: refused once the cache expires."""
    first = egress.connect_tcp((dst, port), source_ip=source_ip, port_range=(lo, hi), timeout=5)
    egress.PORT_RANGE_SYSCTL.write_text("50000 50999\n")  # disjoint from the slice
    time.sleep(egress.NETNS_RANGE_TTL)
    try:
        egress.connect_tcp((dst, port), source_ip=source_ip, port_range=(lo, hi), timeout=5)
    except egress.RangeNotEnforced as exc:
        outcome: dict[str, object] = {"error": "RangeNotEnforced", "message": str(exc)}
    else:
        outcome = {"error": None}
    first.close()
    # Nothing may be left connected outside the slice.
    with SockDiag() as diag:
        leftovers = diag.dump_sports(
            family=socket.AF_INET, protocol=socket.IPPROTO_TCP, src=source_ip, dport=port
        )
    return {**outcome, "leftover_ports": leftovers}


def udp_pairs(source_ip: str, lo: int, hi: int, origins: list[str], port: int) -> Result:
    """Fill the range toward each origin in turn; the (sport, origin) pairs obtained."""
    held, pairs, errors = [], [], 0
    for origin in origins:
        while True:
            try:
                sock = egress.connect_udp((origin, port), source_ip=source_ip, port_range=(lo, hi))
            except egress.PortsExhausted:
                errors += 1
                break
            held.append(sock)
            pairs.append([sock.getsockname()[1], sock.getpeername()[0]])
    return {"pairs": pairs, "exhausted": errors}


def udp_refill(source_ip: str, lo: int, hi: int, dst: str, port: int, other: str) -> Result:
    """Fill the slice toward ``dst`` twice, closing everything in between, within one
    memory period: ports remembered as taken must come back as soon as they are free."""
    sharer = []
    for sport in range(lo, hi + 1):  # every port also talks to another destination
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((source_ip, sport))
        sock.connect((other, port))
        sharer.append(sock)
    fills, remembered = [], []
    for _ in range(2):
        target = egress._local.targets.get((source_ip, dst, port))
        remembered.append(0 if target is None else len(target.taken))
        held: list[socket.socket] = []
        while True:
            try:
                held.append(
                    egress.connect_udp((dst, port), source_ip=source_ip, port_range=(lo, hi))
                )
            except egress.PortsExhausted:
                break
        fills.append(sorted(sock.getsockname()[1] for sock in held))
        for sock in held:
            sock.close()
    return {"fills": fills, "remembered_taken_before": remembered}


def udp_hold() -> None:
    """Say "ready"; on "go T" start at time T; connect until exhausted (or ``count``
    tries, ``jitter`` seconds of random sleep between them); report; hold the
    sockets until stdin closes."""
    args = json.loads(sys.argv[2])
    dst = (args["dst"], args["port"])
    count, jitter = args.get("count"), args.get("jitter", 0.0)
    print("ready", flush=True)
    command, start_at = sys.stdin.readline().split()
    assert command == "go"
    while time.time() < float(start_at):  # spin, so every worker is runnable at once
        pass
    held, error, exhausted, tries = [], None, 0, 0
    while (error is None) if count is None else tries < count:
        tries += 1
        try:
            held.append(
                egress.connect_udp(
                    dst, source_ip=args["source_ip"], port_range=(args["lo"], args["hi"])
                )
            )
        except egress.PortsExhausted as exc:
            error = type(exc).__name__
            exhausted += 1
        if jitter:
            time.sleep(random.random() * jitter)
        else:
            os.sched_yield()  # one claim per turn, so the workers interleave on few CPUs
    ports = [sock.getsockname()[1] for sock in held]
    print(json.dumps({"ports": ports, "error": error, "exhausted": exhausted}), flush=True)
    sys.stdin.read()


def udp_dump(source_ip: str) -> Result:
    """Every UDP socket on ``source_ip`` as [sport, dst, dport] (IPv4 or IPv6)."""
    family = socket.AF_INET6 if ":" in source_ip else socket.AF_INET
    with SockDiag() as diag:
        found = diag.dump(
            family=family, protocol=socket.IPPROTO_UDP, states=UDP_STATES, src=source_ip
        )
    return {"sockets": [[s.sport, s.dst, s.dport] for s in found]}


def egress_connect(state_dir: str, dst: str, port: int, proto: str, count: int, **filters: str):
    """``count`` Egress.connect calls; the source (ip, port) of each, or the error that ended it."""
    chosen = egress.Egress.load(state_dir)
    held, sources, error = [], [], None
    for _ in range(count):
        try:
            sock = chosen.connect((dst, port), proto, timeout=5, **filters)  # type: ignore[arg-type]
        except (egress.NoSliceAvailable, egress.PortsExhausted) as exc:
            error = {"type": type(exc).__name__, "message": str(exc)}
            break
        held.append(sock)
        sources.append(list(sock.getsockname()[:2]))
    return {"sources": sources, "error": error}


def reuseaddr_lock_race(source_ip: str, port: int, dst: str) -> Result:
    """The window of Cloudflare's SO_REUSEADDR=0 lock, stepped through by hand."""
    a, b = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    for sock in (a, b):  # both bind before either takes the "lock"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((source_ip, port))
    for sock in (a, b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    with SockDiag() as diag:
        seen = [diag.udp_lookup(src=source_ip, sport=port, dst=dst, dport=53) for _ in (a, b)]
    for sock in (a, b):
        sock.connect((dst, 53))
    return {
        "lookups_saw_a_connected_socket": [s is not None and s.connected for s in seen],
        "tuples": [[*s.getsockname(), *s.getpeername()] for s in (a, b)],
    }


def locked_port(source_ip: str, port: int, dst: str, other: str) -> Result:
    """A port another process holds the mutex of is not claimed until released."""
    egress.UDP_BUSY_TIMEOUT = 0.05  # type: ignore[misc]
    sharer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sharer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sharer.bind((source_ip, port))
    sharer.connect((other, 53))  # the port is in use, so only the shared path can claim it
    rival = egress._PortLocks()  # its own open file description, as another process has
    offset = egress._lock_base(source_ip) | port
    assert rival.try_lock(offset)
    try:
        egress.connect_udp((dst, 53), source_ip=source_ip, port_range=(port, port))
    except egress.PortsExhausted:
        while_locked = "PortsExhausted"
    else:
        while_locked = "claimed"
    rival.unlock(offset)
    sock = egress.connect_udp((dst, 53), source_ip=source_ip, port_range=(port, port))
    return {"while_locked": while_locked, "after": sock.getsockname()[1]}


def forked_child_locks(source_ip: str, port: int, dst: str, other: str) -> Result:
    """A child forked while its parent holds a port's mutex must not get it too.

    Without a fresh lock file the child would share the parent's open file
    description, and OFD locks never conflict with their own description.
    """
    egress.UDP_BUSY_TIMEOUT = 0.05  # type: ignore[misc]
    sharer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sharer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sharer.bind((source_ip, port))
    sharer.connect((other, 53))  # the port is in use: only the shared path can claim it
    egress.connect_udp((other, 54), source_ip=source_ip, port_range=(port, port)).close()
    _, locks = egress._thread_state()  # the lock file this thread uses, now open
    offset = egress._lock_base(source_ip) | port
    assert locks.try_lock(offset)  # as if mid-claim in this process
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            egress.connect_udp((dst, 53), source_ip=source_ip, port_range=(port, port))
            outcome = b"claimed"
        except egress.PortsExhausted:
            outcome = b"PortsExhausted"
        os.write(write_end, outcome)
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    in_child = os.read(read_end, 64).decode()
    locks.unlock(offset)
    return {"child_while_parent_holds": in_child}


def exclusive_foreign_socket(source_ip: str, port: int, dst: str) -> Result:
    """A socket bound without SO_REUSEADDR owns its port: connect_udp never joins it."""
    foreign = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    foreign.bind((source_ip, port))
    try:
        egress.connect_udp((dst, 53), source_ip=source_ip, port_range=(port, port))
    except egress.PortsExhausted as exc:
        return {"error": type(exc).__name__}
    return {"error": None}


COMMANDS: dict[str, Callable[..., Any]] = {
    "reuseaddr_lock_race": reuseaddr_lock_race,
    "locked_port": locked_port,
    "exclusive_foreign_socket": exclusive_foreign_socket,
    "forked_child_locks": forked_child_locks,
    "tcp_fill": tcp_fill,
    "tcp_connect": tcp_connect,
    "widen_then_connect": widen_then_connect,
    "stale_range_check": stale_range_check,
    "udp_pairs": udp_pairs,
    "udp_refill": udp_refill,
    "udp_dump": udp_dump,
    "egress_connect": egress_connect,
}


def main() -> None:
    name = sys.argv[1]
    if name == "udp_hold":
        udp_hold()
        return
    print(json.dumps(COMMANDS[name](**json.loads(sys.argv[2]))))


if __name__ == "__main__":
    main()
