"""What the planner feeds the allocator, and the slices it gets back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from allocator.ports import HIGHEST_PORT, LOWEST_PORT, USABLE_PORTS, PortRange

ACTIVE = "active"
DRAINING = "draining"
RETIRED = "retired"

IP_STATES = frozenset({ACTIVE, DRAINING})
MACHINE_STATES = frozenset({ACTIVE, DRAINING, RETIRED})
SLICE_STATES = frozenset({ACTIVE, DRAINING})

MAX_SLICE_SIZE = USABLE_PORTS.size  # 64,512: one slice may take a whole IP


def _check_state(kind: str, state: str, allowed: frozenset[str]) -> None:
    if state not in allowed:
        raise ValueError(f"{kind} state={state!r} is not one of {sorted(allowed)}")


@dataclass(frozen=True, slots=True)
class EgressIP:
    """An egress address of one pool; slices are cut from its ``usable`` ports.

    ``reserved`` ports are never handed out (a listener, a health check). A
    ``draining`` IP keeps its slices steering until they drain, but gets no new ones.
    """

    address: str
    pool: str
    usable: PortRange = USABLE_PORTS
    reserved: frozenset[int] = frozenset()
    state: str = ACTIVE

    def __post_init__(self) -> None:
        _check_state("IP", self.state, IP_STATES)
        for port in self.reserved:
            if not LOWEST_PORT <= port <= HIGHEST_PORT:
                raise ValueError(f"IP {self.address} reserved port {port} is outside 0-65535")


@dataclass(frozen=True, slots=True)
class Machine:
    """A host that egresses through the pools it serves.

    It gets ``weight`` times its pools' base number of slices. A ``draining`` or
    ``retired`` machine gets nothing new and its slices drain.
    """

    name: str
    pools: frozenset[str]
    weight: int = 1
    state: str = ACTIVE

    def __post_init__(self) -> None:
        _check_state("machine", self.state, MACHINE_STATES)
        if self.weight < 1:
            raise ValueError(f"machine {self.name} weight={self.weight} must be at least 1")


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    """How a pool cuts its IPs.

    Every active machine gets ``slices_per_machine`` slices of ``slice_size``
    ports (times its weight). ``max_slices_per_machine`` turns on growth: a hot
    machine may get up to that many (times its weight); ``None`` means no growth,
    as Cloud NAT's dynamic allocation is off until a maximum is set.

    ``aligned`` gives each machine one contiguous range of that many adjacent
    slots, the same ports on every IP of the pool, so unmodified programs can
    take their source ports from it (see :mod:`allocator.aligned`).
    """

    slice_size: int = 2048
    slices_per_machine: int = 1
    max_slices_per_machine: int | None = None
    aligned: bool = False

    @property
    def growth_ceiling(self) -> int:
        """Most slices a weight-1 machine may hold."""
        if self.max_slices_per_machine is None:
            return self.slices_per_machine
        return self.max_slices_per_machine


class PolicyError(ValueError):
    """A pool policy field is out of bounds; ``field`` names it (for form errors)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def validate_policy(policy: PoolPolicy) -> PoolPolicy:
    """Return ``policy`` if every field is in bounds, else raise :class:`PolicyError`."""
    size = policy.slice_size
    if not 1 <= size <= MAX_SLICE_SIZE:
        raise PolicyError("slice_size", f"slice_size={size} must be between 1 and {MAX_SLICE_SIZE}")
    base = policy.slices_per_machine
    if base < 1:
        raise PolicyError("slices_per_machine", f"slices_per_machine={base} must be at least 1")
    ceiling = policy.max_slices_per_machine
    if ceiling is not None and ceiling < base:
        raise PolicyError(
            "max_slices_per_machine",
            f"max_slices_per_machine={ceiling} is below slices_per_machine={base}",
        )
    return policy


@dataclass(frozen=True, slots=True)
class Slice:
    """Ports ``lo``-``hi`` of egress IP ``ip``, owned by ``machine``.

    A ``draining`` slice still steers to its machine until ``drain_until``;
    nobody else gets its ports before then. Its pool is the pool of its IP.
    """

    ip: str
    lo: int
    hi: int
    machine: str
    state: str = ACTIVE
    drain_until: datetime | None = None

    def __post_init__(self) -> None:
        _check_state("slice", self.state, SLICE_STATES)
        # The cheap test first: a plan from nothing makes 100,000 of these.
        if not LOWEST_PORT <= self.lo <= self.hi <= HIGHEST_PORT:
            PortRange(self.lo, self.hi)  # raises ValueError naming the bad bound

    @property
    def ports(self) -> PortRange:
        return PortRange(self.lo, self.hi)

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1

    def __str__(self) -> str:
        return f"{self.ip}:{self.lo}-{self.hi} ({self.machine}, {self.state})"
