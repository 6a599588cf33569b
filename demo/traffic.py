"""Real connections through a demo agent's slices, so its usage reports are real.

``python -m demo.traffic run --state DIR --profile hot --origin 203.0.113.1 [--port 80]``
holds TCP connections from the agent's active slices (read from its state
store, as any program using the egress library would) to the origin, topping
up or closing some every second so the number held follows the profile:

* ``hot``: 90 % of the ports held, all the time (the machine keeps growing to
  its pool's ceiling);
* ``steady``: 50 % (neither grows nor gives back);
* ``burst``: 90 % for ``--burst-seconds``, then 5 % (it grows, then runs cold
  and rebalance leaves a draft to take a slice back).

``python -m demo.traffic plain --origin 203.0.113.1`` is unmodified software:
plain ``socket.create_connection`` with no source address and no portslice
code. It holds ``--hold`` connections, replacing the oldest each second; in
the agent's exact-range mode the kernel takes their ports from the machine's
range and the default route's ``src`` makes them leave from the shared IP.

``python -m demo.traffic listen --address 0.0.0.0 --port 80`` is the origin: a
listener whose backlog holds the connections (never accepted, nothing sent).
Without root the demo runs it on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
from pathlib import Path

from agent import egress
from agent.bundle import Bundle

PROFILES = {"hot": (0.9, 0.9), "steady": (0.5, 0.5), "burst": (0.9, 0.05)}
Key = tuple[str, int, int]


def target(profile: str, ports: int, elapsed: float, burst_seconds: float) -> int:
    """Connections to hold on a slice of ``ports`` ports this second."""
    early, late = PROFILES[profile]
    share = early if elapsed < burst_seconds else late
    return int(share * ports)


def active_slices(state_dir: Path) -> list[Key]:
    try:
        bundle: Bundle | None = egress.Egress.load(state_dir).bundle
    except Exception:  # noqa: BLE001 - no bundle yet, or one being replaced: try again
        return []
    if bundle is None:
        return []
    return [(s.ip, s.lo, s.hi) for s in bundle.slices if s.state == "active"]


def adjust(
    held: dict[Key, list[socket.socket]], key: Key, wanted: int, origin: tuple[str, int]
) -> None:
    sockets = held.setdefault(key, [])
    while len(sockets) > wanted:
        sockets.pop().close()
    ip, lo, hi = key
    while len(sockets) < wanted:
        try:
            sockets.append(egress.connect_tcp(origin, source_ip=ip, port_range=(lo, hi), timeout=2))
        except (OSError, egress.RangeNotEnforced) as error:
            # A slice full, the origin unreachable for a moment, or a bundle stored
            # a moment before the agent widened the namespace's port range: next tick.
            print(f"traffic: {ip}:{lo}-{hi}: {error}", file=sys.stderr, flush=True)
            return


def run(state_dir: Path, profile: str, origin: tuple[str, int], burst_seconds: float) -> None:
    started = time.monotonic()
    held: dict[Key, list[socket.socket]] = {}
    while True:
        slices = active_slices(state_dir)
        for gone in set(held) - set(slices):  # a slice given back: let go of it
            for sock in held.pop(gone):
                sock.close()
        elapsed = time.monotonic() - started
        for key in slices:
            adjust(held, key, target(profile, key[2] - key[1] + 1, elapsed, burst_seconds), origin)
        time.sleep(1)


def plain(origin: tuple[str, int], hold: int) -> None:
    held: list[socket.socket] = []
    while True:
        if len(held) >= hold:
            held.pop(0).close()
        while len(held) < hold:
            try:
                held.append(socket.create_connection(origin, timeout=2))
            except OSError as error:  # no bundle applied yet, or the origin away: next tick
                print(f"plain: {error}", file=sys.stderr, flush=True)
                break
        time.sleep(1)


def listen(address: str, port: int) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(4096)
    print("listening", flush=True)
    signal.pause()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo.traffic")
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run")
    runner.add_argument("--state", type=Path, required=True)
    runner.add_argument("--profile", choices=sorted(PROFILES), required=True)
    runner.add_argument("--origin", required=True)
    runner.add_argument("--port", type=int, default=80)
    runner.add_argument("--burst-seconds", type=float, default=150.0)
    unmodified = commands.add_parser("plain")
    unmodified.add_argument("--origin", required=True)
    unmodified.add_argument("--port", type=int, default=80)
    unmodified.add_argument("--hold", type=int, default=64)
    listener = commands.add_parser("listen")
    listener.add_argument("--address", default="0.0.0.0")
    listener.add_argument("--port", type=int, default=80)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.command == "listen":
        listen(args.address, args.port)
    elif args.command == "plain":
        plain((args.origin, args.port), args.hold)
    else:
        run(args.state, args.profile, (args.origin, args.port), args.burst_seconds)


if __name__ == "__main__":
    main()
