"""The planner's tables, one module per topic."""

from planner.models.audit import AuditEntry
from planner.models.inventory import Datacenter, EgressIP, EgressPool, Machine
from planner.models.slices import PlanRevision, PortSlice

__all__ = [
    "AuditEntry",
    "Datacenter",
    "EgressIP",
    "EgressPool",
    "Machine",
    "PlanRevision",
    "PortSlice",
]
