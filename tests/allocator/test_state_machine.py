"""A datacenter's life as a Hypothesis state machine.

Machines and IPs come and go, drain, change weight, pools and usage; time
passes. After every step the datacenter is re-planned from the previous
slices and every rule is checked. A CapacityError is a legitimate outcome
when the pools are really short: then the shortfall itself is checked (that
many more IPs serve everyone, one fewer does not) and the last good slices stay.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from allocator import CapacityError, EgressIP, Machine, PoolPolicy, PortRange, Slice
from tests.allocator import invariants
from tests.allocator.invariants import Inputs
from tests.allocator.strategies import (
    DRAIN_FOR,
    EXAMPLES,
    POOLS,
    USABLE_SHAPES,
    machine_pools,
    policies,
)

START = datetime(2025, 3, 1, 9, 0)
pick = st.integers(min_value=0, max_value=1_000)


class Datacenter(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ips: dict[str, EgressIP] = {}
        self.machines: dict[str, Machine] = {}
        self.usage: dict[tuple[str, str], float] = {}
        self.policies: dict[str, PoolPolicy] = {}
        self.slices: tuple[Slice, ...] = ()
        self.now = START
        self.added_ips = 0
        self.added_machines = 0

    def _replan(self) -> None:
        inputs = Inputs(
            ips=tuple(self.ips.values()),
            machines=tuple(self.machines.values()),
            previous=self.slices,
            policies=self.policies,
            now=self.now,
            drain_for=DRAIN_FOR,
            usage=dict(self.usage) or None,
        )
        try:
            result = inputs.plan()
        except CapacityError as error:
            invariants.check_shortfall(inputs, error)
            return
        invariants.check_plan(inputs, result)
        self.slices = result.slices

    @staticmethod
    def _chosen(keys: Mapping[str, object], index: int) -> str:
        return sorted(keys)[index % len(keys)]

    @initialize(chosen=policies(), first_ips=st.integers(len(POOLS), 2 * len(POOLS)))
    def open_datacenter(self, chosen: dict[str, PoolPolicy], first_ips: int) -> None:
        self.policies = chosen
        for n in range(first_ips):
            self._add_ip(POOLS[n % len(POOLS)], PortRange(1024, 65535), frozenset())
        self._replan()

    def _add_ip(self, pool: str, usable: PortRange, reserved: frozenset[int]) -> None:
        self.added_ips += 1
        # Never reuse an address: a returning address would come back with another shape.
        address = f"10.{self.added_ips // 250}.{self.added_ips % 250}.1"
        self.ips[address] = EgressIP(address, pool, usable, reserved)

    @rule(
        pool=st.sampled_from(POOLS),
        usable=st.sampled_from(USABLE_SHAPES),
        reserved=st.frozensets(st.integers(20000, 29999), max_size=2),
    )
    def add_ip(self, pool: str, usable: PortRange, reserved: frozenset[int]) -> None:
        self._add_ip(pool, usable, frozenset(p for p in reserved if p in usable))
        self._replan()

    # Keep a few IPs around: a history of empty pools would be one long shortage.
    @precondition(lambda self: len(self.ips) > len(POOLS))
    @rule(index=pick)
    def remove_ip(self, index: int) -> None:
        del self.ips[self._chosen(self.ips, index)]
        self._replan()

    @precondition(lambda self: self.ips)
    @rule(index=pick, state=st.sampled_from(("active", "draining")))
    def set_ip_state(self, index: int, state: str) -> None:
        ip = self.ips[self._chosen(self.ips, index)]
        self.ips[ip.address] = EgressIP(ip.address, ip.pool, ip.usable, ip.reserved, state)
        self._replan()

    @rule(pools=machine_pools(), weight=st.sampled_from((1, 1, 1, 2, 3)))
    def add_machine(self, pools: frozenset[str], weight: int) -> None:
        self.added_machines += 1
        name = f"host{self.added_machines:03d}"
        self.machines[name] = Machine(name, pools, weight)
        self._replan()

    @precondition(lambda self: self.machines)
    @rule(index=pick)
    def remove_machine(self, index: int) -> None:
        del self.machines[self._chosen(self.machines, index)]
        self._replan()

    @precondition(lambda self: self.machines)
    @rule(
        index=pick,
        state=st.sampled_from(("active", "draining", "retired")),
        weight=st.integers(1, 3),
        pools=st.none() | machine_pools(),
    )
    def change_machine(
        self, index: int, state: str, weight: int, pools: frozenset[str] | None
    ) -> None:
        machine = self.machines[self._chosen(self.machines, index)]
        self.machines[machine.name] = Machine(machine.name, pools or machine.pools, weight, state)
        self._replan()

    @precondition(lambda self: self.machines)
    @rule(
        index=pick,
        pool=st.sampled_from(POOLS),
        utilization=st.sampled_from((0.05, 0.5, 0.9, 1.0)) | st.none(),
    )
    def report_usage(self, index: int, pool: str, utilization: float | None) -> None:
        owner = (self._chosen(self.machines, index), pool)
        if utilization is None:
            self.usage.pop(owner, None)
        else:
            self.usage[owner] = utilization
        self._replan()

    @rule(pool=st.sampled_from(POOLS), chosen=policies())
    def change_policy(self, pool: str, chosen: dict[str, PoolPolicy]) -> None:
        """An operator re-cuts a pool: its slices that no longer fit drain."""
        self.policies = {**self.policies, pool: chosen.get(pool, PoolPolicy())}
        self._replan()

    @rule(minutes=st.sampled_from((0, 10, 30, 59, 60, 61, 120)))
    def let_time_pass(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)
        self._replan()


Datacenter.TestCase.settings = settings(
    max_examples=max(EXAMPLES * 5 // 8, 1),
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_a_datacenter_stays_sound_through_any_history = Datacenter.TestCase
