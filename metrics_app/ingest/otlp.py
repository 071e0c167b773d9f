"""POST /v1/traces: OTLP over HTTP, as the OpenTelemetry protocol specification defines it.

A stock exporter (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT pointed here, the key in
OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer mlk_...") sends its spans as
`application/x-protobuf` or `application/json`, gzip-encoded or not. Each
GenAI span becomes one event (`spans`); the events go through /track's
validation and write path. The answer comes in the request's encoding:

- 200 with an ExportTraceServiceResponse, whose `partial_success` counts the
  spans refused and says why (spans that are not GenAI calls are skipped, not
  refused);
- 400 with a `google.rpc.Status` body for a request that is not OTLP (the
  protocol defines that body; every other answer is in the service's error
  shape);
- 401 / 403 for the key; 413 past the body limit, sent or decompressed (the
  protocol says not to retry it); 415 for another content type or encoding;
  429 and 503 with Retry-After, which exporters honour.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from metrics_app import access, listeners
from metrics_app.errors import BODY_TOO_LARGE, body_limit, error_response, method_not_allowed
from metrics_app.http import bodies
from metrics_app.ingest import services
from metrics_app.ingest.spans import SOURCE_OF, SpanEvents, span_events
from metrics_app.ingest.validation import check_event
from metrics_app.ingest.views import Refused, ingest_key
from metrics_app.listeners import IngestAnswer
from metrics_app.models import ApiKey

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# A gzip body may inflate to at most this; the body as sent is bounded like every other (1 MiB).
MAX_DECOMPRESSED_BYTES = 8 * 1024 * 1024
MAX_SPANS = 5000
# How many refused spans the error message names (it says how many more there were).
_MAX_REASONS = 10
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


class Malformed(Exception):
    """The body is not an OTLP export: 400 with a google.rpc.Status."""


def _answer(message: Message, encoding: str, status: int = 200) -> HttpResponse:
    if encoding == PROTOBUF:
        return HttpResponse(message.SerializeToString(), status=status, content_type=PROTOBUF)
    body = json_format.MessageToJson(message, indent=None)
    return HttpResponse(body, status=status, content_type=JSON)


def _malformed(reason: str, encoding: str) -> HttpResponse:
    return _answer(status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=reason), encoding, status=400)


def _encoding(request: HttpRequest) -> str | None:
    content_type = (request.content_type or "").lower()
    return content_type if content_type in (PROTOBUF, JSON) else None


def _inflate(body: bytes, request: HttpRequest) -> bytes:
    """The body without its Content-Encoding; Refused past MAX_DECOMPRESSED_BYTES or for another encoding."""
    coding = request.META.get("HTTP_CONTENT_ENCODING", "").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding != "gzip":
        raise Refused(error_response(415, "Unsupported content encoding",
                                     {"content_encoding": ["send gzip or no Content-Encoding"]}))
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        plain = inflater.decompress(body, MAX_DECOMPRESSED_BYTES + 1)
    except zlib.error:
        raise Malformed("the body is not valid gzip") from None
    if len(plain) > MAX_DECOMPRESSED_BYTES or inflater.unconsumed_tail:
        raise Refused(error_response(413, BODY_TOO_LARGE, body_limit(MAX_DECOMPRESSED_BYTES, decompressed=True)))
    if not inflater.eof:
        raise Malformed("the gzip body ends early")
    return plain


def _hex_ids_as_base64(data: Any) -> None:
    """OTLP/JSON writes trace and span ids in hex; protobuf's JSON reader takes bytes in base64."""
    if not isinstance(data, dict):
        raise Malformed("the body must be a JSON object")
    for holder in _spans_and_links(data):
        for name in _ID_FIELDS:
            value = holder.get(name)
            if isinstance(value, str):
                try:
                    holder[name] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    raise Malformed(f"{name} must be hex-encoded") from None


