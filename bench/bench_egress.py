"""Per-connection cost of agent.egress against the kernel's plain connect(), same run.

Run as root: ``.venv/bin/python -m bench.bench_egress`` (``--quick`` for fewer rounds,
``--json`` for the raw figures). It creates a network
namespace ``psTbench…``, measures inside it over loopback, and removes it.

* TCP: ``connect_tcp`` from a 10,000-port slice vs ``socket(); connect()``, 8
  listeners, batches of N connections (set up, timed; then reset and drained,
  untimed), rounds alternating which goes first. Target: ≤ 1.15×.
* UDP, one destination, a 256-port slice already 50 % connected to it:
  ``connect_udp`` + close vs ``socket(); connect(); close()``, next to
  Cloudflare's connectx (2022 blog code: scan ports from a random start with one
  sock_diag exact lookup each, then bind / SO_REUSEADDR=0 / lookup / connect),
  re-implemented here on the same sock_diag primitives. Target: ≤ 3×.
* UDP occupancy sweep (0-99 %): the three ways of choosing a port — ours
  (random probes, then one dump), Cloudflare's per-port scan, and "dump first"
  (one filtered dump, then a random free port) — to show where each wins.

Figures are medians over rounds of the per-connection time; ratios are medians
of the per-round ratios (each round measures both sides back to back, which
cancels most of the noise of a shared machine); ``--json`` adds the minimum
over rounds and the ratio of minimums, the quiet-machine estimate.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import os
import platform
import random
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agent import egress
from agent.sockdiag import TCP_ESTABLISHED, SockDiag

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
TCP_PORTS = range(8000, 8008)
TCP_SLICE = (20000, 29999)
TCP_RANGE = struct.pack("=I", TCP_SLICE[1] << 16 | TCP_SLICE[0])
UDP_DST = ("127.0.0.2", 53)
UDP_SLICE = (40000, 40255)
OTHER_DST = ("127.0.0.3", 53)
LINGER_ABORT = struct.pack("ii", 1, 0)
REUSE = (socket.SOL_SOCKET, socket.SO_REUSEADDR)


# --- TCP ---------------------------------------------------------------------------------


def tcp_plain(i: int) -> socket.socket:
    sock = socket.socket()
    sock.connect((LOOPBACK, TCP_PORTS[i % 8]))
    return sock


def tcp_ours(i: int) -> socket.socket:
    return egress.connect_tcp(
        (LOOPBACK, TCP_PORTS[i % 8]), source_ip=LOOPBACK, port_range=TCP_SLICE
    )


def tcp_floor(i: int) -> socket.socket:
    """The syscalls connect_tcp makes, without its checks: the kernel's share of the cost."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_IP, egress.IP_BIND_ADDRESS_NO_PORT, 1)
    sock.setsockopt(socket.SOL_IP, egress.IP_LOCAL_PORT_RANGE, TCP_RANGE)
    sock.bind((LOOPBACK, 0))
    sock.connect((LOOPBACK, TCP_PORTS[i % 8]))
    sock.getsockname()
    return sock


def tcp_batch(
    connect: Callable[[int], socket.socket], n: int, listeners: list[socket.socket]
) -> float:
    start = time.perf_counter_ns()
    conns = [connect(i) for i in range(n)]
    elapsed = (time.perf_counter_ns() - start) / n / 1000
    for sock in conns:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
        sock.close()
    for listener in listeners:
        while True:
            try:
                listener.accept()[0].close()
            except BlockingIOError:
                break
    return elapsed


def bench_tcp(rounds: int, n: int) -> dict:
    listeners = []
    for port in TCP_PORTS:
        listener = socket.socket()
        listener.setsockopt(*REUSE, 1)
        listener.bind((LOOPBACK, port))
        listener.listen(4096)
        listener.setblocking(False)
        listeners.append(listener)
    variants = {"plain": tcp_plain, "connect_tcp": tcp_ours, "syscalls_only": tcp_floor}
    return paired_rounds(variants, rounds, lambda f: tcp_batch(f, n, listeners), "plain")


# --- UDP ---------------------------------------------------------------------------------


def udp_plain() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(UDP_DST)
    return sock


def udp_ours() -> socket.socket:
    return egress.connect_udp(UDP_DST, source_ip=LOOPBACK, port_range=UDP_SLICE)


