"""connect_tcp against the real kernel: slices hold, 4-tuples are unique, exhaustion is clean."""

from __future__ import annotations

import errno

from tests.agent.netns import (
    EGRESS_V4,
    EGRESS_V6,
    ORIGIN_PORT,
    ORIGINS_V4,
    ORIGINS_V6,
    Testbed,
    run_worker,
)

LO, HI = 40000, 40063  # a 64-port slice


def check_fill(result: dict, lo: int, hi: int) -> None:
    tuples = [tuple(t) for t in result["tuples"]]
    assert all(lo <= sport <= hi for _, sport, _, _ in tuples)
    assert len(set(tuples)) == len(tuples)
    # Every one of the 64 ports serves the first origin: the 65th connection fails.
    assert result["to_first"] == hi - lo + 1
    assert result["error"]["type"] == "PortsExhausted"
    assert result["error"]["errno"] == errno.EADDRNOTAVAIL
    assert f"{lo}-{hi}" in result["error"]["message"]


def test_it_keeps_500_connections_to_8_origins_inside_a_64_port_slice(testbed: Testbed) -> None:
    result = run_worker(
        testbed.host,
        "tcp_fill",
        source_ip=EGRESS_V4,
        lo=LO,
        hi=HI,
        origins=ORIGINS_V4,
        port=ORIGIN_PORT,
        spread=500,
    )
    check_fill(result, LO, HI)
    assert len(result["tuples"]) == 500 + (64 - 63)  # 63 of the 500 went to the first origin
    assert {t[0] for t in result["tuples"]} == {EGRESS_V4}
    assert {t[2] for t in result["tuples"]} == set(ORIGINS_V4)


def test_it_does_the_same_over_ipv6(testbed: Testbed) -> None:
    result = run_worker(
        testbed.host,
        "tcp_fill",
        source_ip=EGRESS_V6,
        lo=LO,
        hi=HI,
        origins=ORIGINS_V6[:4],
        port=ORIGIN_PORT,
        spread=200,
    )
    check_fill(result, LO, HI)
    assert {t[0] for t in result["tuples"]} == {EGRESS_V6}
