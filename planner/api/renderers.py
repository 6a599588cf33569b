from __future__ import annotations

import json
from typing import Any

from rest_framework.renderers import BaseRenderer


class _TextRenderer(BaseRenderer):
    """Renders a str body as is; error bodies (dicts) as JSON text."""

    charset = "utf-8"

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        if isinstance(data, str):
            return data.encode()
        return json.dumps(data).encode()


class JoseRenderer(_TextRenderer):
    """RFC 7515 compact serialization, as RFC 7515 section 9.2.1 registers it."""

    media_type = "application/jose"
    format = "jose"


class NftRenderer(_TextRenderer):
    media_type = "text/plain"
    format = "nft"


class CsvRenderer(_TextRenderer):
    media_type = "text/csv"
    format = "csv"
