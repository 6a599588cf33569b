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