def _spans_and_links(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The span and link objects of an OTLP/JSON export (either spelling of the field names)."""
    for resource_spans in _objects(data.get("resourceSpans", data.get("resource_spans"))):
        for scope_spans in _objects(resource_spans.get("scopeSpans", resource_spans.get("scope_spans"))):
            for span in _objects(scope_spans.get("spans")):
                yield span
                yield from _objects(span.get("links"))


def _objects(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _export_request(body: bytes, encoding: str) -> ExportTraceServiceRequest:
    export = ExportTraceServiceRequest()
    if encoding == PROTOBUF:
        try:
            export.ParseFromString(body)
        except (DecodeError, RecursionError):
            raise Malformed("the body is not an ExportTraceServiceRequest in protobuf") from None
        return export
    try:
        data = bodies.parse_json(body) if body.strip() else {}
    except bodies.BodyRefused as refused:
        raise Malformed(f"{refused.summary}: {'; '.join(refused.errors.get('body', []))}") from None
    _hex_ids_as_base64(data)
    try:
        json_format.ParseDict(data, export, ignore_unknown_fields=True)
    except (json_format.ParseError, binascii.Error, RecursionError, TypeError, ValueError) as exc:
        raise Malformed(f"the body is not an ExportTraceServiceRequest in OTLP/JSON: {str(exc)[:200]}") from None
    return export


def _span_count(export: ExportTraceServiceRequest) -> int:
    return sum(len(scope.spans) for resource in export.resource_spans for scope in resource.scope_spans)


def _store(found: SpanEvents, key: ApiKey | None) -> tuple[list[str], list[services.StoredOutcome]]:
    """Validate the spans' events as /track does and store the valid ones; (why spans were refused, outcomes)."""
    refused = list(found.refused)
    valid = []
    for payload in found.payloads:
        checked = check_event(payload, default_business_id=key.business_id if key else None)
        if not checked.ok:
            refused.append(f"span with event id {payload['event_id']}: {_refusal(checked.errors)}")
        elif key is not None and not access.can_write(key, checked.values["business_id"]):
            refused.append(f"span with event id {payload['event_id']}: mlops.business_id names another business "
                           f"than this key's ({key.business_id!r})")
        else:
            valid.append(checked.values)
    return refused, services.record_events(valid) if valid else []


def _refusal(errors: dict[str, list[str]]) -> str:
    return "; ".join(f"{SOURCE_OF.get(name, name)} {' '.join(reasons)}" for name, reasons in sorted(errors.items()))


@csrf_exempt
def traces(request: HttpRequest) -> HttpResponse:
    """Store the GenAI spans of one OTLP export as events, once each."""
    response, answer = _traces(request)
    listeners.ingest_answered(answer)
    return response


def _traces(request: HttpRequest) -> tuple[HttpResponse, IngestAnswer]:
    if request.method != "POST":
        return method_not_allowed("POST"), IngestAnswer()
    encoding = _encoding(request)
    if encoding is None:
        return error_response(415, "Unsupported content type",
                              {"content_type": [f"send {PROTOBUF} or {JSON}"]}), IngestAnswer()
    try:
        key = ingest_key(request)
        body = bodies.read_body(request, bodies.max_body_bytes())
        export = _export_request(_inflate(body, request), encoding)
    except bodies.BodyRefused as too_large:
        return too_large.response(), IngestAnswer()
    except Refused as refusal:
        return refusal.response, IngestAnswer()
    except Malformed as exc:
        return _malformed(str(exc), encoding), IngestAnswer()
    if _span_count(export) > MAX_SPANS:
        return _malformed(f"an export may carry at most {MAX_SPANS} spans", encoding), IngestAnswer()

    found = span_events(export)
    refused, outcomes = _store(found, key)
    created = sum(outcome.created for outcome in outcomes)
    response = ExportTraceServiceResponse()
    if refused:
        more = len(refused) - _MAX_REASONS
        message = "; ".join(refused[:_MAX_REASONS]) + (f"; and {more} more" if more > 0 else "")
        response.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=len(refused), error_message=message)
        )
    answer = IngestAnswer(created=created, duplicates=len(outcomes) - created, rejected=len(refused),
                          skipped=found.skipped)
    return _answer(response, encoding), answer