class Cloudflare:
    """connectx as in Cloudflare's 2022 blog code, on this repo's sock_diag primitives."""

    def __init__(self) -> None:
        self.diag = SockDiag()
        self.query = self.diag.udp_tuple_query(src=LOOPBACK, dst=UDP_DST[0], dport=UDP_DST[1])

    def free_port(self, lo: int, hi: int) -> int:
        size = hi - lo + 1
        start = random.randint(lo, hi)
        for offset in range(size):
            port = lo + (start - lo + offset) % size
            if not self.query.held(port):  # one exact lookup per candidate
                return port
        raise OSError(errno.EAGAIN, "no free port")

    def connect(self) -> socket.socket:
        while True:
            port = self.free_port(*UDP_SLICE)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(*REUSE, 1)
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                sock.close()
                continue
            sock.setsockopt(*REUSE, 0)
            found = self.diag.udp_lookup(src=LOOPBACK, sport=port, dst=UDP_DST[0], dport=UDP_DST[1])
            if found is None or found.inode != os.fstat(sock.fileno()).st_ino:
                sock.close()
                continue
            sock.connect(UDP_DST)
            sock.setsockopt(*REUSE, 1)
            return sock


def udp_dump_first() -> socket.socket:
    """One filtered dump, then a random free port, each claimed as connect_udp does."""
    diag, _ = egress._thread_state()
    lo, hi = UDP_SLICE
    taken = set(
        diag.dump_sports(
            family=socket.AF_INET,
            protocol=socket.IPPROTO_UDP,
            states=1 << TCP_ESTABLISHED,
            src=LOOPBACK,
            sport_range=UDP_SLICE,
            dst=UDP_DST[0],
            dport=UDP_DST[1],
        )
    )
    free = [port for port in range(lo, hi + 1) if port not in taken]
    start = random.randrange(len(free))
    claim = egress._UdpClaim(egress._target(LOOPBACK, UDP_DST))
    for port in free[start:] + free[:start]:
        if claim.shared(port) == egress._CLAIMED:
            return claim.sock
    claim.close()
    raise OSError(errno.EADDRNOTAVAIL, "full")


def occupy(fraction: float, dst: tuple[str, int] = UDP_DST) -> list[socket.socket]:
    """Connect a random ``fraction`` of the UDP slice's ports to ``dst``."""
    lo, hi = UDP_SLICE
    ports = random.sample(range(lo, hi + 1), round(fraction * (hi - lo + 1)))
    held = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(*REUSE, 1)
        sock.bind((LOOPBACK, port))
        sock.connect(dst)
        sock.setsockopt(*REUSE, 1)
        held.append(sock)
    return held


def udp_batch(connect: Callable[[], socket.socket], n: int) -> float:
    """Mean µs for connect + close, so the slice stays at the same occupancy."""
    start = time.perf_counter_ns()
    for _ in range(n):
        connect().close()
    return (time.perf_counter_ns() - start) / n / 1000


def bench_udp(rounds: int, n: int, shared: bool) -> dict:
    """50 % of the slice connected to the destination; with ``shared`` every port of
    the slice also has a socket to another destination (a busy egress host), so no
    exclusive bind can succeed and connect_udp takes its locked path."""
    held = occupy(0.5) + (occupy(1.0, OTHER_DST) if shared else [])
    variants = {"plain": udp_plain, "connect_udp": udp_ours, "cloudflare": Cloudflare().connect}
    result = paired_rounds(variants, rounds, lambda f: udp_batch(f, n), "plain")
    for sock in held:
        sock.close()
    return result


def bench_udp_sweep(rounds: int, n: int) -> dict:
    cloudflare = Cloudflare()
    variants = {
        "connect_udp": udp_ours,
        "cloudflare": cloudflare.connect,
        "dump_first": udp_dump_first,
    }
    sweep = {}
    for fraction in (0.0, 0.5, 0.9, 0.99):
        held = occupy(fraction)
        result = paired_rounds(variants, rounds, lambda f: udp_batch(f, n), "connect_udp")
        sweep[f"{round(fraction * 100)}%"] = {k: v["median_us"] for k, v in result.items()}
        for sock in held:
            sock.close()
    return sweep


