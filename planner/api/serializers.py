"""Shapes of the API's bodies. Type checks here; model rules run in the services."""

from __future__ import annotations

from rest_framework import serializers

from planner.models import Datacenter, EgressIP, EgressPool, Machine, PlanRevision, PortSlice


class DatacenterSerializer(serializers.ModelSerializer[Datacenter]):
    class Meta:
        model = Datacenter
        fields = ["code", "name", "country", "region", "city"]


class EgressPoolSerializer(serializers.ModelSerializer[EgressPool]):
    datacenter = serializers.SlugRelatedField(slug_field="code", queryset=Datacenter.objects.all())
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
        ]


class EgressIPSerializer(serializers.ModelSerializer[EgressIP]):
    reserved_ports = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=65535),
        required=False,
        max_length=65536,
    )

    class Meta:
        model = EgressIP
        fields = ["address", "pool", "usable_lo", "usable_hi", "reserved_ports", "state"]


class MachineSerializer(serializers.ModelSerializer[Machine]):
    datacenter = serializers.SlugRelatedField(slug_field="code", queryset=Datacenter.objects.all())
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
        ]
        read_only_fields = ["last_seen", "applied_serial", "bundle_serial"]


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
        ]
        read_only_fields = fields


class PlanApplySerializer(serializers.Serializer[dict[str, object]]):
    inputs_digest = serializers.RegexField(
        r"^[0-9a-f]{64}$",
        help_text="the inputs_digest of the preview being applied",
        error_messages={"invalid": "Expected the 64 hex digits of a preview's inputs_digest."},
    )
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
