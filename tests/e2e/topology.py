"""A data plane in network namespaces: origin, router, gateway and hosts sharing egress IPs.

::

    host1 ─┐  192.0.2.(8i)/29 links          link MTU 1500      link MTU 1500 → 1280
    host2 ─┼── gateway ──────────────────────── router ─────────────────────── origin
    ...   ─┘   (steers by IP . port)   192.0.2.248/29          192.0.2.240/29
              no route to the shared IPs                        203.0.113.1 on lo:
              but the marks                                      TCP+UDP echo on 7

* Every host has the shared egress IPs (198.51.100.7, .8, ...) on ``lo`` and a
  default route to the gateway over its own link.
* The gateway forwards towards the origin through the router; return traffic
  to a shared IP is steered only by the portslice table (it has no other route
  to them), so a packet the table does not cover is dropped, never misrouted.
* The router's link to the origin has a smaller MTU on the router's side: a
  host sending full-size packets gets "fragmentation needed" (ICMP) from the
  router, which the gateway must steer to the host owning the quoted port.
* The origin answers every TCP line and UDP datagram with
  ``"<source ip> <source port> <bytes received>"``: what it saw.

Names carry a random suffix; :meth:`DataPlane.teardown` deletes every namespace
(and with them veths, nft tables, routes) and stops every process, also after
a failure.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allocator.steering import MARK_BASE
from tests.agent.netlab import ROOT, Netns, stop, wait_for
from tests.agent.netns import PYTHON, ip, unique_name

ORIGIN_IP = "203.0.113.1"
ECHO_PORT = 7
SMALL_MTU = 1280
SHARED_IPS = ("198.51.100.7", "198.51.100.8")

# TCP: one reply line per line received; UDP: one reply per datagram.
ECHO_SERVER = """
import socket, socketserver, sys, threading
log = open(sys.argv[2], "a", buffering=1)
class Tcp(socketserver.StreamRequestHandler):
    def handle(self):
        ip, port = self.client_address[:2]
        log.write(f"tcp {ip} {port}\\n")
        for line in self.rfile:
            self.wfile.write(f"{ip} {port} {len(line)}\\n".encode())
class Udp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        ip, port = self.client_address[:2]
        log.write(f"udp {ip} {port}\\n")
        sock.sendto(f"{ip} {port} {len(data)}".encode(), self.client_address)
class TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
class UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
# Bound to the origin's address: a UDP answer must come from where the request went.
address = (sys.argv[3], int(sys.argv[1]))
servers = [TcpServer(address, Tcp), UdpServer(address, Udp)]
for server in servers:
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


# Keeps one TCP connection from (ip, port or the first free port of "lo-hi") to the echo
# server, a line every `interval` seconds for `duration` seconds (or until SIGTERM); prints
# {"sent", "ok", "errors"} as JSON.
CHATTY_CLIENT = """
import json, signal, socket, sys, time
src_ip, src_port, dst, port, interval, duration = sys.argv[1:7]
stopped = []  # SIGTERM ends the run early, with the report still printed
signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
result = {"sent": 0, "ok": 0, "errors": []}
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
first, _, last = src_port.partition("-")  # a port, or "lo-hi": the first one free
for candidate in range(int(first), int(last or first) + 1):
    try:
        sock.bind((src_ip, candidate))
        break
    except OSError:
        if candidate == int(last or first):
            raise
src_port = str(sock.getsockname()[1])
sock.settimeout(2.0)
try:
    sock.connect((dst, int(port)))
    reader = sock.makefile("r")
    print("connected", flush=True)
    end = time.monotonic() + float(duration)
    while time.monotonic() < end and not stopped:
        sock.sendall(b"ping\\n")
        result["sent"] += 1
        reply = reader.readline().split()
        if reply[:2] != [src_ip, src_port]:
            result["errors"].append(f"reply {reply}")
            break
        result["ok"] += 1
        time.sleep(float(interval))
except OSError as error:
    result["errors"].append(f"{type(error).__name__}: {error}")
print(json.dumps(result), flush=True)
"""

