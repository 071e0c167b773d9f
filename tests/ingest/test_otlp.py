"""POST /v1/traces: OTLP/HTTP exports of GenAI spans, made by the OpenTelemetry SDK's own encoder."""

from __future__ import annotations

import gzip
import json
import logging
from decimal import Decimal

import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from metrics_app.models import AIMetric, CostBasis
from tests.helpers import assert_stored_nowhere
from tests.ingest.otlp_helpers import CANARY, Call, event_id_of, genai_spans, gzipped, json_body, protobuf_body

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

CALLS = [
    # OpenAI: input counts the cached tokens; output counts the reasoning ones.
    Call("gpt-4o-mini", 812, 1200, 300, cache_read=1024, reasoning=120, intent="booking"),
    # Anthropic: input_tokens leaves out the 3,000 read from and 1,000 written to the cache.
    Call("claude-3-5-haiku-20241022", 1450, 200, 150, provider="anthropic", cache_read=3000, cache_write=1000,
         intent="pricing", booked=True),
    # Failed before the model answered: no usage at all.
    Call("gpt-4o-mini", 30_000, None, None, failed=True, intent=None),
]


def per_million(tokens: int, price: str) -> Decimal:
    return Decimal(tokens) * Decimal(price) / Decimal(1_000_000)


def post(client, body: bytes, content_type: str = PROTOBUF, key: str | None = None, **headers):
    if key is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client.post("/v1/traces", data=body, content_type=content_type, **headers)


def answer_of(response) -> ExportTraceServiceResponse:
    assert response.status_code == 200, response.content
    answer = ExportTraceServiceResponse()
    if response["Content-Type"] == PROTOBUF:
        answer.ParseFromString(response.content)
    else:
        from google.protobuf import json_format

        json_format.Parse(response.content, answer)
    return answer


@pytest.fixture
def key(business, make_key) -> str:
    return make_key(business, can_ingest=True)[1]


@pytest.mark.parametrize("encoding", [PROTOBUF, JSON])
@pytest.mark.parametrize("compress", [False, True])
def test_each_genai_span_is_one_event_with_its_tokens_cost_and_latency(api, business, key, encoding, compress):
    spans = genai_spans(CALLS, resource={"mlops.prompt_version": "v7", "mlops.kb_version": "kb-3"}, extra_spans=2)
    body = protobuf_body(spans) if encoding == PROTOBUF else json_body(spans)
    headers = {"HTTP_CONTENT_ENCODING": "gzip"} if compress else {}
    response = post(api, gzipped(body) if compress else body, encoding, key, **headers)

    assert response["Content-Type"] == encoding
    answer = answer_of(response)
    assert not answer.HasField("partial_success")
    events = {str(e.event_id): e for e in AIMetric.objects.all()}
    assert set(events) == {event_id_of(span) for span in spans[:3]}  # the two HTTP spans were skipped

    openai, anthropic, failed = (events[event_id_of(span)] for span in spans[:3])
    assert (openai.business_id, openai.model_name, openai.response_time_ms) == (business.id, "gpt-4o-mini", 812)
    assert (openai.input_tokens, openai.output_tokens, openai.tokens_used) == (1200, 300, 1500)
    assert (openai.cache_read_input_tokens, openai.cache_write_input_tokens, openai.reasoning_output_tokens) == (
        1024, None, 120)
    assert openai.cost_basis == CostBasis.TOKENS
    assert openai.cost_usd == per_million(176, "0.15") + per_million(1024, "0.075") + per_million(300, "0.60")
    assert (openai.conversation_id, openai.intent_detected, openai.prompt_version, openai.kb_version) == (
        "conv-otlp-1", "booking", "v7", "kb-3")
    assert openai.success_rate == 1 and not openai.appointment_booked

    assert (anthropic.input_tokens, anthropic.output_tokens, anthropic.tokens_used) == (4200, 150, 4350)
    assert (anthropic.cache_read_input_tokens, anthropic.cache_write_input_tokens) == (3000, 1000)
    assert anthropic.cost_usd == (per_million(200, "0.80") + per_million(3000, "0.08") + per_million(1000, "1.00")
                                  + per_million(150, "4.00"))
    assert anthropic.appointment_booked and anthropic.intent_detected == "pricing"

    assert failed.success_rate == 0 and failed.failed
    assert (failed.tokens_used, failed.response_time_ms) == (0, 30_000)
    # The reply time is the span's end.
    assert openai.timestamp.timestamp() == pytest.approx(spans[0].end_time / 1e9, abs=1e-6)


def test_a_retried_export_stores_nothing_twice(api, key):
    body = protobuf_body(genai_spans(CALLS))
    for _ in range(3):
        assert not answer_of(post(api, body, key=key)).HasField("partial_success")
    assert AIMetric.objects.count() == 3


