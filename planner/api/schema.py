"""OpenAPI post-processing: document the error answers every operation can give.

DRF's errors share one shape (``{"detail": ...}`` or field -> messages), so
they are declared once and attached to each operation, and schemathesis can
hold every response to the schema.
"""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}
ERRORS = {
    "400": "Invalid input: each field names its errors",
    "401": "No or bad credentials",
    "403": "The role or token does not allow this",
    "404": "No such object (or page)",
    "405": "Method not allowed",
    "406": "Cannot render the accepted media type",
    "409": "Conflict: stale revision, lock held, or still in use",
    "413": "Body over 1 MiB",
    "415": "Unsupported media type",
    "429": "Throttled",
}


def add_error_responses(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = {
        "type": "object",
        "description": "``detail`` for one message, or each field with its messages.",
        "additionalProperties": True,
    }
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for code, description in ERRORS.items():
                responses.setdefault(
                    code,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": ERROR}},
                    },
                )
    return result
