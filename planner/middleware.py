from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse


class BodySizeLimitMiddleware:
    """413 for a declared body over ``MAX_REQUEST_BODY`` before anything reads it.

    Bodies without a length (chunked) are capped by Django's
    ``DATA_UPLOAD_MAX_MEMORY_SIZE`` and the API's exception handler.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse({"detail": "Content-Length: not a number."}, status=400)
        if length > settings.MAX_REQUEST_BODY:
            limit = settings.MAX_REQUEST_BODY
            detail = f"Body of {length} bytes is over the {limit}-byte limit."
            return JsonResponse({"detail": detail}, status=413)
        return self.get_response(request)
