"""JSON request bodies, read and parsed one way by every endpoint that takes one.

The ingest views call `read_json`; the DRF API parses with `StrictJSONParser`.
Both go through `read_body` and `parse_json`, so a body that is too large, too
deeply nested or malformed gets the same answer everywhere, in the service's
error shape. `ChunkedBodies` lets chunked request bodies reach all of them.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from rest_framework.parsers import BaseParser

from metrics_app.errors import BODY_TOO_LARGE, ApiError, ErrorMap, body_limit, error_response

# Events and outcomes are flat objects; a few levels leave room for clients'
# extra fields. orjson alone would allow 1024 levels; the stdlib parser that
# DRF uses by default recursed until Python gave up (a 500).
MAX_JSON_DEPTH = 32


class BodyRefused(Exception):
    """A request body refused, with the status, summary and reasons to answer."""

    def __init__(self, status: int, summary: str, errors: ErrorMap) -> None:
        super().__init__(summary)
        self.status = status
        self.summary = summary
        self.errors = errors

    def response(self) -> JsonResponse:
        return error_response(self.status, self.summary, self.errors)

    def api_error(self) -> ApiError:
        return ApiError(self.status, self.summary, self.errors)


def _too_large(max_bytes: int) -> BodyRefused:
    return BodyRefused(413, BODY_TOO_LARGE, body_limit(max_bytes))


def _too_deep() -> BodyRefused:
    return BodyRefused(
        400, "JSON nested too deeply", {"body": [f"at most {MAX_JSON_DEPTH} levels of arrays and objects"]}
    )


# An OTLP trace export, as sent or once decompressed: 500 spans of OTLP/JSON are about 1 MiB before any
# message content, so exporters' default batches need more room than an event batch.
MAX_EXPORT_BYTES = 8 * 1024 * 1024


def max_body_bytes() -> int:
    """The largest body a JSON endpoint reads: Django's own limit for non-file request data (a 1 MiB batch)."""
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def read_stream(request: HttpRequest, max_bytes: int) -> bytes:
    """The raw body read from the request's stream, past Django's 1 MiB limit, or BodyRefused(413) past `max_bytes`.

    For endpoints whose bodies are not request data that Django parses (OTLP exports); the read stops one
    byte past the limit, so no body is held beyond it.
    """
    if _declared_length(request) > max_bytes:
        raise _too_large(max_bytes)
    body = request.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise _too_large(max_bytes)
    return body


def _declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def read_body(request: HttpRequest, max_bytes: int) -> bytes:
    """The raw body, or BodyRefused(413) past `max_bytes`, whether declared or sent."""
    if _declared_length(request) > max_bytes:
        raise _too_large(max_bytes)
    try:
        body = request.body
    except RequestDataTooBig:
        raise _too_large(max_bytes) from None
    if len(body) > max_bytes:
        raise _too_large(max_bytes)
    return body


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, [] is 1), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return deepest


def parse_json(body: bytes, check_depth: bool = True) -> Any:
    """Strict JSON (no NaN, valid UTF-8) nested at most MAX_JSON_DEPTH levels, or BodyRefused(400).

    Without `check_depth` only orjson's own bound (1024 levels) holds: for a reader that walks just
    the parts it needs and bounds its own depth there (OTLP/JSON), sparing the walk over every node.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "recursion" in str(exc).lower():
            raise _too_deep() from None
        raise BodyRefused(400, "Malformed JSON", {"body": [str(exc)[:200]]}) from None
    if check_depth and _depth(value) > MAX_JSON_DEPTH:
        raise _too_deep()
    return value


def read_json(request: HttpRequest, max_bytes: int) -> Any:
    """The parsed JSON body of an ingest request; BodyRefused for an empty, large, deep or malformed one."""
    body = read_body(request, max_bytes)
    if not body.strip():
        raise BodyRefused(400, "No metrics data provided", {"body": ["send a JSON object"]})
    return parse_json(body)


class StrictJSONParser(BaseParser):
    """DRF's JSON parser, replaced by the ingest's: same size and depth bounds, same answers."""

    media_type = "application/json"

    def parse(
        self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        request = (parser_context or {})["request"]  # DRF's request, which hands META and body to Django's
        try:
            body = read_body(request, max_body_bytes())
            return parse_json(body) if body.strip() else {}
        except BodyRefused as refused:
            raise refused.api_error() from None


# --- Chunked bodies.

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ChunkedBodies:
    """WSGI wrapper: a chunked body, read up to the largest size any endpoint takes (an OTLP export), gets a
    Content-Length.

    gunicorn hands a `Transfer-Encoding: chunked` body over without
    CONTENT_LENGTH, and Django then reads it as empty (a valid event became a
    400 "No metrics data provided"). Stock HTTP clients (the Node
    OpenTelemetry exporter, for one) never set Content-Length. Reading one byte
    past the limit is enough for every endpoint to answer its own 413.
    """

    def __init__(self, application: WSGIApp) -> None:
        self.application = application

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        # Only input that the server ends with the body (gunicorn says so with wsgi.input_terminated) may be
        # read this way; on other servers (Django's runserver) the read would wait for the client to close.
        if chunked and not environ.get("CONTENT_LENGTH") and environ.get("wsgi.input_terminated"):
            body = environ["wsgi.input"].read(max(max_body_bytes(), MAX_EXPORT_BYTES) + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.application(environ, start_response)
