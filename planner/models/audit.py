"""The audit trail: who changed what, when, and from what to what."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from planner.choices import AuditAction


class AuditEntry(models.Model):
    """One change to the inventory, the slices or a plan. Never edited, never deleted."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.CharField(max_length=150, help_text="user name, or system:<process>")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    action = models.CharField(max_length=16, choices=AuditAction.choices)
    model = models.CharField(max_length=64, db_index=True)
    object_pk = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200)
    changes = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name_plural = "audit entries"
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["model", "object_pk"], name="audit_object")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.object_repr}"
