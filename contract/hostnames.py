"""Host names as both sides accept them: ASCII letters, digits and hyphens only.

One check for the planner's forms, API and imports and for the contract's
messages, so a name one side accepts the other never refuses. A regular
expression with ``re.IGNORECASE`` over Unicode text is not enough: it lets
``ſ`` (long s) match ``s`` and ``ı`` (dotless i) match ``i``, and a machine
named ``m9.ſite.net`` has no URL the planner can route. An internationalized
name is written in its IDNA A-label form (``xn--...``), which must decode.
"""

from __future__ import annotations

import re
from typing import Final

MAX_HOSTNAME: Final = 253
MAX_LABEL: Final = 63
# RFC 1123 section 2.1 (letters, digits, hyphens; no hyphen first or last). re.ASCII
# and explicit ranges: no Unicode case folding, and \Z so a trailing newline fails.
_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z", re.ASCII)
_A_LABEL_PREFIX: Final = "xn--"


def hostname_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a host name, or ``None`` when it is one.

    No trailing dot: callers that accept the absolute form strip one first.
    """
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if not value.isascii():
        return "not ASCII (write an internationalized name as xn-- labels)"
    if not 1 <= len(value) <= MAX_HOSTNAME:
        return f"must be 1 to {MAX_HOSTNAME} characters"
    for label in value.split("."):
        if not _LABEL.match(label):
            return f"label {label!r} is not 1-{MAX_LABEL} letters, digits or inner hyphens"
        if label[2:4] == "--":
            problem = _a_label_problem(label)
            if problem:
                return problem
    return None


def _a_label_problem(label: str) -> str | None:
    # RFC 5891 4.2.3.1: "??--" labels are reserved; only IDNA A-labels use them.
    if not label.lower().startswith(_A_LABEL_PREFIX):
        return f"label {label!r} has '--' in positions 3-4 but is not an xn-- A-label"
    try:
        label[len(_A_LABEL_PREFIX) :].encode("ascii").decode("punycode")
    except UnicodeError:
        return f"label {label!r} is not a valid A-label (bad Punycode)"
    return None


def is_hostname(value: object) -> bool:
    """Whether ``value`` is a host name both sides accept."""
    return hostname_problem(value) is None
