"""No export, however odd, makes /v1/traces answer 500, and a refused export stores nothing."""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from metrics_app.ingest.spans import ATTRIBUTES, TOKEN_ATTRIBUTES
from metrics_app.models import AIMetric
from tests.helpers import json_values

pytestmark = pytest.mark.django_db
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

KEYS = [*ATTRIBUTES, *(name for names in TOKEN_ATTRIBUTES.values() for name in names), "gen_ai.operation.name",
        "gen_ai.request.model", "gen_ai.response.model", "gen_ai.provider.name", "gen_ai.system",
        "gen_ai.conversation.id", "error.type"]
any_values = st.one_of(
    st.builds(lambda v: AnyValue(string_value=v), st.sampled_from(["chat", "gpt-4o-mini", "anthropic", "x" * 300])),
    st.builds(lambda v: AnyValue(int_value=v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: AnyValue(double_value=v), st.floats(allow_nan=True, allow_infinity=True)),
    st.builds(lambda v: AnyValue(bool_value=v), st.booleans()),
    st.builds(lambda v: AnyValue(bytes_value=v), st.binary(max_size=20)),
    st.builds(lambda v: AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=s) for s in v])),
              st.lists(st.sampled_from(["chat", "anthropic", ""]), max_size=3)),
)
spans = st.builds(
    lambda trace, span, start, end, attributes: Span(
        trace_id=trace, span_id=span, start_time_unix_nano=start, end_time_unix_nano=end,
        attributes=[KeyValue(key=k, value=v) for k, v in attributes],
    ),
    st.binary(max_size=17), st.binary(max_size=9), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
    st.lists(st.tuples(st.sampled_from(KEYS), any_values), max_size=12),
)
exports = st.builds(
    lambda groups: ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(scope_spans=[ScopeSpans(spans=group)]) for group in groups
    ]),
    st.lists(st.lists(spans, max_size=4), max_size=3),
)
# Attribute pairs as OTLP/JSON writes them, with keys and values of any JSON shape among the real ones.
json_attributes = st.lists(st.one_of(
    st.fixed_dictionaries({"key": st.sampled_from(KEYS), "value": st.one_of(
        st.fixed_dictionaries({"stringValue": st.one_of(st.sampled_from(["chat", "anthropic"]), json_values)}),
        st.fixed_dictionaries({"intValue": st.one_of(st.integers(), st.text(max_size=5), json_values)}),
        st.fixed_dictionaries({"doubleValue": json_values}), st.fixed_dictionaries({"boolValue": json_values}),
        st.fixed_dictionaries({"arrayValue": st.fixed_dictionaries({"values": json_values})}), json_values,
    )}),
    st.fixed_dictionaries({"key": json_values, "value": json_values}),
    json_values,
), max_size=8)
json_spans = st.fixed_dictionaries(
    {"traceId": st.sampled_from(["0af7651916cd43dd8448eb211c80319c", "zz", ""]),
     "spanId": st.sampled_from(["b7ad6b7169203331", "12"]),
     "startTimeUnixNano": st.one_of(st.integers(-5, 2**64), st.just("1773900000000000000"), json_values),
     "endTimeUnixNano": st.one_of(st.just("1773900000500000000"), json_values),
     "attributes": json_attributes},
    optional={"status": st.one_of(st.fixed_dictionaries({"code": json_values}), json_values)},
)
json_exports = st.recursive(
    st.fixed_dictionaries({"resourceSpans": st.lists(st.fixed_dictionaries({"scopeSpans": st.lists(
        st.fixed_dictionaries({"spans": st.lists(st.dictionaries(
            st.sampled_from(["traceId", "spanId", "name", "startTimeUnixNano", "endTimeUnixNano", "attributes",
                             "status", "kind", "links", "events"]), json_values, max_size=6), max_size=3)}),
        max_size=2)}), max_size=2)}),
    lambda children: st.dictionaries(st.sampled_from(["resourceSpans", "scopeSpans", "spans"]), children),
    max_leaves=10,
)


def post(api, body: bytes, content_type: str, **headers):
    response = api.post("/v1/traces", data=body, content_type=content_type, **headers)
    assert response.status_code < 500, response.content[:500]
    return response


@FUZZ
@given(export=exports)
def test_protobuf_exports_never_answer_500(api, export):
    before = AIMetric.objects.count()
    response = post(api, export.SerializeToString(), "application/x-protobuf")
    if response.status_code != 200:
        assert AIMetric.objects.count() == before


@FUZZ
@given(data=st.one_of(
    json_exports, json_values,
    st.builds(lambda spans, resource: {"resourceSpans": [{"resource": {"attributes": resource},
                                                          "scopeSpans": [{"spans": spans}]}]},
              st.lists(json_spans, max_size=4), json_attributes),
))
def test_json_exports_never_answer_500(api, data):
    before = AIMetric.objects.count()
    response = post(api, json.dumps(data).encode(), "application/json")
    if response.status_code != 200:
        assert AIMetric.objects.count() == before


@FUZZ
@given(raw=st.binary(max_size=400), content_type=st.sampled_from(["application/x-protobuf", "application/json"]),
       compress=st.booleans())
def test_raw_bytes_never_answer_500(api, raw, content_type, compress):
    body = gzip.compress(raw) if compress else raw
    headers = {"HTTP_CONTENT_ENCODING": "gzip"} if compress else {}
    post(api, body, content_type, **headers)
