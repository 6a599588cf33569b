"""Forms of the operator UI. Model rules run in the services; these check types and shape."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from planner import constants, dashboard
from planner.inventory_io import (
    MAX_RECORDS,
    PREFIX_ADDRESSES,
    InventoryError,
    parse_port_list,
)
from planner.models import Datacenter, EgressIP, EgressPool, Machine


class ApplyForm(forms.Form):
    inputs_digest = forms.CharField(max_length=128, widget=forms.HiddenInput)
    reason = forms.CharField(
        max_length=200, required=False, label="Reason (kept with the revision)"
    )
    confirm = forms.BooleanField(
        required=True,
        label="I have reviewed this plan; apply it and send the new bundles",
        error_messages={"required": "Tick the box to confirm the apply."},
    )


class WhatIfForm(forms.Form):
    pool = forms.ModelChoiceField(queryset=EgressPool.objects.none(), empty_label=None)
    add_machines = forms.IntegerField(
        min_value=0,
        max_value=dashboard.WHAT_IF_MAX_ADD_MACHINES,
        initial=0,
        required=False,
        label="Add machines",
    )
    add_ips = forms.IntegerField(
        min_value=0,
        max_value=dashboard.WHAT_IF_MAX_ADD_IPS,
        initial=0,
        required=False,
        label="Add IPs",
    )
    slice_size = forms.IntegerField(
        min_value=1, max_value=constants.USABLE_PORT_COUNT, required=False, label="New slice size"
    )
    slices_per_machine = forms.IntegerField(
        min_value=1, max_value=1000, required=False, label="New slices per machine"
    )

    def __init__(self, *args: Any, datacenter: Datacenter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pools = EgressPool.objects.filter(datacenter=datacenter).select_related("datacenter")
        self.fields["pool"].queryset = pools  # type: ignore[attr-defined]
        self.fields["pool"].label_from_instance = lambda pool: pool.key  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        refusal = dashboard.what_if_refusal(question=self.question())
        if refusal:
            # Named on the field that grows the pool most often; the text says which figures.
            self.add_error("add_machines", refusal)
        return data

    def question(self) -> dashboard.WhatIf:
        data = self.cleaned_data
        return dashboard.WhatIf(
            pool=data["pool"],
            add_machines=data.get("add_machines") or 0,
            add_ips=data.get("add_ips") or 0,
            slice_size=data.get("slice_size"),
            slices_per_machine=data.get("slices_per_machine"),
        )


class ReservedPortsField(forms.CharField):
    """``1080, 3128, 5000-5002`` <-> a list of ports."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return ", ".join(str(port) for port in value)
        return value

    def to_python(self, value: Any) -> list[int]:  # type: ignore[override]
        text = (super().to_python(value) or "").replace(",", ";")
        try:
            return parse_port_list("form", text)
        except InventoryError as error:
            raise ValidationError(f"{error.value!r}: {error.message}") from None


class DatacenterForm(forms.ModelForm):
    class Meta:
        model = Datacenter
        fields = ["code", "name", "country", "region", "city"]


class PoolForm(forms.ModelForm):
    class Meta:
        model = EgressPool
        fields = [
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


class EgressIPForm(forms.ModelForm):
    reserved_ports = ReservedPortsField(
        required=False, help_text="Ports never handed out, e.g. 1080, 3128, 5000-5002"
    )

    class Meta:
        model = EgressIP
        fields = ["address", "pool", "usable_lo", "usable_hi", "reserved_ports", "state"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pools = EgressPool.objects.select_related("datacenter")
        if self.instance.pk:
            pools = pools.filter(datacenter=self.instance.pool.datacenter)
        self.fields["pool"].queryset = pools  # type: ignore[attr-defined]


class MachineForm(forms.ModelForm):
    class Meta:
        model = Machine
        fields = ["hostname", "datacenter", "address", "state", "weight", "pools"]
        widgets = {"pools": forms.CheckboxSelectMultiple}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pools = EgressPool.objects.select_related("datacenter")
        if self.instance.pk:
            pools = pools.filter(datacenter=self.instance.datacenter)
        self.fields["pools"].queryset = pools  # type: ignore[attr-defined]
        self.fields["pools"].required = False


# Identity fields that name the object in URLs, bundles and steering: fixed once made.
FIXED_ON_EDIT = {
    DatacenterForm: ("code",),
    PoolForm: ("datacenter",),
    EgressIPForm: ("address",),
    MachineForm: ("hostname", "datacenter"),
}


def fix_identity(form: forms.ModelForm[Any]) -> None:
    if form.instance.pk:
        for name in FIXED_ON_EDIT.get(type(form), ()):
            form.fields[name].disabled = True


IMPORT_FORMATS = [
    ("auto", "detect"),
    ("json", "JSON"),
    ("ips-csv", "CSV of egress IPs"),
    ("machines-csv", "CSV of machines"),
    ("geofeed", "RFC 8805 geofeed"),
]


class ImportForm(forms.Form):
    file = forms.FileField(required=False, help_text="JSON, CSV or an RFC 8805 geofeed")
    text = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 8}), label="or paste it here"
    )
    format = forms.ChoiceField(choices=IMPORT_FORMATS, initial="auto")
    datacenter = forms.SlugField(required=False, help_text="geofeed only: datacenter code")
    purpose = forms.SlugField(required=False, help_text="geofeed only: pool purpose")
    large_prefixes = forms.BooleanField(
        required=False,
        label="Allow large prefixes (admins only)",
        help_text=(
            f"geofeed only: a prefix may stand for up to {MAX_RECORDS:,} addresses "
            f"instead of {PREFIX_ADDRESSES}"
        ),
    )

    def __init__(self, *args: Any, admin: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not admin:  # an operator's import cannot expand a /16 into 65,536 rows
            del self.fields["large_prefixes"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        upload = data.get("file")
        if upload:
            try:
                data["text"] = upload.read().decode("utf-8")
            except UnicodeDecodeError:
                raise ValidationError({"file": "The file is not UTF-8 text."}) from None
        if not (data.get("text") or "").strip():
            raise ValidationError("Choose a file or paste the inventory.")
        return data
