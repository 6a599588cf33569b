"""The steering table: which machine gets return traffic for (IP, port range).

A load balancer matches destination IP and port against the live slices
(draining ones keep steering to their old owner). The rendering is pure and
lives in :mod:`allocator.steering`, which the portslice gateway (``python -m
agent gateway``) shares, so the API's ``?format=nft`` script and the gateway
apply exactly the same thing. This module adds what only the planner needs:
the entity tag of a table, for conditional GETs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from allocator.steering import (
    MARK_BASE,
    RULE_PRIORITY,
    TABLE,
    SteeringRow,
    render_nft,
    render_script,
    steering_document,
)

__all__ = [
    "MARK_BASE",
    "RULE_PRIORITY",
    "TABLE",
    "SteeringRow",
    "render_nft",
    "render_script",
    "steering_document",
    "steering_etag",
]


def steering_etag(document: dict[str, Any]) -> str:
    """A strong entity tag of a steering document (the nft script is a function of it)."""
    canonical = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return '"' + hashlib.sha256(canonical).hexdigest()[:32] + '"'
