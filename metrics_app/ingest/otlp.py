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
- 401 / 403 for the key; 413 past 8 MiB, sent or decompressed (the protocol
  says not to retry it); 415 for another content type or encoding;
  429 and 503 with Retry-After, which exporters honour.
"""

from __future__ import annotations

import zlib
from typing import Any

from django.db import transaction
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
from metrics_app.ingest.spans import (
    SOURCE_OF,
    NotOtlp,
    SpanEvents,
    SpanView,
    json_spans,
    proto_spans,
    span_events,
)
from metrics_app.ingest.validation import check_event
from metrics_app.ingest.views import Refused, ingest_key
from metrics_app.listeners import IngestAnswer
from metrics_app.models import ApiKey

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# An export may be this large as sent, and once decompressed.
MAX_EXPORT_BYTES = bodies.MAX_EXPORT_BYTES
MAX_SPANS = 5000
# Events are written this many to a statement (all of an export's in one transaction), which keeps each
# statement's parameters within what any SQLite build takes.
_INSERT_CHUNK = 500
# How many refused spans the error message names (it says how many more there were).
_MAX_REASONS = 10


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
    """The body without its Content-Encoding; Refused past MAX_EXPORT_BYTES or for another encoding."""
    coding = request.META.get("HTTP_CONTENT_ENCODING", "").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding != "gzip":
        raise Refused(error_response(415, "Unsupported content encoding",
                                     {"content_encoding": ["send gzip or no Content-Encoding"]}))
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        plain = inflater.decompress(body, MAX_EXPORT_BYTES + 1)
    except zlib.error:
        raise Malformed("the body is not valid gzip") from None
    if len(plain) > MAX_EXPORT_BYTES or inflater.unconsumed_tail:
        raise Refused(error_response(413, BODY_TOO_LARGE, body_limit(MAX_EXPORT_BYTES, decompressed=True)))
    if not inflater.eof:
        raise Malformed("the gzip body ends early")
    return plain


def _spans(body: bytes, encoding: str) -> list[tuple[SpanView, dict[str, Any]]]:
    """The spans of an export, read from protobuf or OTLP/JSON; Malformed when the body is no export."""
    if encoding == PROTOBUF:
        export = ExportTraceServiceRequest()
        try:
            export.ParseFromString(body)
        except (DecodeError, RecursionError):
            raise Malformed("the body is not an ExportTraceServiceRequest in protobuf") from None
        spans = proto_spans(export)
    else:
        try:
            data = bodies.parse_json(body, check_depth=False) if body.strip() else {}
        except bodies.BodyRefused as refused:
            raise Malformed(f"{refused.summary}: {'; '.join(refused.errors.get('body', []))}") from None
        spans = json_spans(data)
    read: list[tuple[SpanView, dict[str, Any]]] = []
    try:
        for span in spans:
            read.append(span)
            if len(read) > MAX_SPANS:
                raise Malformed(f"an export may carry at most {MAX_SPANS} spans")
    except NotOtlp as exc:
        raise Malformed(f"the body is not an ExportTraceServiceRequest in OTLP/JSON: {exc}") from None
    return read


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
    if len(valid) <= _INSERT_CHUNK:
        return refused, services.record_events(valid) if valid else []
    outcomes: list[services.StoredOutcome] = []
    with transaction.atomic():  # all of the export's events, or none
        for start in range(0, len(valid), _INSERT_CHUNK):
            outcomes += services.record_events(valid[start:start + _INSERT_CHUNK])
    return refused, outcomes


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
        body = bodies.read_stream(request, MAX_EXPORT_BYTES)
        spans = _spans(_inflate(body, request), encoding)
    except bodies.BodyRefused as too_large:
        return too_large.response(), IngestAnswer()
    except Refused as refusal:
        return refusal.response, IngestAnswer()
    except Malformed as exc:
        return _malformed(str(exc), encoding), IngestAnswer()
    found = span_events(spans)
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