# --- measurement -------------------------------------------------------------------------


def paired_rounds(
    variants: dict[str, Callable], rounds: int, measure: Callable[[Callable], float], base: str
) -> dict:
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for _ in range(2):  # warm-up
        for name in names:
            measure(variants[name])
    gc.disable()
    try:
        for index in range(rounds):
            order = names if index % 2 == 0 else names[::-1]
            for name in order:
                times[name].append(measure(variants[name]))
    finally:
        gc.enable()
    return {
        name: {
            "median_us": round(statistics.median(samples), 2),
            "min_us": round(min(samples), 2),
            "ratio": round(
                statistics.median(s / b for s, b in zip(samples, times[base], strict=True)), 3
            ),
            "ratio_of_min": round(min(samples) / min(times[base]), 3),
        }
        for name, samples in times.items()
    }


def inside(quick: bool) -> dict:
    egress.PORT_RANGE_SYSCTL.write_text("1024 65535\n")
    # Many short rounds: on a shared machine a burst of other work spoils a round
    # or two instead of a whole side of the comparison.
    rounds = 9 if quick else 31
    return {
        "tcp": bench_tcp(rounds, 300),
        "udp_50": bench_udp(rounds, 500, shared=False),
        "udp_50_shared": bench_udp(rounds, 500, shared=True),
        "udp_sweep": bench_udp_sweep(max(3, rounds // 3), 300),
    }


# --- outside: the namespace and the report -----------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def run_in_namespace(quick: bool) -> dict:
    ns = f"psTbench{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        argv = [sys.executable, "-m", "bench.bench_egress", "--inside"] + (
            ["--quick"] if quick else []
        )
        env = {**os.environ, "PYTHONPATH": str(REPO), "PORTSLICE_RUN_DIR": f"/run/portslice-{ns}"}
        done = subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(done.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["rm", "-rf", f"/run/portslice-{ns}"], check=False)


def report(results: dict) -> str:
    tcp, udp, sweep = results["tcp"], results["udp_50"], results["udp_sweep"]
    shared = results["udp_50_shared"]
    lines = [
        f"TCP  plain connect()        {tcp['plain']['median_us']:7.2f} µs/conn",
        f"TCP  connect_tcp            {tcp['connect_tcp']['median_us']:7.2f} µs/conn   "
        f"ratio {tcp['connect_tcp']['ratio']:.3f}  (target <= 1.15)",
        f"TCP  same syscalls, no checks {tcp['syscalls_only']['median_us']:5.2f} µs/conn   "
        f"ratio {tcp['syscalls_only']['ratio']:.3f}  (the floor)",
        f"UDP  plain connect()+close  {udp['plain']['median_us']:7.2f} µs/conn   (slice 50 % full)",
        f"UDP  connect_udp+close      {udp['connect_udp']['median_us']:7.2f} µs/conn   "
        f"ratio {udp['connect_udp']['ratio']:.3f}  (target <= 3)",
        f"UDP  Cloudflare connectx    {udp['cloudflare']['median_us']:7.2f} µs/conn   "
        f"ratio {udp['cloudflare']['ratio']:.3f}",
        "UDP  same, every port also used toward another destination (locked path):",
        f"UDP  plain connect()+close  {shared['plain']['median_us']:7.2f} µs/conn",
        f"UDP  connect_udp+close      {shared['connect_udp']['median_us']:7.2f} µs/conn   "
        f"ratio {shared['connect_udp']['ratio']:.3f}  (target <= 3)",
        f"UDP  Cloudflare connectx    {shared['cloudflare']['median_us']:7.2f} µs/conn   "
        f"ratio {shared['cloudflare']['ratio']:.3f}",
        "UDP  by occupancy, µs/conn   connect_udp  cloudflare  dump-first",
    ]
    for level, v in sweep.items():
        lines.append(
            f"     {level:>4}                 {v['connect_udp']:9.2f}  {v['cloudflare']:10.2f}"
            f"  {v['dump_first']:10.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--json", action="store_true", help="also print the raw figures")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        print(json.dumps(inside(args.quick)))
        return
    if os.geteuid() != 0:
        sys.exit("bench_egress needs root (network namespaces, sysctl)")
    results = run_in_namespace(args.quick)
    results["machine"] = machine()
    print(report(results))
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
