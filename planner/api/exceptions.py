"""Domain errors to HTTP: 400 field errors, 409 conflicts, 413, 422 shortfalls."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError, OperationalError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler

import allocator as alloc
from planner import constants
from planner.services.locks import Conflict
from planner.services.plans import shortfalls_as_list

ERR_DATA = "The database cannot store a value of this request:"


# deadlock_detected, serialization_failure, lock_not_available
RETRYABLE_PGCODES = {"40P01", "40001", "55P03"}


def _pgcode(exc: OperationalError) -> str | None:
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)


def handle(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        detail = (
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
        return Response(detail, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Conflict):
        return Response({"detail": str(exc), **exc.details}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, OperationalError) and _pgcode(exc) in RETRYABLE_PGCODES:
        # A deadlock broken, a serialization failure or a lock wait timed out:
        # the transaction rolled back whole; the same request may simply be retried.
        return Response({"detail": constants.ERR_CONCURRENT}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, IntegrityError):
        # The services lock and re-read, so this is a last line of defence: a
        # concurrent write that slipped past them. Nothing was written.
        return Response({"detail": constants.ERR_CONCURRENT}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, alloc.CapacityError):
        return Response(
            {"detail": "Not enough IPs.", "shortfalls": shortfalls_as_list(exc.shortfalls)},
            status=status.HTTP_422_UNPROCESSABLE_ENTITY,
        )
    if isinstance(exc, DataError):
        # A value the database cannot hold that no validator caught (the
        # validators and the NUL middleware should); a 400, never a 500.
        return Response(
            {"detail": f"{ERR_DATA} {str(exc).splitlines()[0][:200]}"},
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": str(exc)}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    return exception_handler(exc, context)
