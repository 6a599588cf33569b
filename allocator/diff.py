"""What a plan changes compared with the slices it started from."""

from __future__ import annotations

from dataclasses import dataclass, fields
from itertools import chain

from allocator.model import Slice


@dataclass(frozen=True, slots=True)
class PlanDiff:
    """Every slice of the new plan is in exactly one of added, revived, kept, draining,
    still_draining; ``freed`` holds previous slices the plan dropped.

    - ``added``: new slices.
    - ``revived``: draining slices handed back, active again, to the machine that had them.
    - ``draining``: slices that started draining in this plan (with their ``drain_until``).
    - ``freed``: previous slices dropped: their drain ended, or their IP is gone.
    - ``kept``: active slices carried over unchanged.
    - ``still_draining``: slices that were draining and still are.
    """

    added: tuple[Slice, ...] = ()
    revived: tuple[Slice, ...] = ()
    draining: tuple[Slice, ...] = ()
    freed: tuple[Slice, ...] = ()
    kept: tuple[Slice, ...] = ()
    still_draining: tuple[Slice, ...] = ()

    def summary(self) -> dict[str, int]:
        """Counts per kind, e.g. ``{"added": 3, "revived": 0, "draining": 1, ...}``."""
        return {kind.name: len(getattr(self, kind.name)) for kind in fields(self)}

    def machines_touched(self) -> frozenset[str]:
        """Machines whose slice set changed: the ones that need a new config bundle."""
        changed = chain(self.added, self.revived, self.draining, self.freed)
        return frozenset(slice_.machine for slice_ in changed)
