"""The fd-passing service: another process gets a socket connected from this host's slice."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.fdpass import parse_destination
from agent.state import StateStore
from tests.agent import keys, netlab
from tests.agent.netlab import PEER_PORT, PEER_V4, PEER_V6, SHARED_V4, SHARED_V6, Netns
from tests.support import need_root

SERVER = """
import sys
from agent.egress import Egress
from agent.fdpass import FdPassServer
FdPassServer(sys.argv[1], lambda: Egress.load(sys.argv[2])).serve_forever()
"""

CLIENT = """
import json, sys
from agent.fdpass import FdPassError, request_socket
held, out = [], []
for dst, proto, filters in json.loads(sys.argv[2]):
    try:
        s = request_socket(sys.argv[1], dst, proto, **filters)
    except FdPassError as error:
        out.append({"code": error.code, "error": error.error})
        continue
    if proto == "udp":
        s.send(b"x")
    held.append(s)
    local, peer = s.getsockname()[:2], s.getpeername()[:2]
    out.append({"local": local, "peer": peer, "blocking": s.getblocking()})
print(json.dumps(out))
"""


@dataclass
class Lab:
    host: Netns
    socket_path: Path
    peer_log: Path

    def ask(self, *requests: tuple[str, str, dict[str, str]]) -> list[dict]:
        out = self.host.python(CLIENT, str(self.socket_path), json.dumps(requests)).stdout
        return json.loads(out)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    need_root()
    key = keys.generate_key()
    now = int(time.time())
    claims = keys.claims(
        iat=now,
        exp=now + 3600,
        slices=[
            keys.slice_claim(SHARED_V4, 40000, 40063),
            keys.slice_claim(SHARED_V6, 40000, 40063, country="NL"),
        ],
    )
    StateStore(tmp_path / "state").save(keys.sign(claims, key), 7)
    socket_path = tmp_path / "run" / "agent.sock"
    with netlab.netns_pair() as (host, peer):
        netlab.start_peer_server(peer, tmp_path / "peer.log")
        host.spawn(
            netlab.PYTHON, "-c", SERVER, str(socket_path), str(tmp_path / "state"),
            env={"PORTSLICE_RUN_DIR": str(tmp_path / "run")},
        )  # fmt: skip
        netlab.wait_for(socket_path.exists, what="the fdpass socket")
        yield Lab(host, socket_path, tmp_path / "peer.log")


def test_a_client_gets_a_connected_tcp_socket_from_the_slice(lab: Lab) -> None:
    [answer] = lab.ask((f"{PEER_V4}:{PEER_PORT}", "tcp", {"country": "DE"}))
    ip, port = answer["local"]
    assert ip == SHARED_V4 and 40000 <= port <= 40063
    assert answer["peer"] == [PEER_V4, PEER_PORT]
    assert answer["blocking"] is True
    netlab.wait_for(lambda: ("tcp", SHARED_V4, port) in netlab.peer_log(lab.peer_log), what="SYN")


def test_it_hands_out_udp_and_ipv6_sockets_too(lab: Lab) -> None:
    udp, tcp6 = lab.ask(
        (f"{PEER_V4}:{PEER_PORT}", "udp", {}),
        (f"[{PEER_V6}]:{PEER_PORT}", "tcp", {"country": "NL"}),
    )
    assert udp["local"][0] == SHARED_V4 and 40000 <= udp["local"][1] <= 40063
    assert tcp6["local"][0] == SHARED_V6 and 40000 <= tcp6["local"][1] <= 40063
    netlab.wait_for(
        lambda: ("udp", SHARED_V4, udp["local"][1]) in netlab.peer_log(lab.peer_log),
        what="the datagram",
    )


def test_it_explains_a_refusal(lab: Lab) -> None:
    no_slice, bad_dst, bad_proto, refused = lab.ask(
        (f"{PEER_V4}:{PEER_PORT}", "tcp", {"country": "XX"}),
        ("peer.example:443", "tcp", {}),
        (f"{PEER_V4}:{PEER_PORT}", "sctp", {}),
        (f"{PEER_V4}:{PEER_PORT + 1}", "tcp", {}),  # nothing listens there
    )
    assert no_slice["code"] == "no_slice" and "country='XX'" in no_slice["error"]
    assert bad_dst["code"] == "bad_request" and "not an IP literal" in bad_dst["error"]
    assert bad_proto["code"] == "bad_request"
    assert refused["code"] == "connect_failed"


def test_the_socket_file_is_group_only(lab: Lab) -> None:
    assert stat.S_IMODE(lab.socket_path.stat().st_mode) == 0o660


def test_it_parses_destinations_strictly() -> None:
    assert parse_destination("203.0.113.9:443") == ("203.0.113.9", 443)
    assert parse_destination("[2001:db8::1]:53") == ("2001:db8::1", 53)
    for bad in ("2001:db8::1:53", "203.0.113.9", "203.0.113.9:0", "host:80"):
        with pytest.raises(ValueError):
            parse_destination(bad)
