"""Shapes of the API's bodies. Type checks here; model rules run in the services."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from django.core.validators import ProhibitNullCharactersValidator
from django.db.models import Model
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from planner import constants
from planner.choices import AgentStatus, BundleStatus
from planner.forecast import Outlook
from planner.models import (
    Datacenter,
    EgressIP,
    EgressPool,
    Gateway,
    Machine,
    PlanRevision,
    PortSlice,
    RebalancePolicy,
    RebalanceRun,
)
from planner.selectors import ENFORCEMENT_PARTS, MachineStatus, machine_status, stale_cutoff


class NameRelatedField(serializers.SlugRelatedField[Any]):
    """A related row named by a unique text column (a datacenter's ``code``).

    What no name can be (not text, a NUL byte, longer than the column) is a
    field error before any query: PostgreSQL would raise on the NUL.
    """

    default_error_messages = {
        "too_long": "Ensure this field has no more than {max_length} characters.",
    }

    def __init__(self, *, model: type[Model], slug_field: str, **kwargs: Any) -> None:
        self.max_length: int | None = getattr(model._meta.get_field(slug_field), "max_length", None)
        queryset = model._default_manager.all()
        super().__init__(slug_field=slug_field, queryset=queryset, **kwargs)

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid")
        ProhibitNullCharactersValidator()(data)
        if self.max_length is not None and len(data) > self.max_length:
            self.fail("too_long", max_length=self.max_length)
        return super().to_internal_value(data)


class DatacenterSerializer(serializers.ModelSerializer[Datacenter]):
    class Meta:
        model = Datacenter
        fields = ["code", "name", "country", "region", "city"]


class EgressPoolSerializer(serializers.ModelSerializer[EgressPool]):
    datacenter = NameRelatedField(model=Datacenter, slug_field="code")
    key = serializers.CharField(read_only=True)

    class Meta:
        model = EgressPool
        fields = [
            "id",
            "key",
            "datacenter",
            "purpose",
            "country",
            "region",
            "city",
            "slice_size",
            "slices_per_machine",
            "max_slices_per_machine",
            "aligned",
        ]


class EgressIPSerializer(serializers.ModelSerializer[EgressIP]):
    reserved_ports = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=65535),
        required=False,
        max_length=constants.MAX_RESERVED_PORTS,
    )

    class Meta:
        model = EgressIP
        fields = ["address", "pool", "usable_lo", "usable_hi", "reserved_ports", "state"]


class EnforcementPartSerializer(serializers.Serializer[Any]):
    """One part of enforcement as the agent last reported it."""

    part = serializers.ChoiceField(choices=list(ENFORCEMENT_PARTS))
    name = serializers.CharField(help_text="The part in words")
    state = serializers.ChoiceField(choices=["on", "off", "failed", "unknown"])
    detail = serializers.CharField(help_text="Why, in the agent's words")


class MachineSerializer(serializers.ModelSerializer[Machine]):
    datacenter = NameRelatedField(model=Datacenter, slug_field="code")
    pools = serializers.PrimaryKeyRelatedField(
        many=True, queryset=EgressPool.objects.all(), required=False
    )

    class Meta:
        model = Machine
        fields = [
            "hostname",
            "datacenter",
            "address",
            "state",
            "weight",
            "pools",
            "last_seen",
            "applied_serial",
            "bundle_serial",
            "stale",
            "stale_since",
            "status",
            "status_reason",
            "bundle_status",
            "enforcement",
        ]
        read_only_fields = ["last_seen", "applied_serial", "bundle_serial", "stale_since"]

    stale = serializers.SerializerMethodField()
    status = serializers.SerializerMethodField(
        help_text="What the host does with its newest bundle; only enforcing is healthy"
    )
    status_reason = serializers.SerializerMethodField(help_text="Why, in words")
    bundle_status = serializers.SerializerMethodField(
        help_text="Status of the newest bundle signed for it (null: none signed)"
    )
    enforcement = serializers.SerializerMethodField(
        help_text="Each part of enforcement the agent last reported"
    )

    def _status(self, machine: Machine) -> MachineStatus:
        # Four fields from one derivation (and at most one query per machine not annotated).
        cached: MachineStatus | None = getattr(machine, "_agent_status", None)
        if cached is None:
            cached = machine_status(machine=machine)
            machine._agent_status = cached  # type: ignore[attr-defined]
        return cached

    @extend_schema_field(serializers.ChoiceField(choices=AgentStatus.choices))
    def get_status(self, machine: Machine) -> str:
        return self._status(machine).status

    def get_status_reason(self, machine: Machine) -> str:
        return self._status(machine).reason

    @extend_schema_field(serializers.ChoiceField(choices=BundleStatus.choices, allow_null=True))
    def get_bundle_status(self, machine: Machine) -> str | None:
        return self._status(machine).bundle_status

    @extend_schema_field(EnforcementPartSerializer(many=True))
    def get_enforcement(self, machine: Machine) -> list[dict[str, str]]:
        return [asdict(part) for part in self._status(machine).enforcement]

    def get_stale(self, machine: Machine) -> bool:
        """Its agent reported once, then nothing for ``AGENT_STALE_MINUTES``."""
        seen = machine.last_seen
        return seen is not None and seen < stale_cutoff()


class PortSliceSerializer(serializers.ModelSerializer[PortSlice]):
    ip = serializers.CharField(source="ip.address")
    pool = serializers.CharField(source="ip.pool.key")
    machine = serializers.CharField(source="machine.hostname")
    revision = serializers.IntegerField(source="revision.number", allow_null=True)

    class Meta:
        model = PortSlice
        fields = ["id", "ip", "pool", "lo", "hi", "machine", "state", "drain_until", "revision"]
        read_only_fields = fields


class PlanRevisionSerializer(serializers.ModelSerializer[PlanRevision]):
    datacenter = serializers.CharField(source="datacenter.code")
    created_by = serializers.CharField(source="created_by.username", allow_null=True)

    class Meta:
        model = PlanRevision
        fields = [
            "datacenter",
            "number",
            "status",
            "reason",
            "created_by",
            "created_at",
            "applied_at",
            "diff_summary",
            "base_revision",
        ]
        read_only_fields = fields


class PlanApplySerializer(serializers.Serializer[dict[str, object]]):
    inputs_digest = serializers.RegexField(
        r"^[0-9a-f]{64}$",
        help_text="the inputs_digest of the preview being applied",
        error_messages={"invalid": "Expected the 64 hex digits of a preview's inputs_digest."},
    )
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class GeofeedQuerySerializer(serializers.Serializer[dict[str, object]]):
    datacenter = serializers.SlugField(
        max_length=Datacenter._meta.get_field("code").max_length,
        required=False,
        allow_blank=True,
        help_text="Only this datacenter's IPs",
    )


class RebalancePolicySerializer(serializers.ModelSerializer[RebalancePolicy]):
    """A datacenter's rebalance thresholds, window, interval and auto-apply switch."""

    datacenter = serializers.CharField(source="datacenter.code", read_only=True)

    class Meta:
        model = RebalancePolicy
        fields = [
            "datacenter",
            "enabled",
            "auto_apply",
            "hot",
            "cold",
            "window_minutes",
            "interval_minutes",
            "last_run_at",
        ]
        read_only_fields = ["datacenter", "last_run_at"]
        # The pair is checked by the model's clean() (cold below hot), whole or nothing.
        validators: list[Any] = []


class RebalanceRunSerializer(serializers.ModelSerializer[RebalanceRun]):
    revision = serializers.IntegerField(source="revision.number", allow_null=True)
    draft = serializers.IntegerField(source="draft.number", allow_null=True)

    class Meta:
        model = RebalanceRun
        fields = ["at", "outcome", "detail", "saw", "changed", "revision", "draft"]
        read_only_fields = fields


class GatewayRegisterSerializer(serializers.Serializer[Any]):
    """What an admin gives to register a gateway: the name it acks with, its datacenter."""

    name = serializers.CharField(max_length=253)
    datacenter = serializers.SlugRelatedField(slug_field="code", queryset=Datacenter.objects.all())


class GatewaySerializer(serializers.ModelSerializer[Gateway]):
    datacenter = serializers.SlugRelatedField(slug_field="code", read_only=True)  # type: ignore[var-annotated]

    class Meta:
        model = Gateway
        fields = [
            "name", "datacenter", "revision", "etag", "status", "detail", "slices",
            "applied_at", "last_seen",
        ]  # fmt: skip


class PoolForecastSerializer(serializers.Serializer[Any]):
    """A pool's exhaustion forecast (:func:`planner.forecast.pool_forecast`)."""

    pool = serializers.CharField(help_text="the pool's key")
    outlook = serializers.ChoiceField(
        choices=[outlook.value for outlook in Outlook],
        help_text="not_enough_history, exhausted (no free slot now), runs_out (within the "
        "look-ahead) or steady",
    )
    now = serializers.DateTimeField()
    capacity = serializers.IntegerField(help_text="slots of the pool's active IPs")
    demand_now = serializers.FloatField(
        allow_null=True, help_text="slices its machines need now, on the fitted line"
    )
    growth_per_day = serializers.FloatField(allow_null=True, help_text="slices a day")
    exhausts_at = serializers.DateTimeField(allow_null=True, help_text="the line reaches capacity")
    seconds_left = serializers.FloatField(
        allow_null=True, help_text="until exhausts_at; null when steady or not enough history"
    )
    earliest = serializers.DateTimeField(allow_null=True, help_text="the band's early edge")
    latest = serializers.DateTimeField(
        allow_null=True, help_text="the band's late edge; null: not within a year"
    )
    horizon_at = serializers.DateTimeField(allow_null=True)
    ips_needed = serializers.IntegerField(help_text="more IPs the pool needs by horizon_at")
    points = serializers.IntegerField(help_text="demand points the fit used")
    summary = serializers.CharField(help_text="the forecast in one sentence")
