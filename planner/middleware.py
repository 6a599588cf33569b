from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

ERR_NUL_IN_URL = "The URL holds a NUL byte (%00); no name, address or filter value contains one."
ERR_NUL_IN_COOKIE = "A cookie holds a NUL byte; clear this site's cookies and sign in again."


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


class RefuseNulMiddleware:
    """400 for a NUL byte anywhere in the URL's path or query, before any view runs.

    PostgreSQL text cannot hold NUL, so a lookup or filter carrying one raises
    ``DataError`` deep in a query. No code, hostname, address or filter value
    contains one, so refusing it at the door answers every view (API, admin,
    UI) the same way. Bodies are checked by their fields (DRF's and Django's
    form ``CharField`` refuse NUL; the models' ``clean_fields`` too).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path or "\x00" in _query_text(request):
            return JsonResponse({"detail": ERR_NUL_IN_URL}, status=400)
        if any("\x00" in value for value in request.COOKIES.values()):
            # A session id with a NUL would reach the session table's lookup.
            return JsonResponse({"detail": ERR_NUL_IN_COOKIE}, status=400)
        return self.get_response(request)


def _query_text(request: HttpRequest) -> str:
    return "".join(key + "".join(values) for key, values in request.GET.lists())
