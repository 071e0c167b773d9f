"""No input, however odd, makes an endpoint that a client or a staff user can reach answer 500.

The ingest has its own fuzzing (test_track_fuzz.py); this covers the rest: the
outcome API, the analytics and conversations query strings, the knowledge-base
search and the staff console's filters, searches, export, autocomplete, object
pages and actions. Examples are few per endpoint, so that the file runs in
seconds on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from documents_app.search.embeddings import get_method
from metrics_app.api.experiments import CompareQuerySerializer
from metrics_app.api.queries import (
    BreakdownQuerySerializer,
    ConversationQuerySerializer,
    CostOptionsQuerySerializer,
    TimeseriesQuerySerializer,
)
from metrics_app.http.bodies import MAX_JSON_DEPTH
from metrics_app.models import Business
from tests.helpers import json_values

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

# Values that have broken parsers before: empty, NUL, huge numbers, far dates, odd zones, SQL and paths.
tricky = st.sampled_from([
    "", " ", "\x00", "a\x00b", "-1", "0", "1e309", "99999999999999999999", "true", "null", "NaN",
    "2026-03-01", "2026-03-01T00:00:00+05:45", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-02-30",
    "Europe/London", "Mars/Base", "../../etc/passwd", "%", "' OR 1=1 --", "acme-dental", "x" * 300,
])
values = st.one_of(tricky, st.text(max_size=40), st.text(max_size=10).map(lambda text: text + "\x00"))
# Arrays nested around the service's depth limit, Python's recursion limit, orjson's own (1024) and beyond.
nested_json = st.sampled_from([2, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 1000, 1025, 100_000]).map(
    lambda depth: b"[" * depth + b"]" * depth
)


def query_strings(names: list[str]) -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(st.one_of(st.sampled_from(names), st.text(max_size=10)), values, max_size=5)


def assert_no_500(response: Any) -> None:
    """No 5xx; a JSON error is in the service's error shape. A streamed CSV export is read to its end."""
    content = b"".join(response.streaming_content) if response.streaming else response.content
    assert response.status_code < 500, (response.status_code, content[:500])
    if response.status_code >= 400 and response["Content-Type"] == "application/json":
        assert set(json.loads(content)) == {"error", "errors"}, content[:500]


@pytest.fixture
def traffic(business: Business, store_event: Any) -> None:
    now = timezone.now()
    store_event(business_id=business.id, conversation_id="chat-1", model_name="gemini-1.5-flash",
                intent_detected="pricing", timestamp=now - timedelta(hours=1))
    store_event(business_id=business.id, conversation_id="chat-2", response_type="error", success_rate=0.0,
                appointment_requested=True, timestamp=now - timedelta(days=2))


def key_headers(make_key: Any, business: Business | None, **scopes: bool) -> dict[str, str]:
    _, raw = make_key(business, **scopes)
    return {"Authorization": f"Bearer {raw}"}


# --- The outcome API.

outcome_fields = ["business_id", "conversation_id", "appointment_booked", "appointment_requested",
                  "human_handoff_requested", "note"]
outcomes = st.one_of(
    st.dictionaries(st.sampled_from([*outcome_fields, "extra"]), json_values, max_size=7),
    st.fixed_dictionaries(
        {"conversation_id": st.sampled_from(["chat-1", "chat-2", "nope"]) | values},
        optional={
            "business_id": st.sampled_from(["acme-dental", "other-biz"]) | values,
            "appointment_booked": st.booleans() | json_values,
            "appointment_requested": st.booleans(),
            "human_handoff_requested": st.booleans(),
            "note": values | json_values,
        },
    ),
    json_values,
)


@FUZZ
@given(payload=outcomes)
def test_the_outcome_api_never_answers_500(api, make_key, business, traffic, payload):
    headers = key_headers(make_key, business, can_ingest=True)
    assert_no_500(api.post("/api/conversations/outcome", json.dumps(payload), content_type="application/json",
                           headers=headers))