# Listens on 127.0.0.1:<port> in its namespace and relays each connection to a Unix
# socket (the filesystem is shared): how the gateway's namespace reaches the API.
TCP_TO_UNIX = """
import socket, sys, threading
def pump(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    client, _ = server.accept()
    upstream = socket.socket(socket.AF_UNIX)
    try:
        upstream.connect(sys.argv[2])
    except OSError:
        client.close()
        continue
    for a, b in ((client, upstream), (upstream, client)):
        threading.Thread(target=pump, args=(a, b), daemon=True).start()
"""

# Applies each JSON steering document read from stdin with the real gateway code;
# prints one JSON line per document: {"result": ..., "seconds": ...}.
GATEWAY_DRIVER = """
import json, sys, time, hashlib
from pathlib import Path
from agent.gateway import Gateway, GatewayConfig, Table
gateway = Gateway(GatewayConfig(datacenter="fra1", name="test-gw", state_dir=Path(sys.argv[1])))
print(json.dumps({"result": "ready"}), flush=True)
for line in sys.stdin:
    document = json.loads(line)
    etag = hashlib.sha256(line.encode()).hexdigest()[:32]
    started = time.monotonic()
    result = gateway.offer(Table(document, etag), source="test")
    print(json.dumps({"result": result, "seconds": time.monotonic() - started}), flush=True)
"""


@dataclass
class Host:
    """One host namespace: its link to the gateway and its address there (the next hop)."""

    ns: Netns
    address: str
    gateway_side: str


