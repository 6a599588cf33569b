"""Exact-range mode: unmodified programs egress from their slice, on a real kernel.

The host namespace plays a machine whose workload is curl and plain sockets (no
portslice library): the agent's enforcement sets the namespace's port range to
the machine's active aligned range and the default route's ``src`` to the shared
IP; the origin namespace runs an HTTP server, a TCP echo server and a UDP echo
server that log the source address and port of everything they see. For plan
changes the allocator plans the site (the host is machine ``c``) and the host
gets c's slices, as its agent would in a bundle.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from agent.bundle import Bundle, BundleSlice
from agent.exact import NotOneRange, exact_range
from allocator import EgressIP, Machine, PoolPolicy, Slice, plan
from tests.agent import netlab
from tests.agent.netlab import PEER_V4, SHARED_V4, SHARED_V6, Netns
from tests.support import need, need_root

NEIGHBOUR_V4 = "198.51.100.8"  # another shared address of the datacenter
SHARED = ("198.51.100.0/28", "2001:db8::/125")
HTTP_PORT, ECHO_PORT, UDP_PORT = 8080, 9002, 9003
TRIES = 200
OLD = (40960, 41983)  # a 1,024-port range: 200 bind-before-connects fit in it
WIDER = (40960, 43007)  # the same range widened into the slot above it

# The origin: HTTP, TCP echo and UDP echo; each logs "<proto> <source ip> <source port>".
ORIGIN = """
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
log = open(sys.argv[1], "a", buffering=1)
lock = threading.Lock()
def note(proto, peer):
    with lock:
        log.write(f"{proto} {peer[0]} {peer[1]}\\n")
class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        note("http", self.client_address)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), Hello)
threading.Thread(target=http.serve_forever, daemon=True).start()
def echo(conn, peer):
    note("tcp", peer)
    with conn:
        while data := conn.recv(1024):
            conn.sendall(data)
tcp = socket.create_server(("0.0.0.0", int(sys.argv[3])), backlog=512)
def accept():
    while True:
        conn, peer = tcp.accept()
        threading.Thread(target=echo, args=(conn, peer), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", int(sys.argv[4])))
print("ready", flush=True)
while True:
    data, peer = udp.recvfrom(2048)
    note("udp", peer)
    udp.sendto(data, peer)
"""

# Plain sockets, as any program would use them: no portslice import, no port chosen.
PLAIN_CLIENTS = """
import json, socket, sys
proto, source, host, port, tries = sys.argv[1:6]
results = []
for _ in range(int(tries)):
    try:
        if proto == "tcp":
            with socket.create_connection((host, int(port)), timeout=5,
                                          source_address=(source, 0)) as s:
                s.sendall(b"hi")
                assert s.recv(2) == b"hi"
                results.append(list(s.getsockname()[:2]))
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.bind((source, 0))
                s.sendto(b"hi", (host, int(port)))
                data, _ = s.recvfrom(16)
                assert data == b"hi"
                results.append(list(s.getsockname()[:2]))
    except OSError as error:
        results.append(f"error {error}")
print(json.dumps(results))
"""

# One TCP connection held open; each line on stdin is echoed through it.
LONG_LIVED = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print("port", s.getsockname()[1], flush=True)
for line in sys.stdin:
    try:
        s.sendall(b"ping")
        ok = s.recv(4) == b"ping"
        print("ok" if ok else "closed", flush=True)
    except OSError as error:
        print("error", error.errno, flush=True)
"""

ENFORCE = netlab.bundle_script_prelude() + (
    "from agent.enforce import enforce\n"
    "from agent.egress import netns_port_range\n"
    "result = enforce(bundle_from(sys.argv[1]), **json.loads(sys.argv[2]))\n"
    "print(json.dumps({**result.as_dict(), 'ok': result.ok, 'range': netns_port_range()}))\n"
)


def _slice(ip: str, lo: int, hi: int, state: str = "active") -> BundleSlice:
    return BundleSlice(ip, lo, hi, state, "fra1/warp/DE", "warp", "DE")


def _aligned(lo: int, hi: int, state: str = "active", *, slot: int = 1024) -> list[BundleSlice]:
    """An aligned range as the allocator hands it out: slot-sized slices, on both IPs."""
    return [
        _slice(ip, start, start + slot - 1, state)
        for ip in (SHARED_V4, SHARED_V6)
        for start in range(lo, hi + 1, slot)
    ]


def _bundle(slices: list[BundleSlice], serial: int = 1) -> Bundle:
    return Bundle("edge-test", "fra1", serial, 1, 0, 0, tuple(slices), "kid", "token", SHARED)


def _enforce(ns: Netns, slices: list[BundleSlice], serial: int = 1, **flags: object) -> dict:
    document = json.loads(netlab.bundle_json(serial=serial, shared=list(SHARED)))
    document["slices"] = [
        {f: getattr(s, f) for f in ("ip", "lo", "hi", "state", "pool", "purpose", "country")}
        for s in slices
    ]
    options = {
        "manage_port_range": True,
        "manage_nftables": True,
        "exact": True,
        "route_source": SHARED_V4,
        **flags,
    }
    return json.loads(ns.python(ENFORCE, json.dumps(document), json.dumps(options)).stdout)


def _origin_log(log: Path) -> list[tuple[str, str, int]]:
    return netlab.peer_log(log)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Netns, Path]]:
    """A host namespace whose only way to the origin is its default route, and the origin."""
    need_root()
    need(netlab.have_command("nft"), "needs the nft command (apt-get install nftables)")
    need(netlab.have_command("curl"), "needs curl (make sysdeps installs it)")
    log = tmp_path / "origin.log"
    with netlab.netns_pair() as (host, peer):
        host.run("ip", "route", "del", "203.0.113.0/24")
        host.run("ip", "route", "add", "default", "via", "192.0.2.1")
        process = peer.spawn(
            netlab.PYTHON, "-c", ORIGIN, str(log), *map(str, (HTTP_PORT, ECHO_PORT, UDP_PORT))
        )
        netlab.wait_for(
            lambda: _listening(peer) or process.poll() is not None, what="origin servers"
        )
        yield host, log


