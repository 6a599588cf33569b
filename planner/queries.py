"""Query forms the API and the UI share: one parser, the same errors, for both.

Both ``planner.api`` and ``planner.ui`` import this module; neither imports the
other's forms.
"""

from __future__ import annotations

from django import forms

from planner.heatmap import BUCKET_MAX, BUCKET_MIN, MODES, OWNERSHIP, HeatmapFilter

COLLAPSE_CHOICES = [("auto", "automatic"), ("1", "one row per pool"), ("0", "one row per IP")]


class HeatmapQuery(forms.Form):
    """The heatmap's query string, shared by the page and the API."""

    mode = forms.ChoiceField(choices=[(m, m) for m in MODES], required=False)
    pool = forms.IntegerField(min_value=1, max_value=2**63 - 1, required=False)
    purpose = forms.SlugField(max_length=32, required=False)
    country = forms.RegexField(regex=r"^[A-Za-z]{2}$", required=False)
    ip = forms.GenericIPAddressField(required=False)
    collapse = forms.ChoiceField(choices=COLLAPSE_CHOICES, required=False)
    bucket = forms.TypedChoiceField(
        choices=[(str(1 << n), str(1 << n)) for n in range(6, 13)],
        coerce=int,
        required=False,
        empty_value=None,
    )

    def heatmap_filter(self) -> HeatmapFilter:
        data = self.cleaned_data
        collapse = {"1": True, "0": False}.get(data.get("collapse") or "auto")
        bucket = data.get("bucket")
        assert bucket is None or BUCKET_MIN <= bucket <= BUCKET_MAX
        return HeatmapFilter(
            pool=data.get("pool"),
            purpose=data.get("purpose") or "",
            country=(data.get("country") or "").upper(),
            ip=data.get("ip") or "",
            collapse=collapse,
            bucket=bucket,
        )

    def chosen_mode(self) -> str:
        return self.cleaned_data.get("mode") or OWNERSHIP

    def error_lines(self) -> list[str]:
        """One line per wrong field, naming it and what was sent (cut to 100
        characters); plain text for a template to escape."""
        return [
            f"{name}: {' '.join(str(m) for m in messages)} (got {str(self.data.get(name))[:100]!r})"
            for name, messages in self.errors.items()
        ]
