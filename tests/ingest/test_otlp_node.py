"""Stock OpenTelemetry exporters pointed at the real service: the JavaScript SDK's OTLP/HTTP ones, run by Node.js.

tests/otlp_node/export_spans.mjs builds a receptionist's spans with the SDK
and exports them with the stock exporter of the encoding asked for
(`exporter-trace-otlp-http` for JSON, `exporter-trace-otlp-proto` for
protobuf), configured only by the standard environment variables, then sends
the same spans again as a retry. It prints what it sent; every stored figure
is checked against that, with costs computed here from the published prices.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps

from metrics_app.ingest.spans import span_event_id
from metrics_app.models import AIMetric
from tests.clients.helpers import cached_node_build, copy_files, have_node, run
from tests.helpers import ROOT, LiveService, fold_all, require
from tests.monitoring.helpers import total

pytestmark = pytest.mark.slow

PROJECT = ROOT / "tests" / "otlp_node"
SCRIPT = "export_spans.mjs"
CANARY = "canary-5d81e2-node-message-content"  # export_spans.mjs puts it in every place that carries content
ERROR = 2  # SpanStatusCode.ERROR in @opentelemetry/api
# gpt-4o-mini's published prices, USD per million tokens: input, cached input, output.
GPT_4O_MINI = {"input": Decimal("0.15"), "cached": Decimal("0.075"), "output": Decimal("0.60")}


def _install(names: list[str], staging: Path) -> None:
    copy_files(names, PROJECT, staging)
    run(["npm", "ci", "--no-audit", "--no-fund"], staging, timeout=300)


@functools.cache
def install_project() -> Path:
    """The Node project installed from its lock file (`npm ci`), once per edit of it and Node's version."""
    return cached_node_build(PROJECT, "mlops-otlp-node", _install)


@pytest.fixture
def otlp_node_project() -> Path:
    require(have_node(), "Node.js and npm (the JavaScript OpenTelemetry exporters)")
    return install_project()


@dataclass(frozen=True)
class SentSpan:
    """One span as export_spans.mjs sent it."""

    trace_id: str
    span_id: str
    start_ns: int
    end_ns: int
    status_code: int
    attributes: dict[str, Any]

    @classmethod
    def parse(cls, printed: dict[str, Any]) -> SentSpan:
        return cls(printed["traceId"], printed["spanId"], int(printed["startTimeUnixNano"]),
                   int(printed["endTimeUnixNano"]), printed["status"]["code"], printed["attributes"])

    @property
    def event_id(self) -> str:
        return str(span_event_id(bytes.fromhex(self.trace_id), bytes.fromhex(self.span_id)))

    @property
    def is_genai(self) -> bool:
        return self.attributes.get("gen_ai.operation.name") == "chat"

    def tokens(self, name: str) -> int | None:
        return self.attributes.get(f"gen_ai.usage.{name}")


def export_with_node(project: Path, service: LiveService, raw_key: str, encoding: str, compression: str
                     ) -> dict[str, Any]:
    """Run export_spans.mjs against the service, configured as an application's exporter is; what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "DJANGO_", "DATABASE_", "OTEL_"))}
    env.update({
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{service.url}/v1/traces",
        "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer {raw_key}",
        "OTEL_EXPORTER_OTLP_COMPRESSION": compression,
    })
    done = subprocess.run(["node", SCRIPT, encoding, "receptionist"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, f"{SCRIPT} exited with {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def gpt_4o_mini_cost(span: SentSpan) -> Decimal:
    """The call's cost from the published prices: cached input at its own price, reasoning within output."""
    cached = span.tokens("cache_read.input_tokens") or 0
    fresh = (span.tokens("input_tokens") or 0) - cached
    output = span.tokens("output_tokens") or 0
    per_million = fresh * GPT_4O_MINI["input"] + cached * GPT_4O_MINI["cached"] + output * GPT_4O_MINI["output"]
    return per_million / 1_000_000