def _listening(peer: Netns) -> bool:
    out = peer.run("ss", "-Hltn", check=False).stdout
    return f":{HTTP_PORT} " in out and f":{ECHO_PORT} " in out


def _curl(host: Netns, tries: int) -> list[str]:
    """``tries`` runs of curl binding nothing: "<local ip> <local port> <status>" each."""
    script = (
        f"for i in $(seq {tries}); do curl -s -o /dev/null --max-time 5 "
        f"-w '%{{local_ip}} %{{local_port}} %{{http_code}}\\n' "
        f"http://{PEER_V4}:{HTTP_PORT}/ || echo failed; done"
    )
    return host.run("sh", "-c", script, timeout=300).stdout.splitlines()


def _plain(host: Netns, proto: str, tries: int, source: str = SHARED_V4) -> list:
    port = ECHO_PORT if proto == "tcp" else UDP_PORT
    out = host.python(PLAIN_CLIENTS, proto, source, PEER_V4, str(port), str(tries), timeout=300)
    return json.loads(out.stdout)


class Held:
    """The long-lived connection's client, driven line by line over pipes."""

    def __init__(self, host: Netns) -> None:
        self.process = subprocess.Popen(
            host.command(netlab.PYTHON, "-c", LONG_LIVED, PEER_V4, str(ECHO_PORT)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        host.processes.append(self.process)  # stopped when the lab is torn down

    def readline(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def ask(self) -> str:
        """Send a ping through the connection: "ok", or how it failed (within 5 s)."""
        assert self.process.stdin is not None
        self.process.stdin.write("ping\n")
        self.process.stdin.flush()
        return self.readline()


def _inside(port: int, span: tuple[int, int]) -> bool:
    return span[0] <= port <= span[1]


# --- the range, without a kernel ----------------------------------------------------------------


def test_it_merges_adjacent_slots_into_one_range_and_leaves_draining_out() -> None:
    bundle = _bundle([*_aligned(*WIDER), *_aligned(51200, 52223, "draining")])
    assert exact_range(bundle) == WIDER


@pytest.mark.parametrize(
    ("slices", "reason"),
    [
        ([], "holds no active slice"),
        (
            [_slice(SHARED_V4, 1024, 1087), _slice(NEIGHBOUR_V4, 1088, 1215)],
            "198.51.100.7 holds 1024-1087 but 198.51.100.8 holds 1088-1215: not the same range",
        ),
        (
            [_slice(SHARED_V4, 1024, 2047), _slice(SHARED_V4, 4096, 5119)],
            "198.51.100.7 holds 1024-2047, 4096-5119, not one range",
        ),
    ],
)
def test_it_says_why_slices_cannot_be_one_range(slices: list[BundleSlice], reason: str) -> None:
    with pytest.raises(NotOneRange, match=reason):
        exact_range(_bundle(slices))


# --- on a real kernel ---------------------------------------------------------------------------


def test_unmodified_curl_and_plain_sockets_egress_from_the_slice(lab) -> None:
    host, log = lab
    result = _enforce(host, _aligned(*OLD))
    assert result["ok"], result
    assert tuple(result["range"]) == OLD
    assert "default route src set to 198.51.100.7" in result["port_range"]["detail"]

    curl = _curl(host, TRIES)
    tcp = _plain(host, "tcp", TRIES)
    udp = _plain(host, "udp", TRIES)

    assert len(curl) == TRIES and all(line.endswith(" 200") for line in curl), curl[:5]
    curl_ports = [int(line.split()[1]) for line in curl]
    assert {line.split()[0] for line in curl} == {SHARED_V4}, "curl bound nothing: route src"
    for name, results in (("tcp", tcp), ("udp", udp)):
        failures = [r for r in results if isinstance(r, str)]
        assert not failures, f"{name}: {failures[:3]}"
        assert {ip for ip, _ in results} == {SHARED_V4}
    for port in curl_ports + [port for _, port in tcp + udp]:
        assert _inside(port, OLD), f"port {port} outside the slice {OLD}"

    seen = _origin_log(log)
    for proto, sent in (
        ("http", curl_ports),
        ("tcp", [p for _, p in tcp]),
        ("udp", [p for _, p in udp]),
    ):
        got = [(ip, port) for kind, ip, port in seen if kind == proto]
        assert sorted(got) == sorted((SHARED_V4, port) for port in sent), f"origin missed {proto}"


class Site:
    """The allocator's side: machines a, b, c (and later d) on an aligned pool of the
    two shared IPs, planned step by step; ``c`` is the host under test."""

    POLICY = {"fra1/warp/DE": PoolPolicy(slice_size=1024, max_slices_per_machine=3, aligned=True)}
    IPS = (EgressIP(SHARED_V4, "fra1/warp/DE"), EgressIP(SHARED_V6, "fra1/warp/DE"))

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 5, 12, 0)
        self.machines = [Machine(name, frozenset({"fra1/warp/DE"})) for name in "abc"]
        self.slices: tuple[Slice, ...] = ()
        self.touched: frozenset[str] = frozenset()

    def replan(self, *, hot: str = "", later: timedelta = timedelta(0)) -> list[BundleSlice]:
        """Plan again; return c's bundle slices (what its agent would be sent)."""
        self.now += later
        result = plan(
            ips=self.IPS,
            machines=self.machines,
            previous=self.slices,
            policies=self.POLICY,
            now=self.now,
            usage={(hot, "fra1/warp/DE"): 0.95} if hot else None,
        )
        self.slices, self.touched = result.slices, result.diff.machines_touched()
        return [_slice(s.ip, s.lo, s.hi, s.state) for s in self.slices if s.machine == "c"]


def test_a_long_lived_connection_survives_a_widening_and_a_move(lab) -> None:
    host, log = lab
    site = Site()
    assert _enforce(host, site.replan())["ok"]
    first = (3072, 4095)  # a, b and c hold one slot each from the bottom
    held = Held(host)
    held_port = int(held.readline().split()[1])
    assert _inside(held_port, first)
    assert held.ask() == "ok"

    widened = _enforce(host, site.replan(hot="c"), serial=2)
    assert site.touched == {"c"}, "growing c touched another host"
    assert widened["ok"] and tuple(widened["range"]) == (3072, 5119), widened
    assert held.ask() == "ok", "the widening broke an open connection"
    assert all(_inside(port, (3072, 5119)) for _, port in _plain(host, "tcp", 40))

    site.machines.append(Machine("d", frozenset({"fra1/warp/DE"})))
    site.replan()  # d takes the slot above c: no room left beside c
    assert site.touched == {"d"}
    moved = _enforce(host, site.replan(hot="c"), serial=3)
    assert site.touched == {"c"}, "moving c touched another host"
    assert moved["ok"] and tuple(moved["range"]) == (6144, 9215), moved
    assert "draining slices left out" in moved["port_range"]["detail"]
    assert held.ask() == "ok", "the move cut a connection on the draining range"
    after = _plain(host, "tcp", 40) + [
        [line.split()[0], int(line.split()[1])] for line in _curl(host, 20)
    ]
    assert all(_inside(port, (6144, 9215)) for _, port in after), after

    ended = _enforce(host, site.replan(later=timedelta(hours=2)), serial=4)  # drain over
    assert ended["ok"]
    assert held.ask() != "ok", "the guard let a drained range keep sending"
    seen = _origin_log(log)
    assert ("tcp", SHARED_V4, held_port) in seen


def test_a_host_whose_slices_are_not_one_range_refuses_exact_mode_and_says_why(lab) -> None:
    host, _log = lab
    before = _enforce(host, _aligned(*OLD))
    assert before["ok"]
    scattered = [_slice(SHARED_V4, 1024, 1087), _slice(NEIGHBOUR_V4, 1088, 1215)]
    refused = _enforce(host, scattered, serial=2)
    assert not refused["ok"]
    assert refused["port_range"]["state"] == "failed"
    assert "exact-range mode refused" in refused["port_range"]["detail"]
    assert "not the same range on every IP" in refused["port_range"]["detail"]
    assert refused["nftables"]["detail"] == "not applied: port range failed"
    assert tuple(refused["range"]) == OLD, "a refused bundle must leave the range as it was"


def test_a_machine_left_with_no_active_slice_is_applied_and_its_guard_ends_the_old_ones(
    lab,
) -> None:
    host, _log = lab
    assert _enforce(host, _aligned(*OLD))["ok"]
    leaving = _enforce(host, _aligned(*OLD, "draining"), serial=2)
    assert leaving["ok"] and leaving["nftables"]["state"] == "on", leaving
    assert "no active slice" in leaving["port_range"]["detail"]
    gone = _enforce(host, [], serial=3)
    assert gone["ok"] and gone["nftables"]["state"] == "on", gone
    refused = [r for r in _plain(host, "tcp", 3) if isinstance(r, str)]
    assert len(refused) == 3, "with no slice left the guard must refuse the shared IP"
