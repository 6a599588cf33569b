"""Connect cost of an unmodified program in exact-range mode ÷ the same program without portslice.

Run as root: ``.venv/bin/python -m bench.bench_exact`` (``--quick`` for fewer rounds,
``--json`` for the raw figures). It makes two network namespaces and removes them:

* ``psTplain…``: a host without portslice: the kernel's default port range, no guard;
* ``psTrange…``: the exact port range alone (``manage_nftables`` off), to tell the
  range's share from the guard's;
* ``psTexact…``: the agent's enforcement in exact-range mode
  (:func:`agent.enforce.enforce` with ``exact=True``): the port range is the active
  aligned range (2,048 ports) and the nftables guard is on.

Both hold the shared address on ``lo`` and 8 listeners on 127.0.0.1. The program is
what curl or a Java client does when told a source address: ``socket(); bind((shared
IP, 0)); connect(listener)``, with no portslice code; its packets leave from the
shared IP, so the guard looks at every one. One process enters each namespace in
turn with ``setns()`` (the thread's sockets are made in the namespace it is in), so
both sides run in the same process, and each round measures both back to back, in an
order that alternates between rounds; the ratio is taken per round (as in
:mod:`bench.bench_egress`, whose timing and summary it reuses). Expected: 1.00×, the
kernel's own path either way.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import bench_egress
from bench.bench_egress import (
    HELD,
    LINGER_ABORT,
    drain,
    machine,
    summary,
    tcp_listeners,
    timed_connects,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = "198.51.100.7"
LISTENER = "127.0.0.1"
LISTENER_PORTS = range(8000, 8008)
EXACT_RANGE = (40960, 43007)
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

ENFORCE = """
from agent.bundle import Bundle, BundleSlice
from agent.enforce import enforce
slices = tuple(BundleSlice("{shared}", lo, lo + 1023, "active", "p", "warp", "DE")
               for lo in range({lo}, {hi}, 1024))
bundle = Bundle("bench", "dc", 1, 1, 0, 0, slices, "kid", "token", ("198.51.100.0/28",))
result = enforce(bundle, manage_port_range=True, manage_nftables={guard}, exact=True)
assert result.ok, result.as_dict()
"""


def enter(fd: int) -> None:
    """Move this thread into the network namespace open at ``fd``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


def unmodified(i: int) -> socket.socket:
    """The program under test: bind to the shared IP, let the kernel pick the port.

    Closed by reset (SO_LINGER 0), on both sides alike: a normal close would leave
    each port in TIME_WAIT for 60 s, and a bind-before-connect program can then open
    only as many connections a minute as its range has ports (docs/agent.md).
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
    sock.bind((SHARED, 0))
    sock.connect((LISTENER, LISTENER_PORTS[i & 7]))
    return sock


@contextmanager
def namespace(kind: str) -> Iterator[str]:
    name = f"psT{kind}{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", f"{SHARED}/32", "dev", "lo"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def exact_mode(name: str, *, guard: bool) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = ENFORCE.format(shared=SHARED, lo=EXACT_RANGE[0], hi=EXACT_RANGE[1], guard=guard)
    subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", script], check=True, env=env)


def paired(sides: dict[str, int], rounds: int, n: int, with_close: bool) -> dict:
    """Rounds of ``n`` connections on each side (entered by its netns fd), per-round ratios."""
    listeners: dict[str, list[socket.socket]] = {}
    stack = []
    for side, fd in sides.items():
        enter(fd)
        context = tcp_listeners()
        listeners[side] = context.__enter__()
        stack.append(context)

    def measure(side: str) -> float:
        enter(sides[side])
        elapsed = timed_connects(unmodified, n, with_close)
        drain(listeners[side])
        return elapsed

    times: dict[str, list[float]] = {side: [] for side in sides}
    names = list(sides)
    try:
        for _ in range(3):  # warm-up
            for side in names:
                measure(side)
        gc.disable()
        for index in range(rounds):
            for side in names if index % 2 == 0 else names[::-1]:
                times[side].append(measure(side))
    finally:
        gc.enable()
        for context in stack:
            context.__exit__(None, None, None)
    return {side: summary(samples, times["plain"]) for side, samples in times.items()}


def run(quick: bool) -> dict:
    rounds = 41 if quick else 201
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    with namespace("plain") as plain, namespace("range") as bare, namespace("exact") as exact:
        exact_mode(bare, guard=False)
        exact_mode(exact, guard=True)
        names = (("plain", plain), ("range", bare), ("exact", exact))
        fds = {side: os.open(f"/run/netns/{name}", os.O_RDONLY) for side, name in names}
        try:
            results = {
                way: paired(fds, rounds, 3 * HELD, with_close)
                for way, with_close in (("connect", False), ("connect_close", True))
            }
        finally:
            enter(home)
            for fd in (*fds.values(), home):
                os.close(fd)
    return results


def report(results: dict) -> str:
    def cell(figures: dict) -> str:
        return (
            f"{figures['median_us']:6.2f} µs {figures['ratio']:5.2f}× "
            f"({figures['ratio_p25']:.2f}-{figures['ratio_p75']:.2f})"
        )

    lines = [f"{'':44} {'connect alone':29} {'connect + close':29}"]
    for side, label in (
        ("plain", "bind(shared, 0); connect(), no portslice"),
        ("range", "the same, exact range only (no guard)"),
        ("exact", "the same, exact range + guard (the mode)"),
    ):
        lines.append(
            f"{label:44} {cell(results['connect'][side]):29} "
            f"{cell(results['connect_close'][side]):29}"
        )
    lines.append(
        "ratios: median of per-round ratios to no portslice (25th-75th percentile), "
        f"{results['clock']} clock; load average {results['machine']['load_average']}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--json", action="store_true", help="also print the raw figures")
    parser.add_argument(
        "--clock",
        choices=sorted(bench_egress.CLOCKS),
        default="wall",
        help="time rounds by wall clock (default) or by this thread's CPU time",
    )
    args = parser.parse_args()
    bench_egress.clock = bench_egress.CLOCKS[args.clock]
    if os.geteuid() != 0:
        sys.exit("bench_exact needs root (network namespaces, sysctl, nftables)")
    results = run(args.quick)
    results["machine"] = machine()
    results["clock"] = args.clock
    print(report(results))
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
