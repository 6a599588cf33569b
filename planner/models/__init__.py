"""The planner's tables, one module per topic."""

from planner.models.audit import AuditEntry
from planner.models.gateways import Gateway
from planner.models.inventory import Datacenter, EgressIP, EgressPool, Machine, pool_key
from planner.models.loop import RebalancePolicy, RebalanceRun, ReportRejection
from planner.models.signing import ConfigBundle, SigningKey
from planner.models.slices import PlanRevision, PortSlice
from planner.models.tokens import ApiToken
from planner.models.usage import SliceUsage, UsageSample

__all__ = [
    "ApiToken",
    "ConfigBundle",
    "SigningKey",
    "SliceUsage",
    "UsageSample",
    "AuditEntry",
    "Datacenter",
    "EgressIP",
    "EgressPool",
    "Gateway",
    "Machine",
    "PlanRevision",
    "PortSlice",
    "RebalancePolicy",
    "RebalanceRun",
    "ReportRejection",
    "pool_key",
]
