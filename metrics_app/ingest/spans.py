"""OpenTelemetry GenAI spans as tracking events.

A span is one event when its attributes say it is a call to a model, as the
OpenTelemetry GenAI semantic conventions name them: `gen_ai.operation.name`
chat, generate_content or text_completion (or, from instrumentations older
than that attribute, `gen_ai.system` with a model name). Every other span is
skipped, not refused. Spans are read from a protobuf export
(`proto_spans`) or from OTLP/JSON as it is (`json_spans`) into the same
SpanView. What this module makes of a span is an event payload in /track's
own form, so the one validation in `validation.check_event` applies to both
doors.

- The latency is the span's duration; the reply time, its end.
- A span is a failed reply when its status is ERROR or `error.type` is set.
- Token counts follow the conventions: input tokens include those read from
  and written to the prompt cache, output tokens include reasoning ones.
  Anthropic's API counts its cached tokens outside its input tokens, and some
  instrumentations pass that count on as it is: the cached parts are added to
  the input of an Anthropic span (`gen_ai.provider.name` or `gen_ai.system`
  starting with "anthropic") whose input is smaller than them (it cannot be
  the whole prompt) or that comes from the Vercel AI SDK (instrumentation
  scope "ai"), and of any span whose `mlops.input_tokens_exclude_cache`
  (span or resource) is true; false says the input is whole.
- The receptionist's own fields come from attributes under `mlops.` (see
  ATTRIBUTES), on the span or else on its resource.
- The event id is a UUID derived from the trace and span ids, so an exporter's
  retry of the same span is the same event.

Message content (`gen_ai.input.messages`, `gen_ai.output.messages`,
`gen_ai.prompt`, `gen_ai.completion`, span events) is never read: only the
attributes named here are.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

GENAI_OPERATIONS = frozenset({"chat", "generate_content", "text_completion"})
# The provider (a prefix of its name) whose input token count leaves out the tokens read from and written to
# the cache.
CACHE_APART_PROVIDER = "anthropic"
# The instrumentation scope of the Vercel AI SDK's spans, which carry the provider's own counts.
VERCEL_AI_SCOPE = "ai"
# Says whether a span's input token count leaves out its cached parts (true) or includes them (false).
EXCLUDES_CACHE = "mlops.input_tokens_exclude_cache"

# The event field each of the receptionist's attributes fills.
ATTRIBUTES = {
    "mlops.business_id": "business_id",
    "mlops.conversation_id": "conversation_id",
    "mlops.session_id": "session_id",
    "mlops.intent": "intent_detected",
    "mlops.response_type": "response_type",
    "mlops.appointment_requested": "appointment_requested",
    "mlops.appointment_booked": "appointment_booked",
    "mlops.human_handoff_requested": "human_handoff_requested",
    "mlops.prompt_version": "prompt_version",
    "mlops.kb_version": "kb_version",
    "mlops.user_message_length": "user_message_length",
    "mlops.ai_response_length": "ai_response_length",
    "mlops.api_cost_usd": "api_cost_usd",
    # A score the app computed; message content attributes are never read, so never scored here.
    "mlops.user_sentiment": "user_sentiment",
}
# Token counts: the event field, then the attribute names that carry it, the conventions' first.
TOKEN_ATTRIBUTES = {
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
    "output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
    "cache_read_input_tokens": ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"),
    "cache_write_input_tokens": (
        "gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens",
    ),
    "reasoning_output_tokens": ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens"),
}
_MODEL_ATTRIBUTES = ("gen_ai.response.model", "gen_ai.request.model")
_PROVIDER_ATTRIBUTES = ("gen_ai.provider.name", "gen_ai.system")
# Which attribute an event field came from, for the messages of a refused span.
SOURCE_OF = {
    **{event_field: attribute for attribute, event_field in ATTRIBUTES.items()},
    **{event_field: names[0] for event_field, names in TOKEN_ATTRIBUTES.items()},
    "model_name": "gen_ai.response.model",
    "conversation_id": "gen_ai.conversation.id",
    "response_time_ms": "the span's start and end times",
    "timestamp": "the span's end time",
    "tokens_used": "gen_ai.usage.input_tokens + gen_ai.usage.output_tokens",
}
# Event ids of spans: name-based (version 5) UUIDs of the trace and span ids' bytes under this namespace.
SPAN_EVENT_NAMESPACE = uuid.UUID("6d6c6f70-732d-4f54-8c50-7370616e7321")


_SCALARS = frozenset({"string_value", "bool_value", "int_value", "double_value"})


def _value(value: AnyValue) -> Any:
    """A scalar attribute value as JSON would carry it; arrays as lists of scalars; anything else None."""
    kind = value.WhichOneof("value")
    if kind in _SCALARS:
        return getattr(value, kind)
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return None


def attributes_of(pairs: Any, wanted: frozenset[str]) -> dict[str, Any]:
    """The wanted attributes of a KeyValue list; values of any other key are never decoded."""
    found: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        key = pair.key
        if key in wanted:
            value = pair.value
            kind = value.WhichOneof("value")  # the scalar case inline: this runs for every attribute of every span
            found[key] = getattr(value, kind) if kind in _SCALARS else _value(value)
    return found


OWN_ATTRIBUTES = frozenset(ATTRIBUTES)
RESOURCE_ATTRIBUTES = frozenset({*ATTRIBUTES, EXCLUDES_CACHE})
WANTED_ATTRIBUTES = frozenset({
    *ATTRIBUTES, EXCLUDES_CACHE, *(name for names in TOKEN_ATTRIBUTES.values() for name in names), *_MODEL_ATTRIBUTES,
    *_PROVIDER_ATTRIBUTES, "gen_ai.operation.name", "gen_ai.conversation.id", "error.type",
})


@dataclass
class SpanEvents:
    """What an export's spans became: event payloads, with the spans refused (and why) and skipped."""

    payloads: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    skipped: int = 0


