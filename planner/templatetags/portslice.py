"""Small formatting filters for the operator UI."""

from __future__ import annotations

from typing import Any

from django import template

from planner.attention import revision_counts

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
def changes(summary: Any) -> str:
    """A revision's diff summary in words: "2 added, 1 start draining"."""
    return revision_counts(summary or {})


@register.filter
def count(value: Any) -> int:
    """A count stored as a number, or as the list of what it counts (a draft's draining)."""
    if isinstance(value, list):
        return len(value)
    return int(value or 0)


@register.filter
def plain(value: Any) -> str:
    """A reported value as words: lists joined, mappings as "key value", never a repr."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(plain(item) for item in value) or "none"
    if isinstance(value, dict):
        return "; ".join(f"{key} {plain(item)}" for key, item in value.items()) or "none"
    return "–" if value is None else str(value)


@register.filter
def thousands(value: Any) -> str:
    if value is None or value == "":
        return "–"
    return f"{int(value):,}"


@register.filter
def get(mapping: Any, key: Any) -> Any:
    return mapping.get(key) if hasattr(mapping, "get") else None
