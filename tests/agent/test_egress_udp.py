"""connect_udp against the real kernel, with many processes racing for one slice."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

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


def start_holders(
    testbed: Testbed, processes: int, dst: str, *, hi: int = HI, **extra: object
) -> list[Any]:
    args = json.dumps(
        {"source_ip": EGRESS_V4, "lo": LO, "hi": hi, "dst": dst, "port": DNS, **extra}
    )
    pipes = []
    for _ in range(processes):
        worker = testbed.spawn(testbed.host, "-m", "tests.agent.workers", "udp_hold", args)
        assert worker.stdin and worker.stdout and worker.stderr
        pipes.append((worker.stdin, worker.stdout, worker.stderr))
    for _, out, err in pipes:
        assert out.readline() == "ready\n", err.read()
    start_at = time.time() + 0.2
    for inp, _, _ in pipes:
        inp.write(f"go {start_at}\n")
        inp.flush()
    reports = []
    for _, out, err in pipes:
        line = out.readline()
        assert line, err.read()
        reports.append(json.loads(line))
    return reports


@pytest.mark.parametrize("ports_shared", [False, True], ids=["fresh-ports", "shared-ports"])
def test_it_gives_8_racing_processes_256_distinct_4_tuples_then_exhausts(
    testbed: Testbed, ports_shared: bool
) -> None:
    if ports_shared:
        # Every port already talks to another origin: no exclusive bind can succeed,
        # so every claim takes the locked, shared path.
        start_holders(testbed, 1, ORIGINS_V4[1])
    reports = start_holders(testbed, PROCESSES, ORIGINS_V4[0])

    # While every worker still holds its sockets, ask the kernel what exists.
    sockets = run_worker(testbed.host, "udp_dump", source_ip=EGRESS_V4)["sockets"]
    tuples = Counter(tuple(s) for s in sockets if s[1] == ORIGINS_V4[0])
    assert max(tuples.values()) == 1, [t for t, n in tuples.items() if n > 1]
    assert len(tuples) == HI - LO + 1
    assert all(LO <= sport <= HI for sport, _, _ in tuples)
    assert len(sockets) == (HI - LO + 1) * (2 if ports_shared else 1)

    claimed = [port for report in reports for port in report["ports"]]
    assert len(claimed) == HI - LO + 1 == len(set(claimed))
    assert all(report["error"] == "PortsExhausted" for report in reports)
    assert sum(1 for report in reports if report["ports"]) > 1  # they really raced


@pytest.mark.parametrize("ports_shared", [False, True], ids=["fresh-ports", "shared-ports"])
def test_it_gives_12_processes_of_40_jittered_connects_exactly_128_distinct_4_tuples(
    testbed: Testbed, ports_shared: bool
) -> None:
    # Each process remembers the ports it found taken and picks outside them; the
    # memory must never let two processes share a 4-tuple nor leave a port unused.
    hi = LO + 127
    if ports_shared:
        start_holders(testbed, 1, ORIGINS_V4[1], hi=hi)
    reports = start_holders(testbed, 12, ORIGINS_V4[0], hi=hi, count=40, jitter=0.002)

    sockets = run_worker(testbed.host, "udp_dump", source_ip=EGRESS_V4)["sockets"]
    tuples = Counter(tuple(s) for s in sockets if s[1] == ORIGINS_V4[0])
    assert max(tuples.values()) == 1, [t for t, n in tuples.items() if n > 1]
    assert sorted(sport for sport, _, _ in tuples) == list(range(LO, hi + 1))

    claimed = [port for report in reports for port in report["ports"]]
    assert len(claimed) == 128 == len(set(claimed))
    assert sum(report["exhausted"] for report in reports) == 12 * 40 - 128
    assert sum(1 for report in reports if report["ports"]) > 1  # they really raced


def test_it_reuses_ports_it_remembers_as_taken_once_they_are_free(testbed: Testbed) -> None:
    # The second fill runs within a second of the first, while the memory still
    # lists ports as taken: it only steers, so every port must be claimed again.
    result = run_worker(
        testbed.host,
        "udp_refill",
        source_ip=EGRESS_V4,
        lo=LO,
        hi=LO + 15,
        dst=ORIGINS_V4[0],
        port=DNS,
        other=ORIGINS_V4[1],
    )
    first, second = result["fills"]
    assert first == second == list(range(LO, LO + 16))
    assert result["remembered_taken_before"][1] > 0  # the memory did list some


def test_a_forked_child_does_not_share_its_parents_port_mutexes(testbed: Testbed) -> None:
    result = run_worker(
        testbed.host,
        "forked_child_locks",
        source_ip=EGRESS_V4,
        port=LO,
        dst=ORIGINS_V4[0],
        other=ORIGINS_V4[1],
    )
    assert result == {"child_while_parent_holds": "PortsExhausted"}


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


def test_the_reuseaddr_lock_alone_lets_two_sockets_share_a_4_tuple(testbed: Testbed) -> None:
    # Why connect_udp adds a mutex: both sockets bind before either turns
    # SO_REUSEADDR off, neither lookup sees a connected socket, both connect.
    result = run_worker(
        testbed.host, "reuseaddr_lock_race", source_ip=EGRESS_V4, port=LO, dst=ORIGINS_V4[0]
    )
    assert result["lookups_saw_a_connected_socket"] == [False, False]
    first, second = result["tuples"]
    assert first == second


def test_it_does_not_claim_a_port_whose_mutex_another_process_holds(testbed: Testbed) -> None:
    result = run_worker(
        testbed.host,
        "locked_port",
        source_ip=EGRESS_V4,
        port=LO,
        dst=ORIGINS_V4[0],
        other=ORIGINS_V4[1],
    )
    assert result == {"while_locked": "PortsExhausted", "after": LO}


def test_it_never_joins_a_port_held_without_reuseaddr(testbed: Testbed) -> None:
    result = run_worker(
        testbed.host, "exclusive_foreign_socket", source_ip=EGRESS_V4, port=LO, dst=ORIGINS_V4[0]
    )
    assert result == {"error": "PortsExhausted"}
