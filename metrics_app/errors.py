"""One error shape for the whole API: {"error": "<summary>", "errors": {"<field>": ["<why>"]}}."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

ErrorMap = dict[str, list[str]]


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


def rate_limiter_unavailable() -> JsonResponse:
    """503: the per-key request counter could not answer, so the request is not let through uncounted."""
    return error_response(
        503, "The rate limiter cannot answer; retry later", {"rate_limit": ["the request counter is busy"]},
        headers={"Retry-After": str(settings.MLOPS_RETRY_AFTER_SECONDS)},
    )


def _flatten(detail: Any) -> list[str]:
    if isinstance(detail, dict):
        return [f"{key}: {msg}" for key, value in detail.items() for msg in _flatten(value)]
    if isinstance(detail, list):
        return [msg for item in detail for msg in _flatten(item)]
    return [str(detail)]


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, reshaped into the service's error shape."""
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError) and isinstance(exc.detail, dict):
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
