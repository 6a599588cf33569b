"""Per-connection cost of agent.egress against the kernel's plain connect(), same run.

Run as root: ``.venv/bin/python -m bench.bench_egress`` (``--quick`` for fewer rounds,
``--json`` for the raw figures, ``--sweep`` for the UDP occupancy sweep, ``--clock cpu``
to time rounds by the thread's CPU time, which leaves out what other processes of a
shared machine take). It creates a network namespace ``psTbench…``, measures inside it
over loopback, and removes it.

Each path is measured two ways: **connect alone** (``socket`` to a connected socket;
the close is done untimed, connections held 8 at a time) and **connect + close**
(the connection's whole life, the measure the targets apply to). Each variant also
has a floor: the same syscalls with no logic, the kernel's share of its cost.
Every round measures every variant once, back to back, in an order that alternates
between rounds, and the ratio of each variant to plain ``connect()`` is taken *per
round*: noise from other work on a shared machine hits both sides of a round alike.
The report gives the median ratio and its spread (25th-75th percentile of the
per-round ratios). Rounds are short (a few hundred µs) and many.

* TCP: ``connect_tcp`` from a 10,000-port slice vs ``socket(); connect()``, 8
  listeners; also the design it replaced (the port read back with ``getsockname``
  after every connect) and the bare syscalls (the floor). Target: ≤ 1.15×.
* UDP, one destination, a 256-port slice already 50 % connected to it:
  ``connect_udp`` vs ``socket(); connect()``, next to Cloudflare's connectx (2022
  blog code: scan ports from a random start with one sock_diag exact lookup each,
  then bind / SO_REUSEADDR=0 / lookup / connect), re-implemented here on the same
  sock_diag primitives. Target: ≤ 2×.
* UDP on a busy host: the same, and every port of the slice also carries a socket
  to another destination, so no exclusive bind can succeed and every connect takes
  the locked path. Target: ≤ 3×.
* Syscalls per connection (connect + close), counted with ``strace -f -c`` over two
  short runs of each variant (the difference, so set-up is not counted); skipped
  with a note when strace is missing.
"""

from __future__ import annotations

import argparse
import errno
import functools
import gc
import json
import os
import platform
import random
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from agent import egress
from agent.sockdiag import TCP_ESTABLISHED, SockDiag

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
TCP_PORTS = range(8000, 8008)
TCP_SLICE = (20000, 29999)
TCP_RANGE = egress._plan(LOOPBACK, *TCP_SLICE)[1]
UDP_DST = ("127.0.0.2", 53)
UDP_SLICE = (40000, 40255)
OTHER_DST = ("127.0.0.3", 53)
LINGER_ABORT = struct.pack("ii", 1, 0)
REUSE = (socket.SOL_SOCKET, socket.SO_REUSEADDR)

Connect = Callable[[int], socket.socket]


# --- TCP ---------------------------------------------------------------------------------


def tcp_plain(i: int) -> socket.socket:
    sock = socket.socket()
    sock.connect((LOOPBACK, TCP_PORTS[i & 7]))
    return sock


def tcp_ours(i: int) -> socket.socket:
    return egress.connect_tcp(
        (LOOPBACK, TCP_PORTS[i & 7]), source_ip=LOOPBACK, port_range=TCP_SLICE
    )


def tcp_read_back(i: int) -> socket.socket:
    """The other design: the same, then the port read back and checked after connect."""
    sock = tcp_ours(i)
    port = sock.getsockname()[1]
    if not TCP_SLICE[0] <= port <= TCP_SLICE[1]:
        raise AssertionError(f"port {port} outside the slice")
    return sock


