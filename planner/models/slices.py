"""Port slices and the plan revisions that create them."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.postgres.constraints import ExclusionConstraint
from django.contrib.postgres.fields import RangeOperators
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Func, Value

from planner import constants
from planner.choices import RevisionStatus, SliceState
from planner.models.inventory import Datacenter, EgressIP, Machine


class PlanRevision(models.Model):
    """One numbered plan of a datacenter's slices: drafted, then applied once."""

    datacenter = models.ForeignKey(Datacenter, on_delete=models.PROTECT, related_name="revisions")
    number = models.PositiveIntegerField()
    status = models.CharField(
        max_length=16, choices=RevisionStatus.choices, default=RevisionStatus.DRAFT
    )
    reason = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    applied_at = models.DateTimeField(null=True, blank=True)
    diff_summary = models.JSONField(default=dict, blank=True)
    # A draft remembers what it was planned on, so approving it can tell
    # whether those inputs still hold (the base revision, the inputs' digest)
    # and re-plan with the same usage.
    base_revision = models.PositiveIntegerField(null=True, blank=True)
    inputs_digest = models.CharField(max_length=64, blank=True)
    usage = models.JSONField(default=dict, blank=True, help_text="usage levels a draft used")

    class Meta:
        ordering = ["datacenter__code", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["datacenter", "number"], name="revision_unique_number")
        ]

    def __str__(self) -> str:
        return f"{self.datacenter.code} r{self.number}"


class Int4Range(Func):
    """``int4range(lo, hi, '[]')``: a slice's ports as a closed PostgreSQL range."""

    function = "int4range"
    output_field = models.Field()

    def __init__(self, lo: str, hi: str) -> None:
        super().__init__(models.F(lo), models.F(hi), Value("[]"))


class NoOverlapConstraint(ExclusionConstraint):
    """Two live slices on one IP never share a port.

    On PostgreSQL this is a real GiST exclusion constraint (btree_gist gives
    ``=`` on the IP), so the database refuses an overlap whatever code wrote
    it. SQLite has no exclusion constraints: there the DDL is skipped and
    ``validate()``, which Django runs from ``full_clean()`` and the services
    run inside their write transaction, is the check.
    """

    def constraint_sql(self, model: Any, schema_editor: Any) -> Any:
        if schema_editor.connection.vendor != "postgresql":
            return None
        return super().constraint_sql(model, schema_editor)

    def create_sql(self, model: Any, schema_editor: Any) -> Any:
        if schema_editor.connection.vendor != "postgresql":
            return None
        return super().create_sql(model, schema_editor)

    def remove_sql(self, model: Any, schema_editor: Any) -> Any:
        if schema_editor.connection.vendor != "postgresql":
            return None
        return super().remove_sql(model, schema_editor)

    def validate(
        self, model: Any, instance: Any, exclude: Any = None, using: str = "default"
    ) -> None:
        if exclude and {"ip", "lo", "hi"} & set(exclude):
            return
        overlapping = model._default_manager.using(using).filter(
            ip_id=instance.ip_id, lo__lte=instance.hi, hi__gte=instance.lo
        )
        if not instance._state.adding:
            overlapping = overlapping.exclude(pk=instance.pk)
        if overlapping.exists():
            raise ValidationError(self.get_violation_error_message(), code="overlap")


class PortSlice(models.Model):
    """Ports ``lo..hi`` (inclusive) of one egress IP, owned by one machine.

    Only live slices are stored: ``active`` ones, and ``draining`` ones that
    still steer to their old owner until ``drain_until``. A freed slice is
    deleted; its history stays in the revisions and the audit trail.
    """

    ip = models.ForeignKey(EgressIP, on_delete=models.PROTECT, related_name="slices")
    machine = models.ForeignKey(Machine, on_delete=models.PROTECT, related_name="slices")
    lo = models.PositiveIntegerField()
    hi = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=SliceState.choices, default=SliceState.ACTIVE)
    drain_until = models.DateTimeField(null=True, blank=True)
    revision = models.ForeignKey(
        PlanRevision, null=True, blank=True, on_delete=models.SET_NULL, related_name="slices"
    )

    class Meta:
        verbose_name = "port slice"
        ordering = ["ip__address", "lo"]
        indexes = [
            models.Index(fields=["machine", "state"], name="slice_machine_state"),
            # Which pools hold an ended drain: asked by every scoped plan, over few rows.
            models.Index(
                fields=["drain_until"],
                condition=models.Q(state=SliceState.DRAINING),
                name="slice_draining_until",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(lo__lte=models.F("hi"))
                & models.Q(lo__gte=constants.PORT_MIN)
                & models.Q(hi__lte=constants.PORT_MAX),
                name="slice_lo_le_hi_in_port_space",
                violation_error_message="A slice needs 1 <= lo <= hi <= 65535.",
            ),
            NoOverlapConstraint(
                name="slice_no_overlap_per_ip",
                expressions=[("ip", RangeOperators.EQUAL), (Int4Range("lo", "hi"), "&&")],
                violation_error_message=constants.ERR_SLICE_OVERLAP,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.ip_id}:{self.lo}-{self.hi} -> {self.machine_id}"

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1

    def clean(self) -> None:
        if not (isinstance(self.lo, int) and isinstance(self.hi, int)):
            return
        if self.lo > self.hi:
            raise ValidationError(
                {
                    "hi": ValidationError(
                        constants.ERR_SLICE_ORDER,
                        code="slice_order",
                        params={"lo": self.lo, "hi": self.hi},
                    )
                }
            )
        if self.ip_id is not None:
            self._clean_inside_usable_range(self.ip)

    def _clean_inside_usable_range(self, ip: EgressIP) -> None:
        if self.lo < ip.usable_lo or self.hi > ip.usable_hi:
            raise ValidationError(
                {
                    "lo": ValidationError(
                        constants.ERR_SLICE_RANGE,
                        code="slice_range",
                        params={
                            "lo": self.lo,
                            "hi": self.hi,
                            "ip": ip.address,
                            "ulo": ip.usable_lo,
                            "uhi": ip.usable_hi,
                        },
                    )
                }
            )