@FUZZ
@example(raw=b"[" * 100_000 + b"]" * 100_000, content_type="application/json")  # deeper than any stack
@given(
    raw=st.binary(max_size=300) | nested_json,
    content_type=st.sampled_from(["application/json", "text/plain", "multipart/form-data"]),
)
def test_raw_bytes_to_the_outcome_api_never_answer_500(api, make_key, business, raw, content_type):
    headers = key_headers(make_key, business, can_ingest=True)
    assert_no_500(api.post("/api/conversations/outcome", raw, content_type=content_type, headers=headers))


# --- Analytics and conversations query strings.

ANALYTICS_PATHS = [
    "/api/analytics/summary", "/api/analytics/funnel", "/api/analytics/timeseries", "/api/analytics/peak-hours",
    "/api/analytics/breakdown/intent", "/api/analytics/breakdown/model", "/api/conversations/",
    "/api/analytics/compare", "/api/analytics/costs", "/api/analytics/opening-hours",
]
ANALYTICS_PARAMS = sorted(
    {*TimeseriesQuerySerializer().fields, *BreakdownQuerySerializer().fields, *ConversationQuerySerializer().fields,
     *CompareQuerySerializer().fields, *CostOptionsQuerySerializer().fields}
)


@FUZZ
@given(path=st.sampled_from(ANALYTICS_PATHS), query=query_strings(ANALYTICS_PARAMS), agency=st.booleans())
def test_analytics_query_strings_never_answer_500(api, make_key, business, traffic, path, query, agency):
    headers = key_headers(make_key, None if agency else business, can_read=True, can_ingest=False)
    assert_no_500(api.get(path, query, headers=headers))


@FUZZ
@given(dimension=values, pk=st.integers(min_value=0, max_value=2**63))
def test_odd_path_segments_never_answer_500(api, make_key, business, traffic, dimension, pk):
    headers = key_headers(make_key, None, can_read=True, can_ingest=False)
    assert_no_500(api.get(f"/api/analytics/breakdown/{dimension.replace('/', '')}", headers=headers))
    assert_no_500(api.get(f"/api/conversations/{pk}", headers=headers))
    assert_no_500(api.get(f"/api/experiments/{pk}/results", {"lift": dimension, "tz": dimension}, headers=headers))


# --- Experiments.

experiment_fields = ["business_id", "name", "description", "dimension", "variant_a", "variant_b", "split_a",
                     "primary_metric", "minimum_lift", "started_at"]
experiment_bodies = st.one_of(
    st.dictionaries(st.sampled_from(experiment_fields), st.one_of(values, json_values), max_size=10),
    json_values,
)


@FUZZ
@given(body=experiment_bodies)
@example(body={"name": "x", "variant_a": "v1", "variant_b": "v2", "split_a": 1e309})
@example(body={"name": "x", "variant_a": "v1", "variant_b": "v2", "started_at": "9999-12-31T23:59:59Z"})
def test_making_an_experiment_never_answers_500(api, make_key, business, body):
    headers = key_headers(make_key, business, can_ingest=True)
    response = api.post("/api/experiments/", json.dumps(body), content_type="application/json", headers=headers)
    assert_no_500(response)


# --- The knowledge-base search.


@pytest.fixture
def small_knowledge_base(tmp_path: Path, settings: Any) -> None:
    texts = ["We are open 9 to 5 on weekdays.", "A cleaning costs 80 pounds.", "Parking is behind the clinic."]
    embeddings = get_method("bm25").embed(texts)
    chunks = [
        {"id": f"c{n}", "business_id": "acme-dental", "text": text, "source": "faq.md", "section": "FAQ",
         "position": n, "topic": "general", "embedding": embedding}
        for n, (text, embedding) in enumerate(zip(texts, embeddings, strict=True))
    ]
    path = tmp_path / "data/knowledge_base/current_kb.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "version": "kb-fuzz", "embedding": {"method": "bm25"}, "params": {}, "chunks": chunks,
        "businesses": {"acme-dental": {"documents": ["faq.md"], "chunks": 3, "topics": {"general": 3}}},
    }))
    settings.DOCUMENTS_PIPELINE_ROOT = tmp_path


