from __future__ import annotations

import django_filters

from planner.choices import IPState, MachineState, SliceState
from planner.models import EgressIP, EgressPool, Machine, PortSlice


class EgressPoolFilter(django_filters.FilterSet):
    datacenter = django_filters.CharFilter(field_name="datacenter__code")

    class Meta:
        model = EgressPool
        fields = ["datacenter", "purpose", "country"]


class EgressIPFilter(django_filters.FilterSet):
    datacenter = django_filters.CharFilter(field_name="pool__datacenter__code")
    purpose = django_filters.CharFilter(field_name="pool__purpose")
    country = django_filters.CharFilter(field_name="pool__country")
    state = django_filters.ChoiceFilter(choices=IPState.choices)

    class Meta:
        model = EgressIP
        fields = ["datacenter", "pool", "purpose", "country", "state"]


class MachineFilter(django_filters.FilterSet):
    datacenter = django_filters.CharFilter(field_name="datacenter__code")
    state = django_filters.ChoiceFilter(choices=MachineState.choices)

    class Meta:
        model = Machine
        fields = ["datacenter", "state", "pools"]


class PortSliceFilter(django_filters.FilterSet):
    datacenter = django_filters.CharFilter(field_name="ip__pool__datacenter__code")
    ip = django_filters.CharFilter(field_name="ip__address")
    machine = django_filters.CharFilter(field_name="machine__hostname")
    state = django_filters.ChoiceFilter(choices=SliceState.choices)

    class Meta:
        model = PortSlice
        fields = ["datacenter", "ip", "machine", "state"]