def everything_stored() -> str:
    """Every row of every table the project's models own, as text."""
    return repr([list(model.objects.values()) for model in apps.get_models()])


@pytest.mark.parametrize(("encoding", "compression"), [
    ("json", "none"), ("json", "gzip"), ("protobuf", "none"), ("protobuf", "gzip"),
])
def test_the_javascript_sdk_exporter_stores_every_genai_span_once_with_its_figures(
    otlp_node_project, live_service, published_prices, business, make_key, encoding, compression
):
    _, raw_key = make_key(business, can_ingest=True)
    service = live_service(workers=2)

    printed = export_with_node(otlp_node_project, service, raw_key, encoding, compression)

    spans = [SentSpan.parse(span) for span in printed["spans"]]
    genai = [span for span in spans if span.is_genai]
    plain = [span for span in spans if not span.is_genai]
    # The scenario has what this test is about: a cached and reasoning OpenAI call, an Anthropic call with
    # cache reads and writes, a failed call, plain spans; and two exports (the retry) of all of them.
    assert {span.attributes["gen_ai.provider.name"] for span in genai} == {"openai", "anthropic"}
    assert any(span.tokens("cache_read.input_tokens") and span.tokens("reasoning.output_tokens") for span in genai)
    assert any(span.status_code == ERROR and span.attributes.get("error.type") for span in genai)
    assert plain
    assert [(export["spans"], export["code"]) for export in printed["exports"]] == [(len(spans), 0)] * 2

    stored = {str(event.event_id): event for event in AIMetric.objects.filter(business_id=business.id)}
    assert set(stored) == {span.event_id for span in genai}
    assert AIMetric.objects.count() == len(genai)  # once each, after the retry; no event for a plain span
    for span in genai:
        event = stored[span.event_id]
        cached_apart = span.attributes["gen_ai.provider.name"] == "anthropic"
        cache_read, cache_write = span.tokens("cache_read.input_tokens"), span.tokens("cache_creation.input_tokens")
        tokens_in = span.tokens("input_tokens")
        if tokens_in is not None and cached_apart:
            tokens_in += (cache_read or 0) + (cache_write or 0)
        assert (event.input_tokens, event.output_tokens) == (tokens_in, span.tokens("output_tokens"))
        assert event.tokens_used == (tokens_in or 0) + (span.tokens("output_tokens") or 0)
        assert (event.cache_read_input_tokens, event.cache_write_input_tokens, event.reasoning_output_tokens) == (
            cache_read, cache_write, span.tokens("reasoning.output_tokens"))
        assert event.response_time_ms == round((span.end_ns - span.start_ns) / 1_000_000)
        assert event.timestamp == datetime.fromtimestamp(span.end_ns // 1000 / 1_000_000, UTC)
        assert event.success_rate == (0 if span.status_code == ERROR else 1)
        assert event.model_name == span.attributes["gen_ai.response.model"]
        assert event.conversation_id == span.attributes["gen_ai.conversation.id"]
        assert event.intent_detected == span.attributes.get("mlops.intent")
        assert event.appointment_booked == span.attributes["mlops.appointment_booked"]
        assert event.prompt_version == printed["resource"]["mlops.prompt_version"]

    priced = [span for span in genai if span.attributes["gen_ai.response.model"] == "gpt-4o-mini"]
    assert len(priced) >= 3
    for span in priced:
        assert stored[span.event_id].cost_usd == gpt_4o_mini_cost(span), span.attributes
    assert sum(stored[span.event_id].cost_usd for span in priced) == sum(map(gpt_4o_mini_cost, priced))

    fold_all()
    status, _, text = service.request("GET", "/metrics")
    assert status == 200
    assert total(text, "ai_requests_total") == len(genai)
    assert total(text, "mlops_ingest_events_total", outcome="duplicate") == len(genai)  # the retry arrived
    assert total(text, "mlops_ingest_events_total", outcome="skipped") == len(plain) * 2
    assert CANARY not in everything_stored()
    assert CANARY not in service.log()
