"""The live loop: each datacenter's rebalance policy, the record of every run, and
the reports from agents that broke the contract."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from allocator.demand import COLD, HOT
from planner import constants
from planner.choices import RebalanceOutcome
from planner.models.inventory import Datacenter
from planner.models.slices import PlanRevision

WINDOW_MINUTES = 15
INTERVAL_MINUTES = 5


class RebalancePolicy(models.Model):
    """How ``planner.rebalance`` treats one datacenter; defaults are the allocator's.

    A machine whose utilization high-water mark over ``window_minutes`` is above
    ``hot`` gets one more slice (up to its pool's ceiling); below ``cold`` it
    gives its highest slice back. Plans that only add are applied on their own
    when ``auto_apply`` is on; plans that drain a live slice wait as drafts.
    """

    datacenter = models.OneToOneField(
        Datacenter, on_delete=models.CASCADE, related_name="rebalance_policy"
    )
    enabled = models.BooleanField(default=True)
    auto_apply = models.BooleanField(
        default=True, help_text="Apply plans that only add (growth, new machines, freed drains)"
    )
    hot = models.FloatField(
        default=HOT,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Utilization above which a machine gets one more slice",
    )
    cold = models.FloatField(
        default=COLD,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Utilization below which a machine above its base gives one back",
    )
    window_minutes = models.PositiveIntegerField(
        default=WINDOW_MINUTES,
        validators=[MinValueValidator(1), MaxValueValidator(24 * 60)],
        help_text="Usage history the high-water mark is taken over",
    )
    interval_minutes = models.PositiveIntegerField(
        default=INTERVAL_MINUTES,
        validators=[MinValueValidator(1), MaxValueValidator(24 * 60)],
        help_text="Least time between two runs for this datacenter",
    )
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name_plural = "rebalance policies"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(cold__lt=models.F("hot")),
                name="rebalance_cold_below_hot",
                violation_error_message="cold must be below hot.",
            )
        ]

    def __str__(self) -> str:
        return f"rebalance {self.datacenter_id}"

    def clean(self) -> None:
        numbers = isinstance(self.hot, float | int) and isinstance(self.cold, float | int)
        if numbers and self.cold >= self.hot:
            raise ValidationError(
                {
                    "cold": ValidationError(
                        constants.ERR_COLD_HOT,
                        code="cold_hot",
                        params={"cold": self.cold, "hot": self.hot},
                    )
                }
            )


class RebalanceRun(models.Model):
    """One run of ``planner.rebalance`` for one datacenter: what it saw, what it did."""

    datacenter = models.ForeignKey(
        Datacenter, on_delete=models.CASCADE, related_name="rebalance_runs"
    )
    at = models.DateTimeField(db_index=True)
    outcome = models.CharField(max_length=16, choices=RebalanceOutcome.choices)
    saw = models.JSONField(default=dict, blank=True, help_text="usage, hot, cold, stale machines")
    changed = models.JSONField(default=dict, blank=True, help_text="the diff applied or drafted")
    detail = models.CharField(max_length=500, blank=True)
    revision = models.ForeignKey(
        PlanRevision, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    draft = models.ForeignKey(
        PlanRevision, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.datacenter_id} {self.at:%Y-%m-%d %H:%M} {self.outcome}"


class ReportRejection(models.Model):
    """Counts agent messages the planner refused, by message kind and field."""

    kind = models.CharField(max_length=16, help_text="ack or usage")
    field = models.CharField(max_length=32)
    count = models.PositiveBigIntegerField(default=0)
    last_at = models.DateTimeField()
    last_error = models.CharField(max_length=300)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["kind", "field"], name="report_rejection_unique")
        ]

    def __str__(self) -> str:
        return f"{self.kind}.{self.field}: {self.count}"
