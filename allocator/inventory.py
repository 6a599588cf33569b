"""The planner's inputs, validated, sorted into one canonical order and indexed.

Everything downstream walks these indexes, never the caller's iterables or
sets, so the same inputs in any order give the same plan.
"""

from __future__ import annotations

import socket
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from allocator.grid import grid_origin, listed_slots
from allocator.model import ACTIVE, EgressIP, Machine, PoolPolicy, Slice, validate_policy
from allocator.ports import ranges_of_ports

DEFAULT_POLICY = PoolPolicy()


def address_order(address: str) -> tuple[int, bytes, str]:
    """Sort key for addresses: IPv4 then IPv6, numerically (10.0.0.9 before 10.0.0.10),
    then anything else by text. ``inet_pton`` rather than ``ipaddress``: it is in C,
    and a large datacenter sorts thousands of addresses on every plan."""
    for order, family in enumerate((socket.AF_INET, socket.AF_INET6)):
        try:
            return (order, socket.inet_pton(family, address), address)
        except OSError:
            continue
    return (2, b"", address)


@dataclass(frozen=True, slots=True)
class IpLayout:
    """One egress IP with what slices are checked against: its pool's grid, its reserved ports."""

    ip: EgressIP
    rank: int
    slice_size: int
    origin: int
    usable_lo: int
    usable_hi: int
    reserved_runs: tuple[tuple[int, int], ...]
    reserved_ports: tuple[int, ...]
    slot_starts: frozenset[int] | None  # every slot of the empty IP, if few enough to list

    @property
    def address(self) -> str:
        return self.ip.address

    @property
    def pool(self) -> str:
        return self.ip.pool

    @property
    def is_active(self) -> bool:
        return self.ip.state == ACTIVE

    def holds_slice(self, lo: int, hi: int) -> bool:
        """Whether ``lo``-``hi`` is a whole slot of this IP's grid, clear of reserved ports."""
        size = self.slice_size
        return (
            hi - lo + 1 == size
            and (lo - self.origin) % size == 0
            and self.usable_lo <= lo
            and hi <= self.usable_hi
            and not (self.reserved_ports and self.touches_reserved(lo, hi))
        )

    def taken_with_reserved(self, slice_runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """``slice_runs`` (sorted) with the reserved ports merged in, sorted by lo."""
        if not self.reserved_runs:
            return slice_runs
        return sorted([*self.reserved_runs, *slice_runs])

    def touches_reserved(self, lo: int, hi: int) -> bool:
        reserved = self.reserved_ports
        index = bisect_left(reserved, lo)
        return index < len(reserved) and reserved[index] <= hi


@dataclass(frozen=True, slots=True)
class Inventory:
    """IPs and machines in canonical order, with the policy of every pool in play.

    ``members`` lists, per pool, the active machines that serve it, by name.
    """

    ips: Mapping[str, IpLayout]
    pools: Mapping[str, tuple[IpLayout, ...]]
    policies: Mapping[str, PoolPolicy]
    machines: Mapping[str, Machine]
    members: Mapping[str, tuple[Machine, ...]]
    member_names: Mapping[str, frozenset[str]]

    @classmethod
    def build(
        cls,
        ips: Iterable[EgressIP],
        machines: Iterable[Machine],
        policies: Mapping[str, PoolPolicy],
    ) -> Inventory:
        sorted_machines = _unique_machines(machines)
        sorted_ips = sorted(_unique_ips(ips), key=lambda ip: address_order(ip.address))
        pool_names = {ip.pool for ip in sorted_ips}
        for machine in sorted_machines:
            pool_names.update(machine.pools)
        pool_policies = {
            pool: validate_policy(policies.get(pool, DEFAULT_POLICY)) for pool in sorted(pool_names)
        }
        grids: dict[tuple[object, ...], frozenset[int] | None] = {}
        layouts = {
            ip.address: _layout(ip, rank, pool_policies[ip.pool].slice_size, grids)
            for rank, ip in enumerate(sorted_ips)
        }
        pools: dict[str, list[IpLayout]] = {pool: [] for pool in pool_policies}
        for layout in layouts.values():
            pools[layout.pool].append(layout)
        members: dict[str, list[Machine]] = {pool: [] for pool in pool_policies}
        for machine in sorted_machines:
            if machine.state == ACTIVE:
                for pool in machine.pools:
                    members[pool].append(machine)
        return cls(
            ips=layouts,
            pools={pool: tuple(members) for pool, members in pools.items()},
            policies=pool_policies,
            machines={machine.name: machine for machine in sorted_machines},
            members={pool: tuple(machines) for pool, machines in members.items()},
            member_names={
                pool: frozenset(machine.name for machine in machines)
                for pool, machines in members.items()
            },
        )


def _layout(
    ip: EgressIP,
    rank: int,
    slice_size: int,
    grids: dict[tuple[object, ...], frozenset[int] | None],
) -> IpLayout:
    """``grids`` caches slot lists: thousands of IPs share a handful of shapes."""
    origin = grid_origin(slice_size, ip.usable)
    reserved_runs = tuple(ranges_of_ports(ip.reserved))
    shape = (ip.usable, reserved_runs, slice_size)
    if shape not in grids:
        grids[shape] = listed_slots(ip.usable, reserved_runs, slice_size, origin)
    return IpLayout(
        ip=ip,
        rank=rank,
        slice_size=slice_size,
        origin=origin,
        usable_lo=ip.usable.lo,
        usable_hi=ip.usable.hi,
        reserved_runs=reserved_runs,
        reserved_ports=tuple(sorted(ip.reserved)),
        slot_starts=grids[shape],
    )


def _unique_ips(ips: Iterable[EgressIP]) -> list[EgressIP]:
    by_address: dict[str, EgressIP] = {}
    for ip in ips:
        if ip.address in by_address:
            raise ValueError(f"IP {ip.address} is listed twice")
        by_address[ip.address] = ip
    return list(by_address.values())


def _unique_machines(machines: Iterable[Machine]) -> list[Machine]:
    by_name: dict[str, Machine] = {}
    for machine in machines:
        if machine.name in by_name:
            raise ValueError(f"machine {machine.name} is listed twice")
        by_name[machine.name] = machine
    return [by_name[name] for name in sorted(by_name)]


def misfits(
    *, ips: Iterable[EgressIP], policies: Mapping[str, PoolPolicy], slices: Iterable[Slice]
) -> list[Slice]:
    """The ``slices`` that no longer fit their IP as the planner would cut it: the IP
    is gone, or the slice is not a whole slot of its pool's grid within the usable
    range and clear of reserved ports. A plan drains such a slice (or frees it,
    for a gone IP); the planner refuses inventory edits that would leave one silently."""
    layouts = Inventory.build(ips, (), policies).ips
    return [
        slice_
        for slice_ in slices
        if slice_.ip not in layouts or not layouts[slice_.ip].holds_slice(slice_.lo, slice_.hi)
    ]
