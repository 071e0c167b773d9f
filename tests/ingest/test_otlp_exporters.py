"""Stock OpenTelemetry exporters pointed at the real service: the Python SDK's OTLP/HTTP one (protobuf).

The exporter is configured only as its users configure it, by the standard
environment variables (the endpoint and `OTEL_EXPORTER_OTLP_HEADERS` with the
key); every stored figure is checked against the spans it exported.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from metrics_app.models import AIMetric
from tests.helpers import fold_all
from tests.ingest.otlp_helpers import CANARY, Call, event_id_of, genai_spans
from tests.monitoring.helpers import total

pytestmark = pytest.mark.slow

CALLS = [
    Call("gpt-4o-mini", 700 + 13 * n, 400 + n, 80 + n, cache_read=256 if n % 2 else None,
         reasoning=n if n % 3 == 0 else None, conversation=f"conv-{n // 4}", booked=n == 5, intent="booking")
    for n in range(24)
] + [
    Call("claude-3-5-haiku-20241022", 1500, 100, 60, provider="anthropic", cache_read=2000, cache_write=500),
    Call("gpt-4o-mini", 20_000, None, None, failed=True, intent=None),
]


def stock_exporter(service, raw_key: str, monkeypatch) -> OTLPSpanExporter:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{service.url}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer {raw_key}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    return OTLPSpanExporter()


def test_the_python_sdk_exporter_stores_every_genai_span_once_and_prometheus_counts_them(
    live_service, published_prices, business, make_key, monkeypatch, tmp_path
):
    _, raw_key = make_key(business, can_ingest=True)
    service = live_service(workers=2)
    spans = genai_spans(CALLS, resource={"mlops.prompt_version": "v7"}, extra_spans=3)
    exporter = stock_exporter(service, raw_key, monkeypatch)

    assert exporter.export(spans) == SpanExportResult.SUCCESS
    assert exporter.export(spans) == SpanExportResult.SUCCESS  # the exporter's retry of the same batch
    exporter.shutdown()

    stored = {str(e.event_id): e for e in AIMetric.objects.filter(business_id=business.id)}
    assert set(stored) == {event_id_of(span) for span in spans[:len(CALLS)]}
    assert AIMetric.objects.count() == len(CALLS)
    for call, span in zip(CALLS, spans, strict=False):
        event = stored[event_id_of(span)]
        cached_apart = call.provider == "anthropic"
        tokens_in = (call.input_tokens or 0) + ((call.cache_read or 0) + (call.cache_write or 0) if cached_apart else 0)
        assert event.response_time_ms == call.latency_ms
        assert (event.input_tokens, event.output_tokens) == (
            None if call.input_tokens is None else tokens_in, call.output_tokens)
        assert event.tokens_used == tokens_in + (call.output_tokens or 0)
        assert (event.cache_read_input_tokens, event.cache_write_input_tokens, event.reasoning_output_tokens) == (
            call.cache_read, call.cache_write, call.reasoning)
        assert event.failed == call.failed
        assert event.prompt_version == "v7" and event.conversation_id == call.conversation
        assert CANARY not in repr(AIMetric.objects.filter(pk=event.pk).values().get())
    expected_cost = sum(
        (Decimal(c.input_tokens - (c.cache_read or 0)) * Decimal("0.15") + Decimal(c.cache_read or 0)
         * Decimal("0.075") + Decimal(c.output_tokens) * Decimal("0.60")) / 1_000_000
        for c in CALLS if c.model == "gpt-4o-mini" and c.input_tokens is not None
    )
    assert sum(e.cost_usd for e in stored.values() if e.model_name == "gpt-4o-mini") == expected_cost
    assert CANARY not in service.log()

    fold_all()
    status, _, text = service.request("GET", "/metrics")
    assert status == 200
    assert total(text, "ai_requests_total") == len(CALLS)
    assert total(text, "mlops_ingest_events_total", outcome="duplicate") == len(CALLS)
    assert total(text, "mlops_ingest_events_total", outcome="skipped") == 3 * 2
    assert total(text, "appointments_booked_total") == 1
    assert total(text, "ai_failed_replies_total") == 1
