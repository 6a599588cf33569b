"""Signing keys and the signed config bundles made with them."""

from __future__ import annotations

from django.db import models

from planner.choices import BundleStatus, KeyStatus
from planner.models.inventory import Machine
from planner.models.slices import PlanRevision


class SigningKey(models.Model):
    """An Ed25519 key the planner signs bundles with.

    Only the public half is stored (as a JWK); the private half lives in a
    file under ``SIGNING_KEY_DIR`` named by the ``kid``, never in the database.
    ``active``: signs new bundles (exactly one at a time). ``published``: no
    longer signs but stays in the JWKS so agents accept what it signed during
    a rollover. ``retired``: gone from the JWKS.
    """

    kid = models.CharField(max_length=64, unique=True, help_text="RFC 7638 JWK thumbprint")
    public_jwk = models.JSONField()
    status = models.CharField(max_length=16, choices=KeyStatus.choices, default=KeyStatus.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["status"],
                condition=models.Q(status="active"),
                name="one_active_signing_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kid[:12]}… ({self.status})"


class ConfigBundle(models.Model):
    """One signed config for one machine: its slices at one revision."""

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="bundles")
    serial = models.PositiveBigIntegerField()
    revision = models.ForeignKey(
        PlanRevision, null=True, blank=True, on_delete=models.SET_NULL, related_name="bundles"
    )
    kid = models.CharField(max_length=64)
    token = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    # Resends back off: the n-th send waits RESEND_AFTER * 2**(n-1), capped at
    # RESEND_MAX, before the next (planner.selectors.bundles_due).
    attempts = models.PositiveIntegerField(default=0, help_text="times sent")
    next_send_at = models.DateTimeField(
        null=True, blank=True, help_text="when reconcile may send it again, unless acked"
    )
    acked_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=BundleStatus.choices, default=BundleStatus.PENDING
    )
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["machine__hostname", "-serial"]
        constraints = [
            models.UniqueConstraint(fields=["machine", "serial"], name="bundle_unique_serial")
        ]
        indexes = [models.Index(fields=["status"], name="bundle_status")]

    def __str__(self) -> str:
        return f"{self.machine_id} #{self.serial} ({self.status})"
