from __future__ import annotations

import django_filters
from django import forms

from planner.choices import IPState, MachineState, SliceState
from planner.models import EgressIP, EgressPool, Machine, PortSlice


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


class EgressPoolFilter(django_filters.FilterSet):
    datacenter = django_filters.CharFilter(field_name="datacenter__code")

    class Meta:
        model = EgressPool
        fields = ["datacenter", "purpose", "country"]


class EgressIPFilter(django_filters.FilterSet):
    pool = IdFilter(field_name="pool_id")
    datacenter = django_filters.CharFilter(field_name="pool__datacenter__code")
    purpose = django_filters.CharFilter(field_name="pool__purpose")
    country = django_filters.CharFilter(field_name="pool__country")
    state = django_filters.ChoiceFilter(choices=IPState.choices)

    class Meta:
        model = EgressIP
        fields = ["datacenter", "pool", "purpose", "country", "state"]


class MachineFilter(django_filters.FilterSet):
    pool = IdFilter(field_name="pools__id", distinct=True)
    datacenter = django_filters.CharFilter(field_name="datacenter__code")
    state = django_filters.ChoiceFilter(choices=MachineState.choices)

    class Meta:
        model = Machine
        fields = ["datacenter", "state", "pool"]


class PortSliceFilter(django_filters.FilterSet):
    datacenter = django_filters.CharFilter(field_name="ip__pool__datacenter__code")
    ip = AddressFilter(field_name="ip__address")
    machine = django_filters.CharFilter(field_name="machine__hostname")
    state = django_filters.ChoiceFilter(choices=SliceState.choices)

    class Meta:
        model = PortSlice
        fields = ["datacenter", "ip", "machine", "state"]
