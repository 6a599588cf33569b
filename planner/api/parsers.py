"""Request body parsers: DRF's, with every way a body can fail answered as 400."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from rest_framework import parsers
from rest_framework.exceptions import ParseError

ERR_TOO_DEEP = "JSON parse error - nested too deeply."


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, plus: nesting deeper than Python's recursion limit is a 400.

    ``json`` decodes arrays and objects recursively, so ``[[[…]]]`` a few
    thousand levels deep raises ``RecursionError``, which DRF's parser (it
    catches ``ValueError`` only) would let through as a 500.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(ERR_TOO_DEEP) from None


class _FieldCapped:
    """A form parser whose field or file caps (Django's ``DATA_UPLOAD_MAX_NUMBER_FIELDS``
    and friends) answer 400 in JSON, as every other API error, not Django's HTML page."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)  # type: ignore[misc]
        except (TooManyFieldsSent, TooManyFilesSent, RequestDataTooBig) as error:
            raise ParseError(str(error)) from None


class FormParser(_FieldCapped, parsers.FormParser):
    """DRF's form parser; too many fields is a 400."""


class MultiPartParser(_FieldCapped, parsers.MultiPartParser):
    """DRF's multipart parser; too many fields or files is a 400."""
