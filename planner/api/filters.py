from __future__ import annotations

from typing import Any

import django_filters
from django import forms
from django.db.models import Model, Q, QuerySet
from django.db.models.constants import LOOKUP_SEP

from planner.choices import AuditAction, IPState, MachineState, RevisionStatus, SliceState
from planner.models import (
    AuditEntry,
    Datacenter,
    EgressIP,
    EgressPool,
    Machine,
    PlanRevision,
    PortSlice,
)
from planner.selectors import stale_cutoff


class IdFilter(django_filters.Filter):
    """An object id: an integer the database can hold, else a 400 naming the field."""

    field_class = forms.IntegerField

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


class AddressFilter(django_filters.Filter):
    """One IP address; anything else is a 400 (PostgreSQL's inet would raise)."""

    field_class = forms.GenericIPAddressField


def text_filter(model: type[Model], path: str) -> django_filters.CharFilter:
    """Exact match on the text column at ``path``; a value longer than the column
    can never match, so it is a 400 naming the limit rather than an empty page."""
    field: Any = None
    for name in path.split(LOOKUP_SEP):
        field = model._meta.get_field(name)
        model = field.related_model or model
    return django_filters.CharFilter(field_name=path, max_length=field.max_length)


class DatacenterFilter(django_filters.FilterSet):
    country = text_filter(Datacenter, "country")

    class Meta:
        model = Datacenter
        fields = ["country"]


class EgressPoolFilter(django_filters.FilterSet):
    datacenter = text_filter(EgressPool, "datacenter__code")
    purpose = text_filter(EgressPool, "purpose")
    country = text_filter(EgressPool, "country")

    class Meta:
        model = EgressPool
        fields = ["datacenter", "purpose", "country"]


class EgressIPFilter(django_filters.FilterSet):
    """The API's ``GET /ips`` and the UI's IP list: the same filters, the same errors."""

    search = django_filters.CharFilter(
        field_name="address", lookup_expr="startswith", max_length=45, label="address starts with"
    )
    pool = IdFilter(field_name="pool_id")
    datacenter = text_filter(EgressIP, "pool__datacenter__code")
    purpose = text_filter(EgressIP, "pool__purpose")
    country = text_filter(EgressIP, "pool__country")
    state = django_filters.ChoiceFilter(choices=IPState.choices)

    class Meta:
        model = EgressIP
        fields = ["search", "datacenter", "pool", "purpose", "country", "state"]


class MachineFilter(django_filters.FilterSet):
    """The API's ``GET /machines`` and the UI's machine list."""

    search = django_filters.CharFilter(
        method="filter_search", max_length=253, label="host name or address contains"
    )
    pool = IdFilter(field_name="pools__id", distinct=True)
    datacenter = text_filter(Machine, "datacenter__code")
    state = django_filters.ChoiceFilter(choices=MachineState.choices)
    stale = django_filters.BooleanFilter(method="filter_stale")

    class Meta:
        model = Machine
        fields = ["search", "datacenter", "state", "pool", "stale"]

    def filter_search(
        self, queryset: QuerySet[Machine], name: str, value: str
    ) -> QuerySet[Machine]:
        return queryset.filter(Q(hostname__icontains=value) | Q(address__icontains=value))

    def filter_stale(
        self, queryset: QuerySet[Machine], name: str, value: bool
    ) -> QuerySet[Machine]:
        """Machines whose agent reported once and then went silent (``?stale=true``)."""
        silent = Q(last_seen__lt=stale_cutoff())
        return queryset.filter(silent) if value else queryset.exclude(silent)


class PortSliceFilter(django_filters.FilterSet):
    datacenter = text_filter(PortSlice, "ip__pool__datacenter__code")
    ip = AddressFilter(field_name="ip__address")
    machine = text_filter(PortSlice, "machine__hostname")
    state = django_filters.ChoiceFilter(choices=SliceState.choices)

    class Meta:
        model = PortSlice
        fields = ["datacenter", "ip", "machine", "state"]


class PlanRevisionFilter(django_filters.FilterSet):
    """The API's ``GET /revisions`` and the UI's revisions page."""

    datacenter = text_filter(PlanRevision, "datacenter__code")
    status = django_filters.ChoiceFilter(choices=RevisionStatus.choices, empty_label="any")

    class Meta:
        model = PlanRevision
        fields = ["datacenter", "status"]


class AuditEntryFilter(django_filters.FilterSet):
    """The audit log's filters: who, what (object or model), action, dates."""

    who = django_filters.CharFilter(
        field_name="actor", lookup_expr="icontains", max_length=150, label="who"
    )
    what = django_filters.CharFilter(
        method="filter_what", max_length=200, label="what (object or model)"
    )
    action = django_filters.ChoiceFilter(choices=AuditAction.choices, empty_label="any")
    since = django_filters.DateFilter(
        field_name="at", lookup_expr="date__gte", label="from",
        widget=forms.DateInput({"type": "date"}),
    )  # fmt: skip
    until = django_filters.DateFilter(
        field_name="at", lookup_expr="date__lte", label="to",
        widget=forms.DateInput({"type": "date"}),
    )  # fmt: skip

    class Meta:
        model = AuditEntry
        fields = ["who", "what", "action", "since", "until"]

    def filter_what(
        self, queryset: QuerySet[AuditEntry], name: str, value: str
    ) -> QuerySet[AuditEntry]:
        return queryset.filter(Q(object_repr__icontains=value) | Q(model__icontains=value))
