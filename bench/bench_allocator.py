"""Allocator benchmark: speed, memory, churn and packing against baselines run here.

Run with ``.venv/bin/python -m bench.bench_allocator`` (about a minute, one core).

Two datacenters of 50 pools and 2,000 machines that each serve every pool, so
100,000 slices, usable ports 1024-65535 on every IP:

- ``wide``: 70 IPs per pool (3,500 IPs), 2,048-port slices: 31 slots per IP,
  2,170 per pool, 92% wanted. The shape of the issue's target.
- ``dense``: 8 IPs per pool (400 IPs), 256-port slices: 252 slots per IP,
  2,016 per pool, 99% wanted. Many slices per IP, where per-IP scans hurt.

Baselines, all run in this process:

- speed: ``naive_plan``, the obvious planner: keep what stays after checking it
  against every other slice kept on its IP, then for each missing slice pick
  the least-loaded IP of the pool by scanning and its first free slot by
  scanning;
- churn: deterministic NAT (``ports_per_host = 64512 // ceil(hosts / ips)``,
  hosts numbered by name) and a from-scratch greedy plan (``plan`` with no
  previous slices) on the new machine set.

The machine that joins and the one that leaves sort in the middle of the
names, as real hostnames do; a newcomer named to sort last would flatter
deterministic NAT. Times are medians of wall time, memory is tracemalloc's
peak during one plan (Python allocations only) and, for the whole run, the
process's peak RSS from ``getrusage`` (``ru_maxrss``).
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import NamedTuple

from allocator import CapacityError, EgressIP, Machine, PoolPolicy, Slice, plan

NOW = datetime(2025, 3, 1, 9, 0)
POOLS = 50
MACHINES = 2000
USABLE_LO, USABLE_HI = 1024, 65535
USABLE = USABLE_HI - USABLE_LO + 1

# Targets from the issue.
FULL_PLAN_BUDGET_S = 2.0
REPLAN_BUDGET_S = 0.3
MEMORY_BUDGET_MB = 500
PACKING_TARGET = 0.96


class Shape(NamedTuple):
    name: str
    ips_per_pool: int
    slice_size: int


WIDE = Shape("wide", ips_per_pool=70, slice_size=2048)
DENSE = Shape("dense", ips_per_pool=8, slice_size=256)


class Datacenter(NamedTuple):
    ips: list[EgressIP]
    machines: list[Machine]
    policies: dict[str, PoolPolicy]
    slice_size: int

    def plan(
        self, machines: Sequence[Machine], previous: Iterable[Slice] = ()
    ) -> tuple[Slice, ...]:
        result = plan(
            ips=self.ips, machines=machines, previous=previous, policies=self.policies, now=NOW
        )
        return result.slices


class Owned(NamedTuple):
    """A slice reduced to what churn is about: who owns which ports of which IP."""

    ip: str
    lo: int
    hi: int
    machine: str


def build(shape: Shape) -> Datacenter:
    pools = [f"dc1/purpose{n:02d}/DE" for n in range(POOLS)]
    ips = [
        EgressIP(f"10.{n // 250}.{n % 250}.1", pools[n % POOLS])
        for n in range(POOLS * shape.ips_per_pool)
    ]
    everywhere = frozenset(pools)
    machines = [Machine(f"host{n:04d}", everywhere) for n in range(MACHINES)]
    policies = {pool: PoolPolicy(slice_size=shape.slice_size) for pool in pools}
    return Datacenter(ips, machines, policies, shape.slice_size)


def joined(machines: Sequence[Machine]) -> list[Machine]:
    """One more machine, named to sort between host1000 and host1001."""
    return [*machines, Machine("host1000-new", machines[0].pools)]


def left(machines: Sequence[Machine]) -> list[Machine]:
    """One machine fewer, from the middle of the names."""
    return [m for m in machines if m.name != machines[len(machines) // 2].name]


# The naive baseline.


def naive_plan(
    datacenter: Datacenter, machines: Sequence[Machine], previous: Iterable[Slice] = ()
) -> list[Slice]:
    """Keep each previous slice whose machine stays and that overlaps no slice kept so far
    on its IP; then give each missing (machine, pool) the first free slot of the least
    loaded IP, found by scanning."""
    ips, size = datacenter.ips, datacenter.slice_size
    names = {machine.name for machine in machines}
    pool_of = {ip.address: ip.pool for ip in ips}
    on_ip: dict[str, list[Slice]] = {ip.address: [] for ip in ips}
    held: set[tuple[str, str]] = set()
    for old in previous:
        mates = on_ip.get(old.ip)
        if mates is None or old.machine not in names:
            continue
        if all(old.hi < other.lo or other.hi < old.lo for other in mates):
            mates.append(old)
            held.add((old.machine, pool_of[old.ip]))
    ips_of: dict[str, list[str]] = defaultdict(list)
    for ip in ips:
        ips_of[ip.pool].append(ip.address)
    starts = range(-(-USABLE_LO // size) * size, USABLE_HI - size + 2, size)
    for machine in sorted(machines, key=lambda m: m.name):
        for pool in sorted(machine.pools):
            if (machine.name, pool) in held:
                continue
            roomy = [address for address in ips_of[pool] if len(on_ip[address]) < len(starts)]
            if not roomy:
                raise CapacityError([])
            address = min(roomy, key=lambda a: len(on_ip[a]))
            taken = {other.lo for other in on_ip[address]}
            lo = next(start for start in starts if start not in taken)
            on_ip[address].append(Slice(address, lo, lo + size - 1, machine.name))
    return [slice_ for slices in on_ip.values() for slice_ in slices]


# Deterministic NAT.


def deterministic_nat(datacenter: Datacenter, machines: Sequence[Machine]) -> list[Owned]:
    """Juniper / VPP det44 style, per pool: host i of n gets block i of its IP."""
    ips = datacenter.ips
    owned = []
    for pool in sorted({ip.pool for ip in ips}):
        addresses = [ip.address for ip in ips if ip.pool == pool]
        hosts = sorted(machine.name for machine in machines if pool in machine.pools)
        per_ip = -(-len(hosts) // len(addresses))
        ports_per_host = USABLE // per_ip
        for index, host in enumerate(hosts):
            lo = USABLE_LO + (index % per_ip) * ports_per_host
            owned.append(Owned(addresses[index // per_ip], lo, lo + ports_per_host - 1, host))
    return owned


# Measuring.


def owned(slices: Iterable[Slice]) -> list[Owned]:
    return [Owned(s.ip, s.lo, s.hi, s.machine) for s in slices]


def ports_handed_over(before: Iterable[Owned], after: Iterable[Owned]) -> int:
    """Ports owned by one machine before and by another after (a sweep per IP)."""
    by_ip: dict[str, tuple[list[Owned], list[Owned]]] = defaultdict(lambda: ([], []))
    for slice_ in before:
        by_ip[slice_.ip][0].append(slice_)
    for slice_ in after:
        by_ip[slice_.ip][1].append(slice_)
    moved = 0
    for old, new in by_ip.values():
        old.sort()
        new.sort()
        i = j = 0
        while i < len(old) and j < len(new):
            a, b = old[i], new[j]
            overlap = min(a.hi, b.hi) - max(a.lo, b.lo) + 1
            if overlap > 0 and a.machine != b.machine:
                moved += overlap
            if a.hi < b.hi:
                i += 1
            else:
                j += 1
    return moved


def machines_renumbered(before: Iterable[Owned], after: Iterable[Owned], staying: set[str]) -> int:
    """Machines present in both plans whose ports changed."""
    ports: dict[str, list[set[Owned]]] = defaultdict(lambda: [set(), set()])
    for side, slices in enumerate((before, after)):
        for slice_ in slices:
            if slice_.machine in staying:
                ports[slice_.machine][side].add(slice_)
    return sum(1 for old, new in ports.values() if old != new)


def timed(call: Callable[[], object], runs: int) -> float:
    """Median wall time of ``runs`` calls, in seconds."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def peak_traced_mb(call: Callable[[], object]) -> float:
    gc.collect()
    tracemalloc.start()
    call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def full_pool_packing(slice_size: int) -> float:
    """Ports handed out ÷ usable ports on one IP filled until the next machine cannot fit."""
    ip = [EgressIP("10.0.0.1", "p")]
    policies = {"p": PoolPolicy(slice_size=slice_size)}
    count = USABLE // slice_size
    result = plan(ips=ip, machines=machines_named(count, "p"), policies=policies, now=NOW)
    try:
        plan(ips=ip, machines=machines_named(count + 1, "p"), policies=policies, now=NOW)
    except CapacityError:
        pass
    else:
        raise AssertionError(f"{slice_size}: the pool was not full")
    return sum(slice_.size for slice_ in result.slices) / USABLE


