"""OpenTelemetry GenAI spans as tracking events.

A span is one event when its attributes say it is a call to a model, as the
OpenTelemetry GenAI semantic conventions name them: `gen_ai.operation.name`
chat, generate_content or text_completion (or, from instrumentations older
than that attribute, `gen_ai.system` with a model name). Every other span is
skipped, not refused. What this module makes of a span is an event payload
in /track's own form, so the one validation in `validation.check_event`
applies to both doors.

- The latency is the span's duration; the reply time, its end.
- A span is a failed reply when its status is ERROR or `error.type` is set.
- Token counts follow the conventions: input tokens include those read from
  and written to the prompt cache, output tokens include reasoning ones. Spans
  of Anthropic (`gen_ai.provider.name` or `gen_ai.system` "anthropic") carry
  Anthropic's own counts, where input excludes the cached parts: they are
  added to it.
- The receptionist's own fields come from attributes under `mlops.` (see
  ATTRIBUTES), on the span or else on its resource.
- The event id is a UUID derived from the trace and span ids, so an exporter's
  retry of the same span is the same event.

Message content (`gen_ai.input.messages`, `gen_ai.output.messages`,
`gen_ai.prompt`, `gen_ai.completion`, span events) is never read: only the
attributes named here are.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

GENAI_OPERATIONS = frozenset({"chat", "generate_content", "text_completion"})
# Providers whose input token count leaves out the tokens read from and written to the cache.
CACHE_APART_PROVIDERS = frozenset({"anthropic"})
NAMESPACE = "mlops."

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
# Event ids of spans: uuid5 of the hex trace and span ids under this namespace.
SPAN_EVENT_NAMESPACE = uuid.UUID("6d6c6f70-732d-4f54-8c50-7370616e7321")


def _value(value: AnyValue) -> Any:
    """A scalar attribute value as JSON would carry it; arrays as lists of scalars; anything else None."""
    kind = value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return None


def attributes_of(pairs: Any, wanted: frozenset[str]) -> dict[str, Any]:
    """The wanted attributes of a KeyValue list; values of any other key are never decoded."""
    found: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        if pair.key in wanted:
            found[pair.key] = _value(pair.value)
    return found


_OWN = frozenset(ATTRIBUTES)
_WANTED = frozenset({
    *ATTRIBUTES, *(name for names in TOKEN_ATTRIBUTES.values() for name in names), *_MODEL_ATTRIBUTES,
    *_PROVIDER_ATTRIBUTES, "gen_ai.operation.name", "gen_ai.conversation.id", "error.type",
})


@dataclass
class SpanEvents:
    """What an export's spans became: event payloads, with the spans refused (and why) and skipped."""

    payloads: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    skipped: int = 0


def span_event_id(trace_id: bytes, span_id: bytes) -> uuid.UUID:
    return uuid.uuid5(SPAN_EVENT_NAMESPACE, f"{trace_id.hex()}-{span_id.hex()}")


def _is_model_call(attributes: Mapping[str, Any]) -> bool:
    operation = attributes.get("gen_ai.operation.name")
    if operation is not None:
        return operation in GENAI_OPERATIONS
    has_model = any(isinstance(attributes.get(name), str) for name in _MODEL_ATTRIBUTES)
    return has_model and any(isinstance(attributes.get(name), str) for name in _PROVIDER_ATTRIBUTES)


def _first(attributes: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in attributes:
            return attributes[name]
    return None


def _tokens(attributes: Mapping[str, Any]) -> dict[str, Any]:
    tokens = {name: _first(attributes, names) for name, names in TOKEN_ATTRIBUTES.items()}
    provider = _first(attributes, _PROVIDER_ATTRIBUTES)
    cached = [tokens[name] for name in ("cache_read_input_tokens", "cache_write_input_tokens")]
    counts = [tokens["input_tokens"], *cached]
    if isinstance(provider, str) and provider.lower() in CACHE_APART_PROVIDERS and all(
        isinstance(count, int) for count in counts if count is not None
    ) and tokens["input_tokens"] is not None:
        tokens["input_tokens"] = sum(count or 0 for count in counts)
    known = [tokens["input_tokens"], tokens["output_tokens"]]
    if all(isinstance(count, (int, float)) and not isinstance(count, bool) for count in known):
        tokens["tokens_used"] = known[0] + known[1]
    elif any(count is not None for count in known):
        tokens["tokens_used"] = next(count for count in known if count is not None)
    return tokens


def event_payload(span: Span, resource: Mapping[str, Any]) -> dict[str, Any] | str:
    """The event payload of one GenAI span, or why the span cannot be one."""
    attributes = attributes_of(span.attributes, _WANTED)
    if not span.start_time_unix_nano or not span.end_time_unix_nano:
        return "the span has no start or end time"
    if span.end_time_unix_nano < span.start_time_unix_nano:
        return "the span ends before it starts"
    if len(span.trace_id) != 16 or len(span.span_id) != 8:
        return "the span needs a 16-byte trace id and an 8-byte span id"
    failed = span.status.code == Status.STATUS_CODE_ERROR or bool(attributes.get("error.type"))
    payload: dict[str, Any] = {
        field_name: value
        for name, field_name in ATTRIBUTES.items()
        if (value := attributes.get(name, resource.get(name))) is not None
    }
    conversation = attributes.get("gen_ai.conversation.id")
    if conversation is not None:
        payload["conversation_id"] = conversation
    payload.update((name, value) for name, value in _tokens(attributes).items() if value is not None)
    if "tokens_used" not in payload and failed:
        payload["tokens_used"] = 0  # a call that failed before the model answered used none
    payload["model_name"] = _first(attributes, _MODEL_ATTRIBUTES)
    payload["event_id"] = str(span_event_id(span.trace_id, span.span_id))
    payload["response_time_ms"] = round((span.end_time_unix_nano - span.start_time_unix_nano) / 1_000_000)
    payload["timestamp"] = datetime.fromtimestamp(span.end_time_unix_nano / 1e9, UTC).isoformat()
    if failed:
        payload["success_rate"] = 0
    return payload


def spans_of(request: ExportTraceServiceRequest) -> Iterator[tuple[Span, dict[str, Any]]]:
    """Every span of an export with its resource's `mlops.` attributes."""
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes, _OWN)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield span, resource


def span_events(request: ExportTraceServiceRequest) -> SpanEvents:
    """The export's GenAI spans as event payloads; the others skipped."""
    found = SpanEvents()
    for span, resource in spans_of(request):
        if not _is_model_call(attributes_of(span.attributes, _WANTED)):
            found.skipped += 1
            continue
        payload = event_payload(span, resource)
        if isinstance(payload, str):
            found.refused.append(f"span {span.span_id.hex() or '?'}: {payload}")
        else:
            found.payloads.append(payload)
    return found
