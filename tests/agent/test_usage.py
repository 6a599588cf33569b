"""Usage reports: live sockets per slice and per 64-port bucket, counted by sock_diag."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.usage import SliceUsage, bucket_of
from tests.agent import netlab
from tests.agent.netlab import PEER_PORT, PEER_V4, PEER_V6, SHARED_V4, SHARED_V6, Netns
from tests.support import need_root

SLICES = [
    {"ip": SHARED_V4, "lo": 40000, "hi": 40127, "state": "active"},
    {"ip": SHARED_V4, "lo": 41024, "hi": 41087, "state": "draining"},
    {"ip": SHARED_V6, "lo": 40000, "hi": 40063, "state": "active"},
]

# Opens sockets from hand-picked source ports, then reports once through UsageReporter.
OPEN_AND_REPORT = (
    netlab.bundle_script_prelude()
    + f"""
import socket
from agent.sockdiag import SockDiag
from agent.usage import UsageReporter
held = []
def tcp(src, port, dst):
    s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET)
    s.bind((src, port)); s.connect((dst, {PEER_PORT})); held.append(s)
def udp(src, port, dst, connect=True):
    s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, port))
    if connect:
        s.connect((dst, {PEER_PORT}))
    held.append(s)
for port in (40000, 40001, 40063, 40064, 40127):
    tcp("{SHARED_V4}", port, "{PEER_V4}")
udp("{SHARED_V4}", 40002, "{PEER_V4}")
udp("{SHARED_V4}", 40100, "{PEER_V4}")
udp("{SHARED_V4}", 40101, "{PEER_V4}", connect=False)   # unconnected: holds no 4-tuple
tcp("{SHARED_V4}", 39999, "{PEER_V4}")                  # outside every slice
tcp("{SHARED_V6}", 40010, "{PEER_V6}")
sent = []
reporter = UsageReporter(hostname="edge-test", current=lambda: bundle_from(sys.argv[1]),
                         send=sent.append, interval=60)
with SockDiag() as diag:
    reporter.report_once(diag)
print(json.dumps(sent))
"""
)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Netns]:
    need_root()
    with netlab.netns_pair() as (host, peer):
        netlab.start_peer_server(peer, tmp_path / "peer.log")
        yield host


def _bundle_text(serial: int = 4) -> str:
    slices = [{**s, "pool": "fra1/warp/DE", "purpose": "warp", "country": "DE"} for s in SLICES]
    return netlab.bundle_json(serial=serial, slices=slices)


def test_it_counts_sockets_per_slice_and_bucket(lab: Netns) -> None:
    reports = json.loads(lab.python(OPEN_AND_REPORT, _bundle_text()).stdout)
    assert len(reports) == 1
    report = reports[0]
    assert report["hostname"] == "edge-test" and report["serial"] == 4
    assert isinstance(report["at"], float)
    first, draining, v6 = report["slices"]
    assert first == {
        "ip": SHARED_V4,
        "lo": 40000,
        "hi": 40127,
        "tcp": 5,
        "udp": 2,
        "buckets": {"40000": 4, "40064": 3},
    }
    assert draining == {
        "ip": SHARED_V4,
        "lo": 41024,
        "hi": 41087,
        "tcp": 0,
        "udp": 0,
        "buckets": {},
    }
    assert v6 == {
        "ip": SHARED_V6,
        "lo": 40000,
        "hi": 40063,
        "tcp": 1,
        "udp": 0,
        "buckets": {"40000": 1},
    }


def test_buckets_are_aligned_on_absolute_ports() -> None:
    assert [bucket_of(p) for p in (1024, 1087, 1088, 40063, 40064, 65535)] == [
        1024,
        1024,
        1088,
        40000,
        40064,
        65472,
    ]
    usage = SliceUsage("198.51.100.7", 40000, 40127, 1, 1, {40064: 1, 40000: 1})
    assert usage.as_dict()["buckets"] == {"40000": 1, "40064": 1}
