"""Work the e2e test runs inside a host namespace: ``python -m tests.e2e.hostwork CMD JSON``.

Each command prints one JSON line. Flows go to the origin's echo server, which
answers with the source address and port it saw: a flow is *misrouted* when
the answer does not come back to the socket that sent it, or names another
address or port.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from agent.egress import Egress
from agent.fdpass import request_socket

ORIGIN = ("203.0.113.1", 7)


def _exchange(sock: socket.socket, proto: str, payload: bytes = b"ping") -> list[str]:
    sock.settimeout(5.0)
    if proto == "tcp":
        sock.sendall(payload + b"\n")
        return sock.makefile("rb").readline().decode().split()
    sock.send(payload)
    return sock.recv(2048).decode().split()


def _opener(args: dict[str, Any]) -> Callable[[str], socket.socket]:
    if args.get("via") == "socket":
        return lambda proto: request_socket(args["socket_path"], "203.0.113.1:7", proto)
    egress = Egress.load(args["state_dir"])
    return lambda proto: egress.connect(ORIGIN, proto, timeout=5.0)  # type: ignore[arg-type]


def flows(args: dict[str, Any]) -> dict[str, Any]:
    """``tcp`` + ``udp`` flows; each must be answered with its own source address and port."""
    open_socket = _opener(args)
    bundle = Egress.load(args["state_dir"]).bundle
    owned = [] if bundle is None else [(s.ip, s.lo, s.hi) for s in bundle.slices if s.active]
    report: dict[str, Any] = {"ok": 0, "misrouted": 0, "outside": 0, "errors": [], "ports": []}
    started = time.monotonic()
    for proto in ["tcp"] * args.get("tcp", 0) + ["udp"] * args.get("udp", 0):
        try:
            with open_socket(proto) as sock:
                ip, port = sock.getsockname()[:2]
                answer = _exchange(sock, proto)
        except OSError as error:
            report["errors"].append(f"{proto}: {type(error).__name__}: {error}")
            continue
        report["ports"].append([ip, port])
        if answer[:2] != [ip, str(port)]:
            report["misrouted"] += 1
        elif not any(i == ip and lo <= port <= hi for i, lo, hi in owned):
            report["outside"] += 1
        else:
            report["ok"] += 1
    report["seconds"] = time.monotonic() - started
    return report


def rogue(args: dict[str, Any]) -> dict[str, Any]:
    """Send from a hand-bound (ip, port) — another host's — and say what the kernel did."""
    kind = socket.SOCK_STREAM if args["proto"] == "tcp" else socket.SOCK_DGRAM
    started = time.monotonic()
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args["ip"], args["port"]))
        sock.settimeout(3.0)
        try:
            if kind == socket.SOCK_STREAM:
                sock.connect(ORIGIN)
            else:
                sock.sendto(b"rogue", ORIGIN)
            outcome = "sent"
        except OSError as error:
            outcome = f"errno {error.errno}" if error.errno else "timeout"
    return {"outcome": outcome, "seconds": time.monotonic() - started}


def big(args: dict[str, Any]) -> dict[str, Any]:
    """One TCP flow carrying ``size`` bytes in one line (full-size segments: PMTU discovery)."""
    with Egress.load(args["state_dir"]).connect(ORIGIN, "tcp", timeout=10.0) as sock:
        ip, port = sock.getsockname()[:2]
        answer = _exchange(sock, "tcp", b"x" * args["size"])
    return {"ip": ip, "port": port, "answer": answer}


def no_slice(args: dict[str, Any]) -> dict[str, Any]:
    """What a new connect says on a host whose slices are all draining (or gone)."""
    try:
        Egress.load(args["state_dir"]).connect(ORIGIN, "tcp", timeout=5.0).close()
    except Exception as error:  # noqa: BLE001 - the type is what the test reads
        return {"refused": type(error).__name__, "message": str(error)}
    return {"refused": ""}


COMMANDS = {"flows": flows, "rogue": rogue, "big": big, "no_slice": no_slice}

if __name__ == "__main__":
    print(json.dumps(COMMANDS[sys.argv[1]](json.loads(sys.argv[2]))))