def machines_named(count: int, pool: str) -> list[Machine]:
    return [Machine(f"m{n:05d}", frozenset({pool})) for n in range(count)]


def line(label: str, *cells: object) -> None:
    shown = [f"{cell:.3f}" if isinstance(cell, float) else str(cell) for cell in cells]
    print(f"  {label:<40}" + "".join(f"{cell:>12}" for cell in shown))


def ratio(baseline: float, ours: float) -> str:
    return f"{baseline / ours:.1f}x" if ours else "inf"


def report_speed(dc: Datacenter, slices: tuple[Slice, ...]) -> None:
    naive_slices = naive_plan(dc, dc.machines)
    line("speed, median wall s", "ours", "naive", "naive/ours", "target")
    ours = timed(lambda: dc.plan(dc.machines), 3)
    naive = timed(lambda: naive_plan(dc, dc.machines), 1)
    line("full plan from nothing", ours, naive, ratio(naive, ours), f"<= {FULL_PLAN_BUDGET_S}")
    for label, change in (("one joins", joined), ("one leaves", left)):
        machines = change(dc.machines)
        ours = timed(partial(dc.plan, machines, slices), 5)
        naive = timed(partial(naive_plan, dc, machines, naive_slices), 3)
        line(f"re-plan after {label}", ours, naive, ratio(naive, ours), f"<= {REPLAN_BUDGET_S}")
    line("re-plan, nothing changed", timed(lambda: dc.plan(dc.machines, slices), 5))


