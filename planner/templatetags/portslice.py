"""Small formatting filters for the operator UI."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.filter
def percent(value: Any, digits: int = 1) -> str:
    """0.5 -> "50.0 %"; None -> "–"."""
    if value is None or value == "":
        return "–"
    return f"{float(value) * 100:.{digits}f} %"


@register.filter
def use(value: Any) -> str:
    """A measured use: 0.5 -> "50.0 %"; None -> "no report" (no agent said; not 0 %)."""
    return "no report" if value is None else percent(value)


@register.filter
def thousands(value: Any) -> str:
    if value is None or value == "":
        return "–"
    return f"{int(value):,}"


@register.filter
def get(mapping: Any, key: Any) -> Any:
    return mapping.get(key) if hasattr(mapping, "get") else None
