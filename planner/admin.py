"""The Django admin: a window on every table, and a door only where the services are.

- Inventory (datacenters, pools, egress IPs, machines): saves and deletes go
  through :mod:`planner.services.inventory`, so an admin edit gets the same
  validation, audit, datacenter lock and live-slice checks as the API. A
  refusal shows on the form (or the list) with the slices it names; the
  service's transaction rolls back, so nothing is half-written. (An edit that
  must move live slices is planned through the API's ``?plan=`` instead.)
- Slices, revisions, bundles, signing keys, usage and the audit trail are
  read-only: only plans, agents and key commands write them.
- Retiring a signing key and revoking an API token are actions that call
  their services.
"""

from __future__ import annotations

from typing import Any, cast

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.forms import BaseForm, ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from planner.models import (
    ApiToken,
    AuditEntry,
    ConfigBundle,
    Datacenter,
    EgressIP,
    EgressPool,
    Gateway,
    Machine,
    PlanRevision,
    PortSlice,
    RebalancePolicy,
    RebalanceRun,
    ReportRejection,
    SigningKey,
    SliceUsage,
    UsageSample,
)
from planner.services import inventory, keys, rebalance, steering, tokens
from planner.services.locks import Conflict

# What an inventory service refuses with: field errors, and conflicts (an edit
# that would displace live slices, a row still in use, a datacenter held too long
# by another writer). Either way its transaction rolled back: nothing was written.
SERVICE_ERRORS: tuple[type[Exception], ...] = (ValidationError, Conflict)


def describe(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{name}: {' '.join(texts)}" if name != "__all__" else " ".join(texts)
            for name, texts in _messages(error).items()
        )
    if isinstance(error, Conflict):
        named: list[Any] = [
            *cast(list[Any], error.details.get("slices", [])),
            *cast(list[Any], error.details.get("used_by", [])),
        ]
        return f"{error} {', '.join(map(str, named))}".strip()
    return str(error)


def _messages(error: ValidationError) -> dict[str, list[str]]:
    return error.message_dict if hasattr(error, "error_dict") else {"__all__": error.messages}


class ReadOnlyAdmin(admin.ModelAdmin):
    """Look, search and filter; no add, change or delete."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ServiceAdmin(admin.ModelAdmin):
    """Inventory admin whose writes are the inventory services' writes."""

    def save_model(self, request: HttpRequest, obj: Any, form: ModelForm, change: bool) -> None:
        # The service re-reads the row under the datacenter's lock and sets only
        # what this form changed, exactly as an API PATCH would: an edit made
        # meanwhile by someone else is kept, not overwritten by stale form data.
        saved = self.service_save(obj if change else type(obj)(), self.form_values(form), form)
        obj.pk = saved.pk

    def service_save(self, instance: Any, values: dict[str, Any], form: ModelForm) -> Any:
        return inventory.model_save(instance=instance, values=values)

    def form_values(self, form: ModelForm) -> dict[str, Any]:
        """The concrete fields the form changed (all of them on an add form)."""
        concrete = {field.name for field in self.model._meta.concrete_fields}
        changed = set(form.changed_data) if form.instance.pk else set(form.cleaned_data)
        return {
            name: value
            for name, value in form.cleaned_data.items()
            if name in concrete and name in changed
        }

    def save_related(
        self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool
    ) -> None:
        # Many-to-many fields went through the service in save_model.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        inventory.inventory_delete(instance=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        with transaction.atomic():
            for obj in queryset:
                inventory.inventory_delete(instance=obj)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except SERVICE_ERRORS as error:
            # The admin's transaction has rolled back. Show the form again with
            # what was typed and the service's reasons on it.
            request._service_refused = error  # type: ignore[attr-defined]
            self.message_user(request, describe(error), level=messages.ERROR)
            return super().changeform_view(request, object_id, form_url, extra_context)

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change, **kwargs)
        refused: Exception | None = getattr(request, "_service_refused", None)
        if refused is None:
            return form
        error = refused

        class RefusedForm(form):  # type: ignore[misc, valid-type]
            def clean(self) -> dict[str, Any]:
                cleaned = super().clean()
                add_service_error(self, error)
                return cleaned

        return RefusedForm

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except SERVICE_ERRORS as error:
            self.message_user(request, describe(error), level=messages.ERROR)
            return HttpResponseRedirect(request.path.removesuffix("delete/") + "change/")

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            return super().changelist_view(request, extra_context)
        except SERVICE_ERRORS as error:
            self.message_user(request, describe(error), level=messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())