def report_memory(dc: Datacenter, slices: tuple[Slice, ...]) -> None:
    line("memory, tracemalloc peak MB", "ours", "", "", "target")
    full = peak_traced_mb(lambda: dc.plan(dc.machines))
    again = peak_traced_mb(lambda: dc.plan(joined(dc.machines), slices))
    line("full plan from nothing", full, "", "", f"<= {MEMORY_BUDGET_MB}")
    line("re-plan after one joins", again, "", "", f"<= {MEMORY_BUDGET_MB}")


def report_churn(dc: Datacenter, slices: tuple[Slice, ...]) -> None:
    line(f"churn, summed over the {POOLS} pools", "ours", "det. NAT", "scratch", "target")
    nat_before = deterministic_nat(dc, dc.machines)
    for label, change in (("one joins", joined), ("one leaves", left)):
        machines = change(dc.machines)
        staying = {m.name for m in dc.machines} & {m.name for m in machines}
        afters = (
            owned(dc.plan(machines, slices)),
            deterministic_nat(dc, machines),
            owned(dc.plan(machines)),
        )
        befores = (owned(slices), nat_before, owned(slices))
        moved = [ports_handed_over(b, a) for b, a in zip(befores, afters, strict=True)]
        renumbered = [
            machines_renumbered(b, a, staying) for b, a in zip(befores, afters, strict=True)
        ]
        line(f"{label}: ports handed to another machine", *moved, 0)
        line(f"{label}: machines renumbered", *renumbered, 0)


def report_packing() -> None:
    line("packing, ports handed out / usable", "ours", "det. NAT", "ours/NAT", "target")
    for size in (256, 1024, 2048, 4096, 3000):
        hosts = USABLE // size
        nat = hosts * (USABLE // hosts) / USABLE
        ours = full_pool_packing(size)
        target = f">= {PACKING_TARGET}" if size == 2048 else ""
        line(f"one full IP, {size}-port slices", ours, nat, f"{ours / nat:.3f}", target)


def report(shape: Shape) -> None:
    dc = build(shape)
    slices = dc.plan(dc.machines)
    print(
        f"\n{shape.name}: {len(dc.ips)} IPs in {POOLS} pools, {len(dc.machines)} machines, "
        f"{shape.slice_size}-port slices, {len(slices)} slices planned"
    )
    for part in (report_speed, report_memory, report_churn):
        part(dc, slices)
        print()
    allocated = sum(slice_.size for slice_ in slices)
    line("ports handed out / usable, every IP", allocated / (len(dc.ips) * USABLE))


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as targeted
    started = time.perf_counter()
    print(f"portslice allocator benchmark: Python {platform.python_version()}, one core")
    for shape in (WIDE, DENSE):
        report(shape)
    print()
    report_packing()
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nprocess peak RSS (getrusage ru_maxrss, whole run): {maxrss_mb:.0f} MB")
    print(f"benchmark took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
