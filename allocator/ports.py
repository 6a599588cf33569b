"""Port ranges and the interval arithmetic the planner needs on them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

LOWEST_PORT = 0
HIGHEST_PORT = 65535
# 0-1023 are the privileged ports; no machine is ever handed one.
FIRST_UNPRIVILEGED_PORT = 1024


@dataclass(frozen=True, slots=True)
class PortRange:
    """An inclusive range of ports, ``lo`` to ``hi``."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        for name in ("lo", "hi"):
            port = getattr(self, name)
            if not LOWEST_PORT <= port <= HIGHEST_PORT:
                raise ValueError(
                    f"port range {name}={port} is outside {LOWEST_PORT}-{HIGHEST_PORT}"
                )
        if self.lo > self.hi:
            raise ValueError(f"port range lo={self.lo} is above hi={self.hi}")

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.lo <= port <= self.hi

    def overlaps(self, other: PortRange) -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def __str__(self) -> str:
        return f"{self.lo}-{self.hi}"


USABLE_PORTS = PortRange(FIRST_UNPRIVILEGED_PORT, HIGHEST_PORT)


def ranges_of_ports(ports: Iterable[int]) -> list[tuple[int, int]]:
    """Collapse ports into sorted, merged ``(lo, hi)`` runs: {5, 6, 7, 9} → [(5, 7), (9, 9)]."""
    runs: list[tuple[int, int]] = []
    for port in sorted(set(ports)):
        if runs and runs[-1][1] == port - 1:
            runs[-1] = (runs[-1][0], port)
        else:
            runs.append((port, port))
    return runs


def free_gaps(usable: PortRange, taken: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``usable`` not covered by ``taken`` (``(lo, hi)`` pairs sorted by ``lo``).

    ``taken`` may overlap itself and stray outside ``usable``; both are tolerated
    so callers can pass reserved ports and slices together.
    """
    gaps: list[tuple[int, int]] = []
    next_free = usable.lo
    for lo, hi in taken:
        if lo > next_free:
            gaps.append((next_free, min(lo - 1, usable.hi)))
        next_free = max(next_free, hi + 1)
        if next_free > usable.hi:
            return gaps
    gaps.append((next_free, usable.hi))
    return gaps
