"""Choice sets shared by the planner's models, forms and API."""

from __future__ import annotations

from django.db import models


class IPState(models.TextChoices):
    ACTIVE = "active", "Active"
    DRAINING = "draining", "Draining"


class MachineState(models.TextChoices):
    ACTIVE = "active", "Active"
    DRAINING = "draining", "Draining"
    RETIRED = "retired", "Retired"


class AgentStatus(models.TextChoices):
    """What a machine's host is doing with its newest bundle (``selectors.machine_status``).

    Only ``enforcing`` is healthy; every other value is shown as a problem.
    """

    ENFORCING = "enforcing", "applied and enforcing"
    PARTIAL = "partial", "applied partially"
    FAILED = "failed", "failed"
    REJECTED = "rejected", "rejected"
    PENDING = "pending", "pending"
    STALE = "stale", "stale"
    NEVER_SEEN = "never_seen", "never seen"
    RETIRED = "retired", "retired"


class SliceState(models.TextChoices):
    ACTIVE = "active", "Active"
    DRAINING = "draining", "Draining"


class RevisionStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    APPLIED = "applied", "Applied"
    SUPERSEDED = "superseded", "Superseded"


class AuditAction(models.TextChoices):
    CREATE = "create", "Create"
    UPDATE = "update", "Update"
    DELETE = "delete", "Delete"
    IMPORT = "import", "Import"
    PLAN_APPLY = "plan_apply", "Plan applied"


class KeyStatus(models.TextChoices):
    ACTIVE = "active", "Active (signs)"
    PUBLISHED = "published", "Published (verifies only)"
    RETIRED = "retired", "Retired"


class BundleStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    APPLIED = "applied", "Applied"
    REJECTED = "rejected", "Rejected"
    FAILED = "failed", "Failed"
    SUPERSEDED = "superseded", "Superseded"


class TokenKind(models.TextChoices):
    USER = "user", "User (acts with the user's role)"
    AGENT = "agent", "Agent (one machine's bundle and the keys)"
    LOAD_BALANCER = "lb", "Load balancer (steering tables)"


class RebalanceOutcome(models.TextChoices):
    APPLIED = "applied", "Applied (only adds)"
    DRAFTED = "drafted", "Draft left for an operator"
    BOTH = "applied_drafted", "Applied the adds, drafted the rest"
    UNCHANGED = "unchanged", "Nothing to change"
    SHORTFALL = "shortfall", "A pool is short of IPs"
    CONFLICT = "conflict", "Another apply was running"