def add_service_error(form: BaseForm, error: Exception) -> None:
    """Put a service's refusal on the form: on the field it names, else on top."""
    if not isinstance(error, ValidationError):
        form.add_error(None, describe(error))
        return
    for name, texts in _messages(error).items():
        if name in form.fields:
            form.add_error(name, texts)
        else:
            form.add_error(None, [t if name == "__all__" else f"{name}: {t}" for t in texts])


@admin.register(Datacenter)
class DatacenterAdmin(ServiceAdmin):
    list_display = ["code", "name", "country", "region", "city"]
    search_fields = ["code", "name", "city"]
    list_filter = ["country"]


@admin.register(EgressPool)
class EgressPoolAdmin(ServiceAdmin):
    list_display = [
        "__str__",
        "datacenter",
        "purpose",
        "country",
        "region",
        "city",
        "slice_size",
        "aligned",
    ]
    search_fields = ["purpose", "country", "city", "datacenter__code"]
    list_filter = ["datacenter", "purpose", "country", "aligned"]
    list_select_related = ["datacenter"]


@admin.register(EgressIP)
class EgressIPAdmin(ServiceAdmin):
    list_display = ["address", "pool", "state", "usable_lo", "usable_hi"]
    search_fields = ["address", "pool__purpose", "pool__datacenter__code"]
    list_filter = ["state", "pool__datacenter", "pool__purpose", "pool__country"]
    list_select_related = ["pool__datacenter"]
    autocomplete_fields = ["pool"]


@admin.register(Machine)
class MachineAdmin(ServiceAdmin):
    list_display = ["hostname", "datacenter", "address", "state", "weight", "last_seen"]
    search_fields = ["hostname", "address"]
    list_filter = ["state", "datacenter"]
    list_select_related = ["datacenter"]
    filter_horizontal = ["pools"]
    readonly_fields = ["last_seen", "applied_serial", "stale_since"]

    def service_save(self, instance: Any, values: dict[str, Any], form: ModelForm) -> Any:
        pools = form.cleaned_data.get("pools") if "pools" in form.changed_data else None
        return inventory.machine_save(machine=instance, values=values, pools=pools)


@admin.register(PortSlice)
class PortSliceAdmin(ReadOnlyAdmin):
    """Slices change only by applying a plan (which re-signs the bundles)."""

    list_display = ["ip", "lo", "hi", "machine", "state", "drain_until", "revision"]
    search_fields = ["ip__address", "machine__hostname"]
    list_filter = ["state", "ip__pool__datacenter", "ip__pool__purpose"]
    list_select_related = ["ip", "machine", "revision__datacenter"]


@admin.register(PlanRevision)
class PlanRevisionAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "status", "reason", "created_by", "created_at", "applied_at"]
    list_filter = ["status", "datacenter"]
    search_fields = ["reason", "datacenter__code"]
    list_select_related = ["datacenter", "created_by"]


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    """The trail is written by the planner, never edited by hand."""

    list_display = ["at", "actor", "action", "model", "object_repr"]
    list_filter = ["action", "model"]
    search_fields = ["actor", "object_repr", "object_pk"]
    date_hierarchy = "at"


class ActionAdmin(ReadOnlyAdmin):
    """Read-only, with actions that call a service; those need the change permission."""

    def has_service_permission(self, request: HttpRequest) -> bool:
        opts = self.model._meta
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    def run_each(self, request: HttpRequest, queryset: QuerySet[Any], call: Any, done: str) -> None:
        """``call(obj)`` for each selected row, each in its own transaction."""
        count = 0
        for obj in queryset:
            try:
                call(obj)
            except (ValidationError, keys.SigningKeyError) as error:
                self.message_user(request, f"{obj}: {describe(error)}", level=messages.ERROR)
            else:
                count += 1
        if count:
            self.message_user(request, f"{done}: {count}.", level=messages.SUCCESS)