def test_the_older_attribute_names_are_understood(api, key):
    spans = genai_spans([Call("gemini-1.5-flash", 640, 700, 300, provider="gcp.gemini", old_names=True)])
    answer_of(post(api, protobuf_body(spans), key=key))
    event = AIMetric.objects.get()
    assert (event.input_tokens, event.output_tokens, event.model_name) == (700, 300, "gemini-1.5-flash")
    assert event.cost_usd == per_million(700, "0.075") + per_million(300, "0.30")


@pytest.mark.parametrize(
    "call, resource, scope, tokens_in",
    [
        # OpenLLMetry's Anthropic spans already count the cache in (older names, gen_ai.system "Anthropic").
        (Call("claude-3-5-haiku-20241022", 900, 5200, 80, provider="Anthropic", cache_read=3000, cache_write=1000,
              old_names=True), {}, "opentelemetry.instrumentation.anthropic", 5200),
        # The Vercel AI SDK passes Anthropic's own count on: made whole even where it could be the total.
        (Call("claude-3-5-haiku-20241022", 900, 5200, 80, provider="anthropic.messages", cache_read=3000,
              old_names=True), {}, "ai", 8200),
        # Stated: a Bedrock instrumentation that sends Bedrock's count without the cache.
        (Call("claude-3-5-haiku-20241022", 900, 200, 80, provider="aws.bedrock", cache_read=3000),
         {"mlops.input_tokens_exclude_cache": True}, "receptionist.chat", 3200),
        (Call("gpt-4o-mini", 900, 5200, 80, cache_read=3000), {}, "receptionist.chat", 5200),
    ],
)
def test_input_tokens_are_made_whole_only_where_they_leave_the_cache_out(api, key, call, resource, scope, tokens_in):
    answer_of(post(api, protobuf_body(genai_spans([call], resource=resource, scope=scope)), key=key))
    event = AIMetric.objects.get()
    assert (event.input_tokens, event.tokens_used, event.cache_read_input_tokens) == (
        tokens_in, tokens_in + 80, call.cache_read)


def test_a_span_stating_its_input_is_whole_is_refused_when_the_cache_is_larger(api, key):
    call = Call("claude-3-5-haiku-20241022", 900, 200, 80, provider="anthropic", cache_read=3000)
    spans = genai_spans([call], resource={"mlops.input_tokens_exclude_cache": False})
    answer = answer_of(post(api, protobuf_body(spans), key=key))
    assert answer.partial_success.rejected_spans == 1
    assert "gen_ai.usage.cache_read.input_tokens" in answer.partial_success.error_message


def test_an_export_of_many_spans_past_the_event_batch_limits_is_stored_whole(api, key):
    calls = [Call("gpt-4o-mini", 500 + n, 100, 50, conversation=f"conv-{n // 6}") for n in range(1200)]
    body = json_body(genai_spans(calls))
    assert len(body) > 1024 * 1024  # past /track/batch's 1 MiB and 500 events
    assert not answer_of(post(api, body, JSON, key)).HasField("partial_success")
    assert AIMetric.objects.count() == 1200


def test_spans_whose_parts_exceed_their_totals_are_refused_by_name_and_the_rest_stored(api, key):
    calls = [Call("gpt-4o-mini", 500, 100, 50, cache_read=101), Call("gpt-4o-mini", 500, 100, 50, reasoning=51),
             Call("gpt-4o-mini", 500, 100, 50)]
    spans = genai_spans(calls)
    answer = answer_of(post(api, json_body(spans), JSON, key))

    assert answer.partial_success.rejected_spans == 2
    message = answer.partial_success.error_message
    assert "gen_ai.usage.cache_read.input_tokens" in message and "gen_ai.usage.reasoning.output_tokens" in message
    assert list(AIMetric.objects.values_list("event_id", flat=True)) == [
        AIMetric.objects.get().event_id
    ]
    assert str(AIMetric.objects.get().event_id) == event_id_of(spans[2])


def test_an_operation_name_that_is_no_string_is_no_model_call(api, key):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    listed = AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="chat")]))
    span = Span(trace_id=b"t" * 16, span_id=b"s" * 8, start_time_unix_nano=1, end_time_unix_nano=2,
                attributes=[KeyValue(key="gen_ai.operation.name", value=listed)])
    export = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])])
    assert answer_of(post(api, export.SerializeToString(), key=key)).partial_success.rejected_spans == 0
    assert not AIMetric.objects.exists()


def test_operations_that_are_no_model_call_are_skipped_not_refused(api, key):
    spans = genai_spans([Call("text-embedding-3-small", 40, 12, 0, operation="embeddings"),
                         Call("gpt-4o-mini", 500, 100, 50)])
    answer = answer_of(post(api, protobuf_body(spans), key=key))
    assert answer.partial_success.rejected_spans == 0
    assert AIMetric.objects.get().model_name == "gpt-4o-mini"


