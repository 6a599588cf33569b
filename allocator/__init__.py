"""Port-slice allocation engine: pure Python, standard library only.

Plans which machine owns which port range of which egress IP, and renders the
resulting steering table for a Linux gateway (:mod:`allocator.steering`, shared
by the planner's export and the agent's gateway). It never imports Django, the
planner or the agent; both of those may import it.
"""

from allocator.capacity import (
    CapacityError,
    PoolCapacity,
    PoolHeadroom,
    Shortfall,
    headroom,
    headroom_of_counts,
    ips_needed,
    slots_per_ip,
)
from allocator.diff import PlanDiff
from allocator.inventory import misfits
from allocator.model import (
    EgressIP,
    Machine,
    PolicyError,
    PoolPolicy,
    Slice,
    validate_policy,
)
from allocator.planning import DEFAULT_DRAIN, Plan, collector_paused, plan
from allocator.ports import USABLE_PORTS, PortRange

__all__ = [
    "DEFAULT_DRAIN",
    "USABLE_PORTS",
    "CapacityError",
    "EgressIP",
    "Machine",
    "Plan",
    "PlanDiff",
    "PolicyError",
    "PoolCapacity",
    "PoolHeadroom",
    "PoolPolicy",
    "PortRange",
    "Shortfall",
    "Slice",
    "collector_paused",
    "headroom",
    "headroom_of_counts",
    "ips_needed",
    "misfits",
    "plan",
    "slots_per_ip",
    "validate_policy",
]
