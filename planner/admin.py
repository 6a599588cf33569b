"""The Django admin: the operators' first UI over the inventory and the slices."""

from __future__ import annotations

from django.contrib import admin

from planner.models import (
    ApiToken,
    AuditEntry,
    ConfigBundle,
    Datacenter,
    EgressIP,
    EgressPool,
    Machine,
    PlanRevision,
    PortSlice,
    SigningKey,
    SliceUsage,
)


@admin.register(Datacenter)
class DatacenterAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "country", "region", "city"]
    search_fields = ["code", "name", "city"]
    list_filter = ["country"]


@admin.register(EgressPool)
class EgressPoolAdmin(admin.ModelAdmin):
    list_display = ["__str__", "datacenter", "purpose", "country", "region", "city", "slice_size"]
    search_fields = ["purpose", "country", "city", "datacenter__code"]
    list_filter = ["datacenter", "purpose", "country"]
    list_select_related = ["datacenter"]


@admin.register(EgressIP)
class EgressIPAdmin(admin.ModelAdmin):
    list_display = ["address", "pool", "state", "usable_lo", "usable_hi"]
    search_fields = ["address", "pool__purpose", "pool__datacenter__code"]
    list_filter = ["state", "pool__datacenter", "pool__purpose", "pool__country"]
    list_select_related = ["pool__datacenter"]
    autocomplete_fields = ["pool"]


@admin.register(Machine)
class MachineAdmin(admin.ModelAdmin):
    list_display = ["hostname", "datacenter", "address", "state", "weight", "last_seen"]
    search_fields = ["hostname", "address"]
    list_filter = ["state", "datacenter"]
    list_select_related = ["datacenter"]
    filter_horizontal = ["pools"]
    readonly_fields = ["last_seen", "applied_serial"]


@admin.register(PortSlice)
class PortSliceAdmin(admin.ModelAdmin):
    list_display = ["ip", "lo", "hi", "machine", "state", "drain_until", "revision"]
    search_fields = ["ip__address", "machine__hostname"]
    list_filter = ["state", "ip__pool__datacenter", "ip__pool__purpose"]
    list_select_related = ["ip", "machine", "revision__datacenter"]
    autocomplete_fields = ["ip", "machine"]
    raw_id_fields = ["revision"]


@admin.register(PlanRevision)
class PlanRevisionAdmin(admin.ModelAdmin):
    list_display = ["__str__", "status", "reason", "created_by", "created_at", "applied_at"]
    list_filter = ["status", "datacenter"]
    search_fields = ["reason", "datacenter__code"]
    list_select_related = ["datacenter", "created_by"]


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """Read-only: the trail is written by the planner, never edited by hand."""

    list_display = ["at", "actor", "action", "model", "object_repr"]
    list_filter = ["action", "model"]
    search_fields = ["actor", "object_repr", "object_pk"]
    date_hierarchy = "at"

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(SigningKey)
class SigningKeyAdmin(admin.ModelAdmin):
    """Keys change only through ``manage.py signing_key`` (it writes the private file)."""

    list_display = ["kid", "status", "created_at", "retired_at"]
    list_filter = ["status"]
    readonly_fields = ["kid", "public_jwk", "status", "created_at", "retired_at"]

    def has_add_permission(self, request: object) -> bool:
        return False


@admin.register(ConfigBundle)
class ConfigBundleAdmin(admin.ModelAdmin):
    list_display = ["machine", "serial", "status", "created_at", "sent_at", "acked_at", "error"]
    list_filter = ["status", "machine__datacenter"]
    search_fields = ["machine__hostname", "error"]
    list_select_related = ["machine"]
    readonly_fields = [f.name for f in ConfigBundle._meta.fields]

    def has_add_permission(self, request: object) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are made with ``manage.py api_token create`` (the key is shown once);
    here they can be looked at and revoked."""

    list_display = ["name", "kind", "user", "machine", "datacenter", "last_used_at", "revoked"]
    list_filter = ["kind", "revoked"]
    search_fields = ["name", "user__username", "machine__hostname"]
    fields = ["name", "kind", "user", "machine", "datacenter", "last_used_at", "revoked"]
    readonly_fields = ["name", "kind", "user", "machine", "datacenter", "last_used_at"]

    def has_add_permission(self, request: object) -> bool:
        return False


@admin.register(SliceUsage)
class SliceUsageAdmin(admin.ModelAdmin):
    list_display = ["slice", "at", "tcp", "udp"]
    list_select_related = ["slice__ip", "slice__machine"]
    search_fields = ["slice__machine__hostname", "slice__ip__address"]
