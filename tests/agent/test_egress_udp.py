"""connect_udp against the real kernel, with many processes racing for one slice."""

from __future__ import annotations

import json
import time
from collections import Counter

from tests.agent.netns import (
    EGRESS_V4,
    EGRESS_V6,
    ORIGINS_V4,
    ORIGINS_V6,
    Testbed,
    run_worker,
)

LO, HI = 41000, 41255  # a 256-port slice
PROCESSES = 8
DNS = 53


def test_it_gives_8_racing_processes_256_distinct_4_tuples_then_exhausts(
    testbed: Testbed,
) -> None:
    args = json.dumps(
        {"source_ip": EGRESS_V4, "lo": LO, "hi": HI, "dst": ORIGINS_V4[0], "port": DNS}
    )
    workers = [
        testbed.spawn(testbed.host, "-m", "tests.agent.workers", "udp_hold", args)
        for _ in range(PROCESSES)
    ]
    time.sleep(0.5)  # let every worker import and block on its "go"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    reports = []
    for worker in workers:
        assert worker.stdout is not None
        line = worker.stdout.readline()
        assert line, worker.stderr.read() if worker.stderr else "worker died"
        reports.append(json.loads(line))

    # While every worker still holds its sockets, ask the kernel what exists.
    sockets = run_worker(testbed.host, "udp_dump", source_ip=EGRESS_V4)["sockets"]
    tuples = Counter(tuple(s) for s in sockets)
    assert max(tuples.values()) == 1, [t for t, n in tuples.items() if n > 1]
    assert len(tuples) == HI - LO + 1
    assert all(LO <= sport <= HI and dst == ORIGINS_V4[0] for sport, dst, _ in tuples)

    claimed = [port for report in reports for port in report["ports"]]
    assert len(claimed) == HI - LO + 1 == len(set(claimed))
    assert all(report["error"] == "PortsExhausted" for report in reports)
    assert sum(1 for report in reports if report["ports"]) > 1  # they really raced


def test_it_shares_a_port_between_destinations_but_not_a_4_tuple(testbed: Testbed) -> None:
    port = 41000
    result = run_worker(
        testbed.host,
        "udp_pairs",
        source_ip=EGRESS_V4,
        lo=port,
        hi=port + 1,
        origins=ORIGINS_V4[:3],
        port=DNS,
    )
    pairs = [tuple(p) for p in result["pairs"]]
    assert sorted(pairs) == sorted((p, o) for p in (port, port + 1) for o in ORIGINS_V4[:3])
    assert result["exhausted"] == 3


def test_it_works_over_ipv6(testbed: Testbed) -> None:
    result = run_worker(
        testbed.host,
        "udp_pairs",
        source_ip=EGRESS_V6,
        lo=LO,
        hi=LO + 15,
        origins=ORIGINS_V6[:2],
        port=DNS,
    )
    pairs = [tuple(p) for p in result["pairs"]]
    assert len(pairs) == len(set(pairs)) == 32
    assert {sport for sport, _ in pairs} == set(range(LO, LO + 16))