@dataclass
class DataPlane:
    """See the module docstring; :meth:`build` makes it, :meth:`teardown` removes it."""

    hosts_wanted: int = 4
    shared: tuple[str, ...] = SHARED_IPS
    small_mtu: int = SMALL_MTU
    origin: Netns = field(init=False)
    router: Netns = field(init=False)
    gateway: Netns = field(init=False)
    hosts: list[Host] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    _echo: subprocess.Popen[str] | None = None
    echo_log: Path = Path("/nonexistent")

    def _namespace(self, role: str) -> Netns:
        name = unique_name(role)
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return Netns(name)

    def _link(self, a: Netns, a_addr: str, b: Netns, b_addr: str, prefix: int) -> tuple[str, str]:
        dev_a, dev_b = unique_name("v"), unique_name("v")
        ip("link", "add", dev_a, "netns", a.name, "type", "veth", "peer", "name", dev_b,
           "netns", b.name)  # fmt: skip
        for ns, dev, addr in ((a, dev_a, a_addr), (b, dev_b, b_addr)):
            ip("-n", ns.name, "addr", "add", f"{addr}/{prefix}", "dev", dev)
            ip("-n", ns.name, "link", "set", dev, "up")
        return dev_a, dev_b

    def build(self) -> None:
        self.origin = self._namespace("o")
        self.router = self._namespace("r")
        self.gateway = self._namespace("g")
        router_out, _ = self._link(self.router, "192.0.2.241", self.origin, "192.0.2.242", 29)
        ip("-n", self.router.name, "link", "set", router_out, "mtu", str(self.small_mtu))
        self._link(self.gateway, "192.0.2.249", self.router, "192.0.2.250", 29)
        ip("-n", self.origin.name, "addr", "add", f"{ORIGIN_IP}/32", "dev", "lo")
        ip("-n", self.origin.name, "route", "add", "default", "via", "192.0.2.241")
        ip("-n", self.router.name, "route", "add", f"{ORIGIN_IP}/32", "via", "192.0.2.242")
        ip("-n", self.router.name, "route", "add", "198.51.100.0/24", "via", "192.0.2.249")
        # The hosts' own links, for plain (non-portslice) traffic: benchmarks compare with it.
        ip("-n", self.router.name, "route", "add", "192.0.2.0/24", "via", "192.0.2.249")
        ip("-n", self.gateway.name, "route", "add", f"{ORIGIN_IP}/32", "via", "192.0.2.250")
        for ns in (self.router, self.gateway):
            ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        for _ in range(self.hosts_wanted):
            self.add_host()

    def add_host(self) -> Host:
        n = len(self.hosts) + 1
        ns = self._namespace(f"h{n}")
        gateway_side, address = f"192.0.2.{8 * n + 1}", f"192.0.2.{8 * n + 2}"
        self._link(self.gateway, gateway_side, ns, address, 29)
        for shared in self.shared:
            ip("-n", ns.name, "addr", "add", f"{shared}/32", "dev", "lo")
        ip("-n", ns.name, "route", "add", "default", "via", gateway_side)
        ns.run("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535")
        host = Host(ns, address, gateway_side)
        self.hosts.append(host)
        return host

    def start_echo(self, log: Path) -> None:
        self.echo_log = log
        self._echo = self.origin.spawn(
            PYTHON, "-c", ECHO_SERVER, str(ECHO_PORT), str(log), ORIGIN_IP
        )
        wait_for(lambda: self._listening(), what="the echo server")

    def echo_seen(self, since: int = 0) -> list[tuple[str, str, int]]:
        """Each (proto, source ip, source port) the origin has seen, in order, from the
        ``since``-th on (``len()`` of an earlier answer: what came after it)."""
        if not self.echo_log.exists():
            return []
        lines = self.echo_log.read_text().splitlines()[since:]
        return [(proto, ip_, int(port)) for proto, ip_, port in (line.split() for line in lines)]

    def _listening(self) -> bool:
        out = self.origin.run("ss", "-Hltn", f"sport = :{ECHO_PORT}", check=False).stdout
        return "LISTEN" in out

    def teardown(self) -> None:
        for ns in (*(h.ns for h in self.hosts), *self._roles()):
            ns.stop_processes()
        if self._echo is not None:
            stop(self._echo)
        for name in self.namespaces:
            ip("netns", "del", name, check=False)

    def _roles(self) -> list[Netns]:
        return [
            ns for ns in (getattr(self, r, None) for r in ("origin", "router", "gateway")) if ns
        ]


class GatewayDriver:
    """The gateway code in the gateway namespace, fed documents one at a time."""

    def __init__(self, plane: DataPlane, state_dir: Path) -> None:
        self.process = subprocess.Popen(
            plane.gateway.command(PYTHON, "-c", GATEWAY_DRIVER, str(state_dir)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        plane.gateway.processes.append(self.process)
        assert self._read()["result"] == "ready"

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the gateway driver died"
        return dict(json.loads(line))

    def apply(self, document: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(document) + "\n")
        self.process.stdin.flush()
        return self._read()


def steering(
    plane: DataPlane, owners: dict[int, list[tuple[str, int, int]]], revision: int
) -> dict[str, Any]:
    """A steering document: host index -> its slices; host i has mark MARK_BASE + i."""
    slices, marks = [], {}
    for index, owned in owners.items():
        host = plane.hosts[index]
        name = f"h{index + 1}"
        marks[name] = MARK_BASE + index + 1
        slices += [
            {"ip": ip_, "lo": lo, "hi": hi, "machine": name, "next_hop": host.address,
             "state": "active"}
            for ip_, lo, hi in owned
        ]  # fmt: skip
    return {"datacenter": "fra1", "revision": revision, "marks": marks, "slices": slices}


@contextlib.contextmanager
def data_plane(hosts: int, log_dir: Path) -> Iterator[DataPlane]:
    plane = DataPlane(hosts_wanted=hosts)
    try:
        plane.build()
        plane.start_echo(log_dir / "echo.log")
        yield plane
    finally:
        plane.teardown()