def span_event_id(trace_id: bytes, span_id: bytes) -> uuid.UUID:
    """The name-based (version 5, SHA-1) UUID of the trace and span ids' bytes under SPAN_EVENT_NAMESPACE."""
    digest = hashlib.sha1(SPAN_EVENT_NAMESPACE.bytes + trace_id + span_id, usedforsecurity=False).digest()
    return uuid.UUID(bytes=digest[:16], version=5)


def _is_model_call(attributes: Mapping[str, Any]) -> bool:
    operation = attributes.get("gen_ai.operation.name")
    if operation is not None:
        return isinstance(operation, str) and operation in GENAI_OPERATIONS
    has_model = any(isinstance(attributes.get(name), str) for name in _MODEL_ATTRIBUTES)
    return has_model and any(isinstance(attributes.get(name), str) for name in _PROVIDER_ATTRIBUTES)


def _first(attributes: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in attributes:
            return attributes[name]
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cache_apart(span: SpanView, tokens_in: Any, parts: list[Any]) -> bool:
    """Whether the span's input token count leaves out its cached parts (see the module's rule)."""
    stated = span.attributes.get(EXCLUDES_CACHE, span.resource_excludes_cache)
    if isinstance(stated, bool):
        return stated
    provider = _first(span.attributes, _PROVIDER_ATTRIBUTES)
    if not isinstance(provider, str) or not provider.lower().startswith(CACHE_APART_PROVIDER):
        return False
    return span.scope == VERCEL_AI_SCOPE or tokens_in < sum(count or 0 for count in parts)


def _tokens(span: SpanView) -> dict[str, Any]:
    """The token fields of a span: each from its first attribute present, the totals made whole."""
    attributes = span.attributes
    tokens: dict[str, Any] = {}
    for name, names in TOKEN_ATTRIBUTES.items():
        for attribute in names:
            value = attributes.get(attribute)
            if value is not None:
                tokens[name] = value
                break
    tokens_in: Any = tokens.get("input_tokens")
    tokens_out: Any = tokens.get("output_tokens")
    parts = [tokens.get("cache_read_input_tokens"), tokens.get("cache_write_input_tokens")]
    if (tokens_in is not None and any(count is not None for count in parts)
            and all(_number(count) for count in (tokens_in, *parts) if count is not None)
            and _cache_apart(span, tokens_in, parts)):
        tokens_in = tokens["input_tokens"] = tokens_in + sum(count or 0 for count in parts)
    if _number(tokens_in) and _number(tokens_out):
        tokens["tokens_used"] = tokens_in + tokens_out
    elif tokens_in is not None or tokens_out is not None:
        tokens["tokens_used"] = tokens_in if tokens_in is not None else tokens_out
    return tokens


def _own_fields(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The event fields that `mlops.` attributes fill."""
    return {
        ATTRIBUTES[name]: value for name, value in attributes.items() if name in OWN_ATTRIBUTES and value is not None
    }


class SpanView(NamedTuple):
    """What an event is made of from one span, read from protobuf or from OTLP/JSON alike."""

    trace_id: bytes
    span_id: bytes
    start: int
    end: int
    error_status: bool
    attributes: dict[str, Any]  # the WANTED_ATTRIBUTES it has, decoded
    scope: str = ""  # the instrumentation scope's name
    resource_excludes_cache: Any = None  # its resource's EXCLUDES_CACHE


def event_payload(span: SpanView, resource: Mapping[str, Any]) -> dict[str, Any] | str:
    """The event payload of one GenAI span, or why the span cannot be one.

    `resource` holds the event fields its resource's `mlops.` attributes fill; the span's own win.
    """
    start, end, trace_id, span_id, attributes = span.start, span.end, span.trace_id, span.span_id, span.attributes
    if not start or not end:
        return "the span has no start or end time"
    if end < start:
        return "the span ends before it starts"
    if len(trace_id) != 16 or len(span_id) != 8:
        return "the span needs a 16-byte trace id and an 8-byte span id"
    failed = span.error_status or bool(attributes.get("error.type"))
    payload = {**resource, **_own_fields(attributes), **_tokens(span)}
    conversation = attributes.get("gen_ai.conversation.id")
    if conversation is not None:
        payload["conversation_id"] = conversation
    if failed and "tokens_used" not in payload:
        payload["tokens_used"] = 0  # a call that failed before the model answered used none
    payload["model_name"] = _first(attributes, _MODEL_ATTRIBUTES)
    # Typed, not strings: the validation takes a UUID and an aware datetime as they are.
    payload["event_id"] = span_event_id(trace_id, span_id)
    payload["response_time_ms"] = round((end - start) / 1_000_000)
    payload["timestamp"] = datetime.fromtimestamp(end / 1e9, UTC)
    if failed:
        payload["success_rate"] = 0
    return payload


def proto_spans(request: ExportTraceServiceRequest) -> Iterator[tuple[SpanView, dict[str, Any]]]:
    """Every span of a protobuf export, with the event fields its resource's `mlops.` attributes fill."""
    for resource_spans in request.resource_spans:
        resource_attributes = attributes_of(resource_spans.resource.attributes, RESOURCE_ATTRIBUTES)
        resource, excludes_cache = _own_fields(resource_attributes), resource_attributes.get(EXCLUDES_CACHE)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            span: Span
            for span in scope_spans.spans:
                yield SpanView(
                    span.trace_id, span.span_id, span.start_time_unix_nano, span.end_time_unix_nano,
                    span.status.code == Status.STATUS_CODE_ERROR, attributes_of(span.attributes, WANTED_ATTRIBUTES),
                    scope, excludes_cache,
                ), resource


# --- OTLP/JSON, read as it is: protobuf's own JSON reader took most of a request to build messages
# whose every field but a few is never read. The shapes are the protocol's JSON mapping of the same
# messages (lowerCamelCase names, the original snake_case names accepted too).


class NotOtlp(ValueError):
    """A body that does not follow OTLP/JSON where the event reads it."""


def _get(holder: dict[str, Any], camel: str, snake: str) -> Any:
    value = holder.get(camel)
    return holder.get(snake) if value is None else value


def _objects(holder: dict[str, Any], camel: str, snake: str) -> list[dict[str, Any]]:
    value = _get(holder, camel, snake)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise NotOtlp(f"{camel} must be a list of objects")
    return value


def _json_int(value: Any, name: str) -> int:
    """A 64-bit integer, which OTLP/JSON writes as a number or a decimal string."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise NotOtlp(f"{name} must be an integer or a decimal string")
    try:
        number = int(value)
    except ValueError:
        raise NotOtlp(f"{name} must be an integer or a decimal string") from None
    if not -(2**63) <= number < 2**64:
        raise NotOtlp(f"{name} is out of range")
    return number


def _json_id(value: Any, name: str) -> bytes:
    if value is None or value == "":
        return b""
    if not isinstance(value, str):
        raise NotOtlp(f"{name} must be hex-encoded")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise NotOtlp(f"{name} must be hex-encoded") from None


# Arrays in arrays are read this deep at most; the body's JSON depth is not checked as a whole.
MAX_ARRAY_DEPTH = 4


def _json_double(found: Any) -> float:
    if isinstance(found, bool) or not isinstance(found, (int, float, str)):
        raise NotOtlp("doubleValue must be a number")
    try:
        return float(found)
    except ValueError:
        raise NotOtlp("doubleValue must be a number") from None


def _json_value(value: Any, depth: int = 0) -> Any:
    """An AnyValue's scalar (arrays as lists of scalars); anything else None."""
    if depth > MAX_ARRAY_DEPTH:
        raise NotOtlp(f"attribute arrays may nest at most {MAX_ARRAY_DEPTH} levels")
    if not isinstance(value, dict):
        raise NotOtlp("an attribute's value must be an AnyValue object")
    for camel, snake, kind in (("stringValue", "string_value", str), ("boolValue", "bool_value", bool)):
        found = _get(value, camel, snake)
        if found is not None:
            if not isinstance(found, kind):
                raise NotOtlp(f"{camel} has the wrong type")
            return found
    found = _get(value, "intValue", "int_value")
    if found is not None:
        return _json_int(found, "intValue")
    found = _get(value, "doubleValue", "double_value")
    if found is not None:
        return _json_double(found)
    array = _get(value, "arrayValue", "array_value")
    if isinstance(array, dict):
        return [_json_value(item, depth + 1) for item in _objects(array, "values", "values")]
    return None


def _json_attributes(holder: dict[str, Any], wanted: frozenset[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for pair in _objects(holder, "attributes", "attributes"):
        key = pair.get("key")
        if not isinstance(key, str):
            raise NotOtlp("an attribute's key must be a string")
        if key in wanted:
            found[key] = _json_value(pair.get("value", {}))
    return found


def _json_status_is_error(span: dict[str, Any]) -> bool:
    status = span.get("status")
    if status is None:
        return False
    if not isinstance(status, dict):
        raise NotOtlp("status must be an object")
    code = status.get("code")
    if isinstance(code, str) and not code.isdigit():
        return code == "STATUS_CODE_ERROR"
    return code is not None and _json_int(code, "status.code") == Status.STATUS_CODE_ERROR


def json_spans(data: Any) -> Iterator[tuple[SpanView, dict[str, Any]]]:
    """Every span of an OTLP/JSON export, as `proto_spans` gives those of a protobuf one; NotOtlp when it is none."""
    if not isinstance(data, dict):
        raise NotOtlp("the body must be a JSON object")
    for resource_spans in _objects(data, "resourceSpans", "resource_spans"):
        resource_object = resource_spans.get("resource") or {}
        if not isinstance(resource_object, dict):
            raise NotOtlp("resource must be an object")
        resource_attributes = _json_attributes(resource_object, RESOURCE_ATTRIBUTES)
        resource, excludes_cache = _own_fields(resource_attributes), resource_attributes.get(EXCLUDES_CACHE)
        for scope_spans in _objects(resource_spans, "scopeSpans", "scope_spans"):
            scope_object = scope_spans.get("scope") or {}
            scope = scope_object.get("name") if isinstance(scope_object, dict) else None
            if scope is not None and not isinstance(scope, str):
                raise NotOtlp("scope.name must be a string")
            for span in _objects(scope_spans, "spans", "spans"):
                yield SpanView(
                    _json_id(_get(span, "traceId", "trace_id"), "traceId"),
                    _json_id(_get(span, "spanId", "span_id"), "spanId"),
                    _json_int(_get(span, "startTimeUnixNano", "start_time_unix_nano"), "startTimeUnixNano"),
                    _json_int(_get(span, "endTimeUnixNano", "end_time_unix_nano"), "endTimeUnixNano"),
                    _json_status_is_error(span),
                    _json_attributes(span, WANTED_ATTRIBUTES),
                    scope or "", excludes_cache,
                ), resource


def span_events(spans: Iterable[tuple[SpanView, dict[str, Any]]]) -> SpanEvents:
    """The GenAI spans as event payloads; the others skipped."""
    found = SpanEvents()
    for span, resource in spans:
        if not _is_model_call(span.attributes):
            found.skipped += 1
            continue
        payload = event_payload(span, resource)
        if isinstance(payload, str):
            found.refused.append(f"span {span.span_id.hex() or '?'}: {payload}")
        else:
            found.payloads.append(payload)
    return found