def test_message_content_is_stored_and_logged_nowhere(api, key, caplog):
    caplog.set_level(logging.DEBUG)
    calls = [*CALLS, Call("gpt-4o-mini", 500, 100, 50, cache_read=500)]  # one refused: its message is answered too
    spans = genai_spans(calls)
    answers = [post(api, protobuf_body(spans), key=key), post(api, gzipped(json_body(spans)), JSON, key,
                                                               HTTP_CONTENT_ENCODING="gzip")]
    assert AIMetric.objects.count() == 3
    for response in answers:
        assert CANARY.encode() not in response.content
    assert CANARY not in caplog.text
    assert_stored_nowhere(CANARY)


def test_without_a_key_in_development_the_business_comes_from_the_resource(api, db):
    spans = genai_spans([Call("gpt-4o-mini", 500, 100, 50)], resource={"mlops.business_id": "river-salon"})
    answer_of(post(api, protobuf_body(spans)))
    assert AIMetric.objects.get().business_id == "river-salon"

    nameless = genai_spans([Call("gpt-4o-mini", 500, 100, 50)])
    answer = answer_of(post(api, protobuf_body(nameless)))
    assert answer.partial_success.rejected_spans == 1
    assert "mlops.business_id" in answer.partial_success.error_message


def test_a_span_naming_another_business_than_the_keys_is_refused(api, key):
    spans = genai_spans([Call("gpt-4o-mini", 500, 100, 50)], resource={"mlops.business_id": "other-clinic"})
    answer = answer_of(post(api, protobuf_body(spans), key=key))
    assert answer.partial_success.rejected_spans == 1
    assert not AIMetric.objects.exists()


@pytest.mark.parametrize(
    "body, content_type, reason",
    [
        (b"\xff\xff\xff\xff not protobuf", PROTOBUF, "protobuf"),
        (b"{not json", JSON, "Malformed JSON"),
        (json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}).encode(), JSON,
         "traceId must be hex-encoded"),
        (json.dumps({"resourceSpans": "many"}).encode(), JSON, "OTLP/JSON"),
        (json.dumps([1, 2]).encode(), JSON, "JSON object"),
        (json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": [
            {"key": ["gen_ai.operation.name"], "value": {"stringValue": "chat"}}]}]}]}]}).encode(), JSON,
         "key must be a string"),
        (json.dumps({"resourceSpans": [{"resource": {"attributes": [{"key": {"k": 1}, "value": {}}]}}]}).encode(),
         JSON, "key must be a string"),
    ],
)
def test_a_malformed_export_gets_400_with_a_google_rpc_status_in_its_encoding(api, key, body, content_type, reason):
    response = post(api, body, content_type, key)
    assert response.status_code == 400
    assert response["Content-Type"] == content_type
    if content_type == PROTOBUF:
        status = status_pb2.Status.FromString(response.content)
        message, code = status.message, status.code
    else:
        message, code = response.json()["message"], response.json()["code"]
    assert code == 3 and reason in message
    assert not AIMetric.objects.exists()


def test_bad_gzip_is_malformed(api, key):
    response = post(api, b"\x1f\x8b not really gzip", key=key, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 400
    assert "gzip" in status_pb2.Status.FromString(response.content).message


def test_another_content_type_or_encoding_gets_415(api, key):
    body = protobuf_body(genai_spans(CALLS))
    assert post(api, body, "text/plain", key).status_code == 415
    response = post(api, body, key=key, HTTP_CONTENT_ENCODING="br")
    assert response.status_code == 415
    assert response.json()["errors"]["content_encoding"]


def test_an_export_past_the_size_limit_gets_413_sent_or_decompressed(api, key):
    too_large = post(api, b"\x00" * (8 * 1024 * 1024 + 1), key=key)
    assert too_large.status_code == 413
    bomb = gzip.compress(b"\x00" * (9 * 1024 * 1024))  # about 9 KB on the wire
    inflated = post(api, bomb, key=key, HTTP_CONTENT_ENCODING="gzip")
    assert inflated.status_code == 413
    assert "decompressed" in inflated.json()["errors"]["body"][0]


def test_the_keys_rate_limit_answers_429_with_retry_after(api, business, make_key):
    _, raw = make_key(business, can_ingest=True, rate_limit_per_minute=1)
    body = protobuf_body(genai_spans(CALLS[:1]))
    assert post(api, body, key=raw).status_code == 200
    limited = post(api, body, key=raw)
    assert limited.status_code == 429
    assert int(limited["Retry-After"]) >= 1


def test_a_read_only_key_may_not_export(api, business, make_key):
    _, raw = make_key(business, can_ingest=False, can_read=True)
    assert post(api, protobuf_body(genai_spans(CALLS)), key=raw).status_code == 403
    assert post(api, protobuf_body(genai_spans(CALLS)), key="mlk_not-a-key").status_code == 401