def tcp_floor(i: int) -> socket.socket:
    """The syscalls connect_tcp makes, without its checks: the kernel's share of the cost."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_IP, egress.IP_BIND_ADDRESS_NO_PORT, 1)
    sock.setsockopt(socket.SOL_IP, egress.IP_LOCAL_PORT_RANGE, TCP_RANGE)
    sock.bind((LOOPBACK, 0))
    sock.connect((LOOPBACK, TCP_PORTS[i & 7]))
    return sock


TCP_VARIANTS: dict[str, Connect] = {
    "plain": tcp_plain,
    "connect_tcp": tcp_ours,
    "read_back": tcp_read_back,
    "syscalls_only": tcp_floor,
}


@contextmanager
def tcp_listeners() -> Iterator[list[socket.socket]]:
    listeners = []
    for port in TCP_PORTS:
        listener = socket.socket()
        listener.setsockopt(*REUSE, 1)
        listener.bind((LOOPBACK, port))
        listener.listen(4096)
        listener.setblocking(False)
        listeners.append(listener)
    try:
        yield listeners
    finally:
        for listener in listeners:
            listener.close()


def drain(listeners: list[socket.socket]) -> None:
    for listener in listeners:
        while True:
            try:
                listener.accept()[0].close()
            except BlockingIOError:
                break


# --- UDP ---------------------------------------------------------------------------------


def udp_plain(_: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(UDP_DST)
    return sock


def udp_ours(_: int) -> socket.socket:
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

    def connect(self, _: int = 0) -> socket.socket:
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


@functools.cache
def dump_first_target() -> egress._UdpTarget:
    return egress._UdpTarget(LOOPBACK, UDP_DST)  # not connect_udp's own: its memory stays


def udp_dump_first(_: int = 0) -> socket.socket:
    """One filtered dump, then a random free port, each claimed as connect_udp does."""
    diag, _locks = egress._thread_state()
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
    target = dump_first_target()
    for port in free[start:] + free[:start]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if egress._claim_shared(target, sock, port) == egress._CLAIMED:
            return sock
        sock.close()
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
        held.append(sock)
    return held


@contextmanager
def udp_scene(busy: bool) -> Iterator[list[int]]:
    """50 % of the slice connected to the destination; with ``busy`` every port of the
    slice also has a socket to another destination (a busy egress host). Yields the
    ports not connected to the destination."""
    time.sleep(egress.UDP_MEMORY)  # the ports connect_udp remembers from the last scene
    toward_dst = occupy(0.5)
    held = toward_dst + (occupy(1.0, OTHER_DST) if busy else [])
    taken = {sock.getsockname()[1] for sock in toward_dst}
    try:
        yield [port for port in range(UDP_SLICE[0], UDP_SLICE[1] + 1) if port not in taken]
    finally:
        for sock in held:
            sock.close()


class UdpFloor:
    """The syscalls connect_udp makes on its usual path, with a free port known in
    advance and no logic: the kernel's share of the cost (exclusive bind on a quiet
    port; on a busy host lock, bind, lookup, connect, unlock)."""

    def __init__(self, free: list[int], busy: bool) -> None:
        self.free, self.busy = free, busy
        target = egress._UdpTarget(LOOPBACK, UDP_DST)  # not connect_udp's own
        self.query, self.locks, self.base = target.query, target.locks, target.lock_base

    def connect(self, _: int = 0) -> socket.socket:
        port = random.choice(self.free)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if self.busy:
                self.locks.try_lock(self.base | port)
                sock.setsockopt(*REUSE, 1)
                sock.bind((LOOPBACK, port))
                sock.setsockopt(*REUSE, 0)
                self.query.held(port)
                sock.connect(UDP_DST)
                sock.setsockopt(*REUSE, 1)
                self.locks.unlock(self.base | port)
            else:
                sock.bind((LOOPBACK, port))
                sock.connect(UDP_DST)
                sock.setsockopt(*REUSE, 1)
        except OSError:  # connect alone: one of the few sockets still held has the port
            sock.close()
            return self.connect()
        return sock


def udp_variants(free: list[int], busy: bool) -> dict[str, Connect]:
    return {
        "plain": udp_plain,
        "connect_udp": udp_ours,
        "cloudflare": Cloudflare().connect,
        "syscalls_only": UdpFloor(free, busy).connect,
    }


# --- measurement -------------------------------------------------------------------------


#: The clock rounds are timed with: wall time, or with ``--clock cpu`` this thread's
#: CPU time, which leaves out the time other processes of a shared machine take.
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.thread_time_ns}
clock = CLOCKS["wall"]
#: Connect alone: connections held at once before an untimed close (UDP: the slice's
#: occupancy stays within a few ports of where the scene put it).
HELD = 8


def timed_connects(connect: Connect, n: int, with_close: bool) -> float:
    """Mean µs per connection over ``n`` (a multiple of HELD)."""
    total = 0
    if with_close:
        start = clock()
        for i in range(n):
            connect(i).close()
        return (clock() - start) / n / 1000
    held: list[socket.socket] = []
    for batch in range(0, n, HELD):
        start = clock()
        for i in range(batch, batch + HELD):
            held.append(connect(i))
        total += clock() - start
        close_abort(held)
    return total / n / 1000


def close_abort(socks: list[socket.socket]) -> None:
    for sock in socks:
        if sock.type == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
        sock.close()
    socks.clear()


def paired_rounds(
    variants: dict[str, Connect],
    rounds: int,
    n: int,
    with_close: bool,
    after: Callable[[], None] = lambda: None,
) -> dict:
    def measure(connect: Connect) -> float:
        elapsed = timed_connects(connect, n, with_close)
        after()
        return elapsed

    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(3):  # warm-up: caches, the UDP memory, the netns range
        for name in names:
            measure(variants[name])
    gc.disable()
    try:
        for index in range(rounds):
            for name in names if index % 2 == 0 else names[::-1]:
                times[name].append(measure(variants[name]))
    finally:
        gc.enable()
    return {name: summary(samples, times["plain"]) for name, samples in times.items()}


def summary(samples: list[float], base: list[float]) -> dict:
    ratios = [s / b for s, b in zip(samples, base, strict=True)]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return {
        "median_us": round(statistics.median(samples), 2),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_p25": round(q1, 3),
        "ratio_p75": round(q3, 3),
        "ratio_of_min": round(min(samples) / min(base), 3),
    }


def bench_tcp(rounds: int, n: int) -> dict:
    with tcp_listeners() as listeners:
        return {
            way: paired_rounds(TCP_VARIANTS, rounds, n, with_close, lambda: drain(listeners))
            for way, with_close in (("connect", False), ("connect_close", True))
        }


def bench_udp(rounds: int, n: int, busy: bool) -> dict:
    with udp_scene(busy) as free:
        variants = udp_variants(free, busy)
        return {
            way: paired_rounds(variants, rounds, n, with_close)
            for way, with_close in (("connect", False), ("connect_close", True))
        }


def bench_udp_sweep(rounds: int, n: int) -> dict:
    variants: dict[str, Connect] = {
        "plain": udp_plain,
        "connect_udp": udp_ours,
        "cloudflare": Cloudflare().connect,
        "dump_first": udp_dump_first,
    }
    sweep = {}
    for fraction in (0.0, 0.5, 0.9, 0.99):
        time.sleep(egress.UDP_MEMORY)
        held = occupy(fraction)
        result = paired_rounds(variants, rounds, n, with_close=True)
        sweep[f"{round(fraction * 100)}%"] = {k: v["median_us"] for k, v in result.items()}
        close_abort(held)
    return sweep


def inside(quick: bool, sweep: bool) -> dict:
    egress.PORT_RANGE_SYSCTL.write_text("1024 65535\n")
    # Many short rounds: on a shared machine a burst of other work spoils a round or
    # two instead of a whole side of the comparison.
    rounds = 41 if quick else 201
    results = {
        "tcp": bench_tcp(rounds, 24),
        "udp_50": bench_udp(rounds, 40, busy=False),
        "udp_busy": bench_udp(rounds, 40, busy=True),
    }
    if sweep:
        results["udp_sweep"] = bench_udp_sweep(max(5, rounds // 8), 40)
    return results


# --- syscalls per connection -------------------------------------------------------------

SCENES = {"tcp": None, "udp_50": False, "udp_busy": True}
UDP_NAMES = ("plain", "connect_udp", "cloudflare", "syscalls_only")


def count_run(scene: str, variant: str, n: int) -> None:
    """``n`` connect + close of one variant in one scene: what strace counts."""
    egress.PORT_RANGE_SYSCTL.write_text("1024 65535\n")
    if scene == "tcp":
        with tcp_listeners():  # not drained: accept() and its close are not ours to count
            timed_connects(TCP_VARIANTS[variant], n, with_close=True)
        return
    busy = bool(SCENES[scene])
    with udp_scene(busy) as free:
        timed_connects(udp_variants(free, busy)[variant], n, with_close=True)


def strace_total(ns: str, env: dict[str, str], scene: str, variant: str, n: int) -> int:
    with tempfile.NamedTemporaryFile(suffix=".strace") as out:
        argv = [sys.executable, "-m", "bench.bench_egress", "--count", scene, variant, str(n)]
        subprocess.run(
            ["ip", "netns", "exec", ns, "strace", "-f", "-c", "-o", out.name, *argv],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
        )
        text = Path(out.name).read_text()
    # The summary's last line: "100.00  seconds  usecs/call  calls  [errors]  total".
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[-1] == "total":
            return int(fields[3])
    raise RuntimeError(f"cannot read the strace summary:\n{text}")


def syscalls_per_connection(ns: str, env: dict[str, str], quick: bool) -> dict:
    """Syscalls per connect + close: two runs of each variant, the difference per connection."""
    small, large = (200, 1200) if quick else (500, 3500)
    counts: dict[str, dict[str, float]] = {}
    for scene in SCENES:
        names = TCP_VARIANTS if scene == "tcp" else UDP_NAMES
        counts[scene] = {
            name: round(
                (
                    strace_total(ns, env, scene, name, large)
                    - strace_total(ns, env, scene, name, small)
                )
                / (large - small),
                1,
            )
            for name in names
        }
    return counts


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
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def run_in_namespace(args: argparse.Namespace) -> dict:
    ns = f"psTbench{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    run_dir = f"/run/portslice-{ns}"
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        flags = ["--quick"] * args.quick + ["--sweep"] * args.sweep + ["--clock", args.clock]
        argv = [sys.executable, "-m", "bench.bench_egress", "--inside", *flags]
        env = {**os.environ, "PYTHONPATH": str(REPO), "PORTSLICE_RUN_DIR": run_dir}
        done = subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        results = json.loads(done.stdout)
        if shutil.which("strace") is None:
            results["syscalls"] = None  # the report says how to get the column
        else:
            results["syscalls"] = syscalls_per_connection(ns, env, args.quick)
        return results
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["rm", "-rf", run_dir], check=False)


ROWS = [
    ("tcp", "plain", "TCP plain socket(); connect()", None),
    ("tcp", "connect_tcp", "TCP connect_tcp", 1.15),
    ("tcp", "read_back", "TCP connect_tcp + getsockname check", None),
    ("tcp", "syscalls_only", "TCP bare syscalls (floor)", None),
    ("udp_50", "plain", "UDP plain, slice 50 % to dst", None),
    ("udp_50", "connect_udp", "UDP connect_udp, 50 %", 2.0),
    ("udp_50", "cloudflare", "UDP Cloudflare connectx, 50 %", None),
    ("udp_50", "syscalls_only", "UDP bare syscalls, 50 % (floor)", None),
    ("udp_busy", "plain", "UDP plain, busy host", None),
    ("udp_busy", "connect_udp", "UDP connect_udp, busy host", 3.0),
    ("udp_busy", "cloudflare", "UDP Cloudflare connectx, busy", None),
    ("udp_busy", "syscalls_only", "UDP bare syscalls, busy (floor)", None),
]


def cell(figures: dict) -> str:
    return (
        f"{figures['median_us']:6.2f} µs {figures['ratio']:5.2f}× "
        f"({figures['ratio_p25']:.2f}-{figures['ratio_p75']:.2f})"
    )


def report(results: dict) -> str:
    syscalls = results.get("syscalls")
    lines = [
        f"{'':38} {'connect alone':29} {'connect + close':29} syscalls  target",
    ]
    for scene, name, label, target in ROWS:
        count = "-" if syscalls is None else f"{syscalls[scene][name]:.1f}"
        lines.append(
            f"{label:38} {cell(results[scene]['connect'][name]):29} "
            f"{cell(results[scene]['connect_close'][name]):29} {count:>8}  "
            + (f"<= {target}" if target else "")
        )
    lines.append(
        f"ratios: median of per-round ratios to plain (25th-75th percentile), "
        f"{results['clock']} clock; load average {results['machine']['load_average']}"
    )
    if syscalls is None:
        lines.append("syscalls: strace not installed (apt-get install strace) - column skipped")
    else:
        lines.append("syscalls: per connect + close, strace -f -c over two runs, the difference")
    for level, v in results.get("udp_sweep", {}).items():
        lines.append(
            f"UDP {level:>4} full µs/conn: plain {v['plain']:.1f}  connect_udp "
            f"{v['connect_udp']:.1f}  cloudflare {v['cloudflare']:.1f}  "
            f"dump-first {v['dump_first']:.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--sweep", action="store_true", help="also the UDP occupancy sweep")
    parser.add_argument("--json", action="store_true", help="also print the raw figures")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="time rounds by wall clock (default) or by this thread's CPU time",
    )
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.inside:
        print(json.dumps(inside(args.quick, args.sweep)))
        return
    if args.count:
        scene, variant, n = args.count
        count_run(scene, variant, int(n))
        return
    if os.geteuid() != 0:
        sys.exit("bench_egress needs root (network namespaces, sysctl)")
    results = run_in_namespace(args)
    results["machine"] = machine()
    results["clock"] = args.clock
    print(report(results))
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
