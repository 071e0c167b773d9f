"""One error shape for the whole API: {"error": "<summary>", "errors": {"<field>": ["<why>"]}}."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import DisallowedHost, RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import HttpResponse, JsonResponse
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response

ErrorMap = dict[str, list[str]]

# What each status means, once for every endpoint's documentation (the DRF views, the plain ingest views in
# the schema hook, the knowledge base); an endpoint may say more for a code with `overrides`.
ERROR_MEANINGS: dict[int, str] = {
    400: "Invalid input; `errors` names each bad field or parameter. Nothing is stored.",
    401: "No API key or session where one is required, or an unknown, revoked or expired key "
    "(with WWW-Authenticate).",
    403: "The key lacks the scope, or names a business it may not use.",
    404: "Not found, or not something this caller may see.",
    405: "Method not allowed.",
    413: "Body too large.",
    415: "Content type is not application/json.",
    429: "Too many requests for this key (with Retry-After).",
    503: "The database is unavailable or busy, or the rate limiter cannot count (with Retry-After); "
    "nothing is stored.",
}


def error_meanings(codes: tuple[int, ...], overrides: dict[int, str] | None = None) -> dict[int, str]:
    """The documented meaning of each status code in `codes`."""
    return {code: (overrides or {}).get(code, ERROR_MEANINGS[code]) for code in codes}


class ErrorSerializer(serializers.Serializer):
    """The one error shape, for the OpenAPI schema."""

    error = serializers.CharField(help_text="One-line summary.")
    errors = serializers.DictField(  # type: ignore[assignment]  # a declared field: DRF's metaclass takes it off the class
        child=serializers.ListField(child=serializers.CharField()), help_text="Reasons, by field."
    )


def documented_errors(*codes: int, overrides: dict[int, str] | None = None) -> dict[int, OpenApiResponse]:
    """drf-spectacular responses in the error shape for `codes`."""
    return {
        code: OpenApiResponse(ErrorSerializer, description=meaning)
        for code, meaning in error_meanings(codes, overrides).items()
    }


def error_body(summary: str, errors: ErrorMap | None = None) -> dict[str, Any]:
    return {"error": summary, "errors": errors or {}}


def error_response(
    status_code: int, summary: str, errors: ErrorMap | None = None, headers: dict[str, str] | None = None
) -> JsonResponse:
    response = JsonResponse(error_body(summary, errors), status=status_code)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def unauthorized(summary: str = "An API key is required") -> JsonResponse:
    return error_response(401, summary, headers={"WWW-Authenticate": 'Bearer realm="mlops"'})


def too_many_requests(retry_after: int) -> JsonResponse:
    return error_response(
        429, "Too many requests for this API key", {"rate_limit": [f"retry after {retry_after} s"]},
        headers={"Retry-After": str(retry_after)},
    )


def database_unavailable(busy: bool = False) -> JsonResponse:
    """503: the database is away, or (busy) locked by another writer for longer than a write may wait."""
    summary = "The database is busy; retry later" if busy else "The database is unavailable; retry later"
    return error_response(
        503, summary, {"database": ["busy" if busy else "unreachable"]},
        headers={"Retry-After": str(settings.MLOPS_RETRY_AFTER_SECONDS)},
    )


def analytics_rebuilding() -> JsonResponse:
    """503: an upgrade's rollup rebuild has not run yet, so the figures would be incomplete."""
    return error_response(
        503, "The analytics are being rebuilt after an upgrade; retry shortly",
        {"analytics": ["rebuild_analytics has not run since the upgrade"]},
        headers={"Retry-After": str(settings.MLOPS_RETRY_AFTER_SECONDS)},
    )


def rate_limiter_unavailable() -> JsonResponse:
    """503: the per-key request counter could not answer, so the request is not let through uncounted."""
    return error_response(
        503, "The rate limiter cannot answer; retry later", {"rate_limit": ["the request counter is busy"]},
        headers={"Retry-After": str(settings.MLOPS_RETRY_AFTER_SECONDS)},
    )


BODY_TOO_LARGE = "Request body too large"


def body_limit(max_bytes: int, decompressed: bool = False) -> ErrorMap:
    return {"body": [f"at most {max_bytes} bytes{' once decompressed' if decompressed else ''}"]}


class ApiError(exceptions.APIException):
    """An error raised inside the DRF API that already has its summary and field reasons."""

    def __init__(self, status_code: int, summary: str, errors: ErrorMap | None = None) -> None:
        super().__init__(summary)
        self.status_code = status_code
        self.errors = errors or {}


def client_error_response(exception: Exception | None) -> JsonResponse:
    """Django's own 400s (a bad Host header, a body past its limit, a malformed form), in the error shape."""
    if isinstance(exception, DisallowedHost):
        return error_response(400, "Bad Host header", {"host": ["not a host name this service answers to"]})
    if isinstance(exception, (TooManyFieldsSent, TooManyFilesSent)):
        return error_response(400, "Too many form fields", {"body": ["send fewer fields or files"]})
    if isinstance(exception, RequestDataTooBig):
        return error_response(413, BODY_TOO_LARGE, body_limit(settings.DATA_UPLOAD_MAX_MEMORY_SIZE))
    return error_response(400, "Bad request", {"request": ["the request could not be read"]})


def _flatten(detail: Any) -> list[str]:
    if isinstance(detail, dict):
        return [f"{key}: {msg}" for key, value in detail.items() for msg in _flatten(value)]
    if isinstance(detail, list):
        return [msg for item in detail for msg in _flatten(item)]
    return [str(detail)]


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, reshaped into the service's error shape."""
    # Imported here: rest_framework.views loads the parser classes, and the API's parser uses this module.
    from rest_framework.views import exception_handler

    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, ApiError):
        errors = exc.errors
        summary = str(exc.detail)
    elif isinstance(exc, exceptions.ValidationError) and isinstance(exc.detail, dict):
        errors = {str(field): _flatten(value) for field, value in exc.detail.items()}
        summary = "Invalid input"
    elif isinstance(exc, exceptions.ValidationError):
        errors = {"non_field_errors": _flatten(exc.detail)}
        summary = "Invalid input"
    else:
        detail = getattr(exc, "detail", None)
        summary = str(detail) if detail is not None and not isinstance(detail, (dict, list)) else response.status_text
        errors = {}
    if response.status_code == status.HTTP_401_UNAUTHORIZED:
        response["WWW-Authenticate"] = 'Bearer realm="mlops"'
    response.data = error_body(summary, errors)
    return response


def method_not_allowed(allowed: str) -> HttpResponse:
    response = error_response(405, "Method not allowed", {"method": [f"use {allowed}"]})
    response["Allow"] = allowed
    return response
