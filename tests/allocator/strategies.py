"""Hypothesis strategies for allocator inputs.

Pools are kept small (a handful of IPs, narrow usable ranges, a few dozen
machines) so capacity really runs short in a good share of examples and the
brute-force checks stay quick.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from hypothesis import strategies as st

from allocator import DEFAULT_DRAIN, USABLE_PORTS, EgressIP, Machine, PoolPolicy, PortRange

# Examples per property; raise it for a soak run: ALLOCATOR_EXAMPLES=1000 pytest tests/allocator
EXAMPLES = int(os.environ.get("ALLOCATOR_EXAMPLES", "40"))

POOLS = ("ams1/warp/NL", "fra1/corp/DE", "fra1/warp/DE")
SLICE_SIZES = (512, 1000, 2048, 3000, 4096)
USABLE_SHAPES = (
    USABLE_PORTS,
    USABLE_PORTS,
    PortRange(1024, 16383),
    PortRange(20000, 29999),
    PortRange(40000, 65535),
)
DRAIN_FOR = DEFAULT_DRAIN
STEPS = (timedelta(0), timedelta(minutes=30), timedelta(minutes=61), timedelta(hours=3))


@st.composite
def policies(draw: st.DrawFn) -> dict[str, PoolPolicy]:
    """A policy for some pools; the others fall back to ``PoolPolicy()``."""
    chosen = {}
    for pool in POOLS:
        if draw(st.booleans()):
            base = draw(st.integers(1, 2))
            extra = draw(st.none() | st.integers(0, 2))
            chosen[pool] = PoolPolicy(
                slice_size=draw(st.sampled_from(SLICE_SIZES)),
                slices_per_machine=base,
                max_slices_per_machine=None if extra is None else base + extra,
                aligned=draw(st.booleans()),
            )
    return chosen


@st.composite
def egress_ips(draw: st.DrawFn, count: int) -> list[EgressIP]:
    ips = []
    for index in range(count):
        usable = draw(st.sampled_from(USABLE_SHAPES))
        reserved = draw(
            st.frozensets(st.integers(usable.lo, usable.hi), max_size=2) | st.just(frozenset())
        )
        # The first IPs cover every pool, so a short pool is not always an empty one.
        pool = POOLS[index] if index < len(POOLS) else draw(st.sampled_from(POOLS))
        ips.append(EgressIP(f"10.0.{index // 200}.{index % 200 + 1}", pool, usable, reserved))
    return ips


def machine_pools() -> st.SearchStrategy[frozenset[str]]:
    one = st.sampled_from(POOLS).map(lambda pool: frozenset({pool}))
    return one | one | st.frozensets(st.sampled_from(POOLS), min_size=1, max_size=2)


@dataclass(frozen=True)
class Stage:
    """The inventory at one point in time: which IPs and machines exist, in what state."""

    ips: tuple[EgressIP, ...]
    machines: tuple[Machine, ...]
    step: timedelta
    usage: dict[tuple[str, str], float] | None


@st.composite
def stages(draw: st.DrawFn, ips: list[EgressIP], machines: list[Machine], first: bool) -> Stage:
    present_ips = []
    for index, ip in enumerate(ips):
        # Every pool keeps its first IP, so most short pools are short, not empty.
        fates = ("active",) * 6 + ("draining",) + (("gone",) if index >= len(POOLS) else ())
        state = draw(st.sampled_from(fates))
        if state != "gone":
            present_ips.append(EgressIP(ip.address, ip.pool, ip.usable, ip.reserved, state))
    present_machines = []
    for machine in machines:
        state = draw(st.sampled_from(("active",) * 5 + ("draining", "retired", "gone")))
        if state == "gone":
            continue
        pools = machine.pools if draw(st.integers(0, 4)) else draw(machine_pools())
        weight = machine.weight if draw(st.integers(0, 4)) else draw(st.integers(1, 3))
        present_machines.append(Machine(machine.name, pools, weight, state))
    usage = None
    if not first and draw(st.booleans()):
        owners = [(m.name, pool) for m in present_machines for pool in sorted(m.pools)]
        usage = {
            owner: draw(st.sampled_from((0.05, 0.5, 0.95)))
            for owner in owners
            if owners and draw(st.integers(0, 2)) == 0
        }
    return Stage(
        ips=tuple(present_ips),
        machines=tuple(present_machines),
        step=timedelta(0) if first else draw(st.sampled_from(STEPS)),
        usage=usage,
    )


@dataclass(frozen=True)
class Story:
    policies: dict[str, PoolPolicy]
    stages: tuple[Stage, ...]


@st.composite
def stories(draw: st.DrawFn, length: int = 3) -> Story:
    """A few successive inventories of one datacenter, for plan after plan."""
    ips = draw(egress_ips(draw(st.integers(3, 9))))
    machine_count = draw(st.integers(0, 24))
    machines = [
        Machine(f"m{index:02d}", draw(machine_pools()), draw(st.sampled_from((1, 1, 1, 2))))
        for index in range(machine_count)
    ]
    return Story(
        policies=draw(policies()),
        stages=tuple(draw(stages(ips, machines, first=index == 0)) for index in range(length)),
    )
