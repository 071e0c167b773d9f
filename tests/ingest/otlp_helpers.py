"""GenAI spans made by the real OpenTelemetry SDK, and the OTLP bodies its own encoder makes of them."""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from metrics_app.ingest.spans import span_event_id

# Placed in every place that carries message content; it must be stored and logged nowhere.
CANARY = "canary-7f3a9c-message-content"
START_NS = 1_773_900_000_000_000_000  # 2026-03-19 06:00:00 UTC


@dataclass(frozen=True)
class Call:
    """One model call, as the test means it; `span` turns it into the SDK's span."""

    model: str
    latency_ms: int
    input_tokens: int | None
    output_tokens: int | None
    provider: str = "openai"
    cache_read: int | None = None
    cache_write: int | None = None
    reasoning: int | None = None
    conversation: str = "conv-otlp-1"
    failed: bool = False
    intent: str | None = "booking"
    booked: bool = False
    operation: str = "chat"
    old_names: bool = False
    sentiment: float | None = None


def genai_spans(calls: list[Call], resource: dict[str, Any] | None = None, extra_spans: int = 0,
                scope: str = "receptionist.chat") -> list[ReadableSpan]:
    """Finished SDK spans: one per call (GenAI attributes, content in every content place), then plain spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "receptionist", **(resource or {})}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(scope)
    at = START_NS
    for call in calls:
        attributes = _attributes(call)
        span = tracer.start_span(f"{call.operation} {call.model}", attributes=attributes, start_time=at)
        span.add_event("gen_ai.content.prompt", {"gen_ai.prompt": CANARY})
        span.add_event("gen_ai.content.completion", {"gen_ai.completion": CANARY})
        if call.failed:
            span.set_status(Status(StatusCode.ERROR, CANARY))
            span.set_attribute("error.type", "RateLimitError")
        span.end(end_time=at + call.latency_ms * 1_000_000)
        at += 60 * 1_000_000_000
    for n in range(extra_spans):
        with tracer.start_as_current_span(f"GET /api/hours/{n}", start_time=at, end_on_exit=False) as span:
            span.set_attribute("http.route", "/api/hours/[businessId]")
            span.end(end_time=at + 5_000_000)
    provider.shutdown()
    return list(exporter.get_finished_spans())


def _attributes(call: Call) -> dict[str, Any]:
    usage = "gen_ai.usage.prompt_tokens" if call.old_names else "gen_ai.usage.input_tokens"
    completion = "gen_ai.usage.completion_tokens" if call.old_names else "gen_ai.usage.output_tokens"
    attributes: dict[str, Any] = {
        "gen_ai.request.model": call.model,
        "gen_ai.response.model": call.model,
        "gen_ai.conversation.id": call.conversation,
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": CANARY}]}]),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": CANARY}]}]),
        "gen_ai.system_instructions": CANARY,
        "gen_ai.prompt": CANARY,
        "gen_ai.completion": CANARY,
        "mlops.appointment_booked": call.booked,
    }
    if call.old_names:
        attributes["gen_ai.system"] = call.provider
    else:
        attributes["gen_ai.operation.name"] = call.operation
        attributes["gen_ai.provider.name"] = call.provider
    if call.intent:
        attributes["mlops.intent"] = call.intent
    if call.sentiment is not None:
        attributes["mlops.user_sentiment"] = call.sentiment
    for name, value in ((usage, call.input_tokens), (completion, call.output_tokens),
                        ("gen_ai.usage.cache_read.input_tokens", call.cache_read),
                        ("gen_ai.usage.cache_creation.input_tokens", call.cache_write),
                        ("gen_ai.usage.reasoning.output_tokens", call.reasoning)):
        if value is not None:
            attributes[name] = value
    return attributes


def protobuf_body(spans: list[ReadableSpan]) -> bytes:
    return encode_spans(spans).SerializeToString()


def json_body(spans: list[ReadableSpan]) -> bytes:
    """The OTLP/JSON of the spans: protobuf's JSON mapping, with trace and span ids in hex as OTLP/JSON writes them."""
    data = json_format.MessageToDict(encode_spans(spans))
    for resource_spans in data["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for name in ("traceId", "spanId", "parentSpanId"):
                    if name in span:
                        span[name] = base64.b64decode(span[name]).hex()
    return json.dumps(data).encode()


def gzipped(body: bytes) -> bytes:
    return gzip.compress(body)


def event_id_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return str(span_event_id(context.trace_id.to_bytes(16, "big"), context.span_id.to_bytes(8, "big")))