@FUZZ
@given(query=query_strings(["q", "k", "business_id"]), keyed=st.booleans())
def test_the_knowledge_base_search_never_answers_500(api, make_key, business, small_knowledge_base, query, keyed):
    headers = key_headers(make_key, business, can_read=True) if keyed else {}
    query.setdefault("business_id", "acme-dental")
    assert_no_500(api.get("/api/knowledge-base/search", query, headers=headers))
    assert_no_500(api.get("/api/knowledge-base/", query, headers=headers))


# --- The staff console.

CONSOLE_PAGES = {
    reverse("admin:metrics_app_aimetric_changelist"): [
        "business", "timestamp__gte", "timestamp__lt", "model", "intent", "response_type", "failed",
        "appointment_requested__exact", "appointment_booked__exact", "human_handoff_requested__exact",
        "business__id__exact", "q", "o", "p", "all", "e", "_facets",
    ],
    reverse("admin:metrics_app_aimetric_export"): ["business", "model", "intent", "failed", "q", "timestamp__gte"],
    reverse("admin:metrics_app_aimetric_dashboard"): ["business", "period", "start", "end", "tz"],
    reverse("admin:metrics_app_aimetric_costs"): ["business", "period", "start", "end"],
    reverse("admin:metrics_app_conversation_changelist"): [
        "business", "business__id__exact", "first_at__gte", "first_at__lt", "appointment_booked__exact", "state", "q",
        "o", "p",
    ],
    reverse("admin:metrics_app_business_changelist"): ["q", "o", "p"],
    reverse("admin:metrics_app_erasurerecord_changelist"): ["kind__exact", "q", "o", "p"],
    reverse("admin:metrics_app_apikey_changelist"): [
        "can_ingest__exact", "can_read__exact", "revoked_at__isnull", "q", "business__id__exact",
    ],
    reverse("admin:metrics_app_modelprice_changelist"): ["q", "valid_from__gte", "source_as_of__lt", "o"],
    reverse("admin:metrics_app_staffbusinessaccess_changelist"): ["business", "q", "user__id__exact"],
    reverse("admin:metrics_app_experiment_changelist"): ["business", "dimension__exact", "ended_at__isempty", "q", "o"],
    reverse("admin:metrics_app_experiment_compare"): [
        "experiment", "business", "dimension", "a", "b", "primary_metric", "period", "start", "end",
    ],
    reverse("admin:autocomplete"): ["app_label", "model_name", "field_name", "term", "page"],
}


@pytest.fixture
def console(superuser: Any, logged_in: Any, traffic: None) -> Client:
    return logged_in(superuser)


@pytest.mark.parametrize("page", sorted(CONSOLE_PAGES))
@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_console_filters_searches_and_exports_never_answer_500(console, page, data):
    query = data.draw(query_strings(CONSOLE_PAGES[page]))
    if page == reverse("admin:autocomplete"):
        query = {"app_label": "metrics_app", "model_name": "staffbusinessaccess", "field_name": "business", **query}
    assert_no_500(console.get(page, query))


@FUZZ
@given(object_id=values)
def test_console_object_pages_never_answer_500(console, object_id):
    quoted = quote(object_id, safe="")
    for name in ("admin:metrics_app_business_changelist", "admin:metrics_app_conversation_changelist",
                 "admin:metrics_app_experiment_changelist"):
        assert_no_500(console.get(f"{reverse(name)}{quoted}/change/"))


ACTIONS = {
    reverse("admin:metrics_app_business_changelist"): ["delete_selected"],
    reverse("admin:metrics_app_conversation_changelist"): ["mark_booked"],
    reverse("admin:metrics_app_aimetric_changelist"): ["export_selected_csv"],
    reverse("admin:metrics_app_apikey_changelist"): ["revoke_selected"],
    reverse("admin:metrics_app_experiment_changelist"): ["stop_selected"],
}


@FUZZ
@given(page=st.sampled_from(sorted(ACTIONS)), data=st.data())
def test_console_actions_never_answer_500(console, page, data):
    form = {
        "action": data.draw(st.sampled_from(ACTIONS[page]) | values),
        "_selected_action": data.draw(st.lists(st.sampled_from(["1", "2", "acme-dental"]) | values, max_size=3)),
        "index": data.draw(st.sampled_from(["0", "1"]) | values),
    }
    assert_no_500(console.post(page, form))