@admin.register(SigningKey)
class SigningKeyAdmin(ActionAdmin):
    """Keys are made with ``manage.py signing_key`` (it writes the private file);
    here a published key can be retired."""

    list_display = ["kid", "status", "created_at", "retired_at"]
    list_filter = ["status"]
    actions = ["retire"]

    @admin.action(description="Retire the selected keys", permissions=["service"])
    def retire(self, request: HttpRequest, queryset: QuerySet[SigningKey]) -> None:
        self.run_each(
            request, queryset, lambda key: keys.signing_key_retire(kid=key.kid), "Keys retired"
        )


@admin.register(ConfigBundle)
class ConfigBundleAdmin(ReadOnlyAdmin):
    list_display = ["machine", "serial", "status", "created_at", "sent_at", "acked_at", "error"]
    list_filter = ["status", "machine__datacenter"]
    search_fields = ["machine__hostname", "error"]
    list_select_related = ["machine"]


@admin.register(ApiToken)
class ApiTokenAdmin(ActionAdmin):
    """Tokens are made with ``manage.py api_token create`` (the key is shown once);
    here they can be looked at and revoked."""

    list_display = ["name", "kind", "user", "machine", "datacenter", "last_used_at", "revoked"]
    list_filter = ["kind", "revoked"]
    search_fields = ["name", "user__username", "machine__hostname"]
    fields = ["name", "kind", "user", "machine", "datacenter", "last_used_at", "revoked"]
    actions = ["revoke"]

    @admin.action(description="Revoke the selected tokens", permissions=["service"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        self.run_each(
            request,
            queryset.filter(revoked=False),
            lambda token: tokens.api_token_revoke(token=token),
            "Tokens revoked",
        )


@admin.register(SliceUsage)
class SliceUsageAdmin(ReadOnlyAdmin):
    list_display = ["slice", "at", "tcp", "udp"]
    list_select_related = ["slice__ip", "slice__machine"]
    search_fields = ["slice__machine__hostname", "slice__ip__address"]


@admin.register(UsageSample)
class UsageSampleAdmin(ReadOnlyAdmin):
    list_display = ["machine", "ip", "lo", "hi", "at", "sockets"]
    list_filter = ["machine__datacenter"]
    list_select_related = ["machine"]
    search_fields = ["machine__hostname", "ip"]
    date_hierarchy = "at"


@admin.register(RebalancePolicy)
class RebalancePolicyAdmin(ServiceAdmin):
    """Thresholds, window, interval and auto-apply of each datacenter's rebalance.

    Saved through ``rebalance_policy_save`` as the API does: checked whole,
    under the datacenter's lock, and audited. A policy is not deleted (a
    datacenter without one runs on the defaults): switch it off instead.
    """

    list_display = [
        "datacenter",
        "enabled",
        "auto_apply",
        "hot",
        "cold",
        "window_minutes",
        "interval_minutes",
        "last_run_at",
    ]
    list_editable = ["enabled", "auto_apply"]
    readonly_fields = ["last_run_at"]

    def service_save(self, instance: Any, values: dict[str, Any], form: ModelForm) -> Any:
        datacenter = values.pop("datacenter", None) or instance.datacenter
        return rebalance.rebalance_policy_save(datacenter=datacenter, values=values)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RebalanceRun)
class RebalanceRunAdmin(ReadOnlyAdmin):
    """Read-only: what each rebalance run saw and did."""

    list_display = ["at", "datacenter", "outcome", "detail", "revision", "draft"]
    list_filter = ["outcome", "datacenter"]
    list_select_related = ["datacenter", "revision", "draft"]


@admin.register(ReportRejection)
class ReportRejectionAdmin(ReadOnlyAdmin):
    """Agent messages refused for breaking the contract, counted by field."""

    list_display = ["kind", "field", "count", "last_at", "last_error"]


@admin.register(Gateway)
class GatewayAdmin(admin.ModelAdmin):
    """An admin registers a gateway (name and datacenter) and may remove it; what
    it runs is what it reports, so nobody edits a registered one."""

    list_display = ["name", "datacenter", "revision", "status", "slices", "applied_at", "last_seen"]
    list_filter = ["datacenter", "status"]
    list_select_related = ["datacenter"]
    fields = ["name", "datacenter"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Any, form: ModelForm, change: bool) -> None:
        saved = steering.gateway_register(name=obj.name, datacenter=obj.datacenter)
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        steering.gateway_unregister(gateway=obj)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for gateway in queryset:
            steering.gateway_unregister(gateway=gateway)
