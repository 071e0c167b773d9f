"""/metrics in one process: the seed's metrics and ours move only for stored events, once folded, with bounded labels."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from metrics_app.conversations import services as conversations
from metrics_app.models import AIMetric, Business, Conversation
from metrics_app.monitoring import prometheus
from tests.helpers import fold_all, post_json
from tests.monitoring.helpers import label_values, samples, total

pytestmark = pytest.mark.django_db


@pytest.fixture
def scrape(api):
    """GET /metrics once the stored events are folded, as the background folder does within a second."""

    def get() -> str:
        fold_all()
        response = api.get("/metrics")
        assert response.status_code == 200, response.content
        assert response["Content-Type"].startswith("text/plain")
        return response.content.decode()

    return get


@pytest.fixture
def send(api, django_capture_on_commit_callbacks):
    """POST a JSON body and run the after-commit listeners, as a real request would."""

    def post(path: str, payload, **headers):
        with django_capture_on_commit_callbacks(execute=True):
            return post_json(api, path, payload, **headers)

    return post


def unique_business() -> str:
    return f"biz-{uuid.uuid4().hex[:10]}"


def event(business_id: str, **fields) -> dict:
    return {"business_id": business_id, "response_time_ms": 1200, "tokens_used": 100, **fields}


def test_a_stored_event_moves_the_seeds_six_metrics_by_what_its_row_holds(scrape, send):
    biz = unique_business()
    sent = [
        event(biz, intent_detected="general", response_type="text", api_cost_usd=0.002, model_name="gpt-4o-mini"),
        event(biz, intent_detected="pricing", response_type="appointment_booking", response_time_ms=3500,
              tokens_used=250, api_cost_usd=0.0125, model_name="gpt-4o-mini", appointment_requested=True),
        event(biz, intent_detected="general", response_type="human_handoff", response_time_ms=50,
              tokens_used=40, human_handoff_requested=True, model_name="gemini-1.5-flash"),
    ]
    for payload in sent:
        assert send("/track", payload).status_code == 201

    text = scrape()
    rows = AIMetric.objects.filter(business_id=biz)
    assert total(text, "ai_requests_total", business_id=biz) == rows.count() == 3
    assert total(text, "ai_requests_total", business_id=biz, intent="general", response_type="text") == 1
    assert total(text, "ai_requests_total", business_id=biz, intent="pricing") == 1
    assert total(text, "ai_tokens_used_total", business_id=biz) == rows.aggregate(t=Sum("tokens_used"))["t"]
    assert total(text, "ai_tokens_used_total", business_id=biz, model="gpt-4o-mini") == 350
    assert total(text, "ai_api_cost_usd_total", business_id=biz) == pytest.approx(
        float(rows.aggregate(c=Sum("api_cost_usd"))["c"])
    )
    assert total(text, "appointments_requested_total", business_id=biz) == rows.filter(
        appointment_requested=True).count() == 1
    assert total(text, "human_handoffs_total", business_id=biz) == 1
    assert total(text, "ai_response_time_seconds_count", business_id=biz) == 3
    assert total(text, "ai_response_time_seconds_sum", business_id=biz) == pytest.approx(
        sum(r.response_time_ms for r in rows) / 1000
    )
    # 0.05 s and 1.2 s are under 2 s; 3.5 s is not.
    assert total(text, "ai_response_time_seconds_bucket", business_id=biz, le="2.0") == 2
    assert total(text, "ai_response_time_seconds_bucket", business_id=biz, le="+Inf") == 3


def test_a_duplicate_moves_no_ai_counter_and_is_counted_as_a_duplicate(scrape, send):
    biz = unique_business()
    payload = event(biz, event_id=str(uuid.uuid4()), api_cost_usd=0.5)
    assert send("/track", payload).status_code == 201
    before = scrape()
    assert send("/track", payload).status_code == 200
    after = scrape()

    assert total(after, "ai_requests_total", business_id=biz) == 1
    assert total(after, "ai_api_cost_usd_total", business_id=biz) == 0.5
    assert total(after, "ai_tokens_used_total", business_id=biz) == 100
    assert total(after, "mlops_ingest_events_total", outcome="duplicate") == (
        total(before, "mlops_ingest_events_total", outcome="duplicate") + 1
    )
    assert total(after, "mlops_ingest_events_total", outcome="created") == total(
        before, "mlops_ingest_events_total", outcome="created"
    )


def test_a_rejected_event_moves_nothing_but_the_rejected_count(scrape, send):
    biz = unique_business()
    before = scrape()
    response = send("/track", {"business_id": biz, "response_time_ms": -5, "tokens_used": 10})
    assert response.status_code == 400
    after = scrape()

    assert biz not in label_values(after, "ai_requests_total", "business_id")
    assert total(after, "ai_requests_total") == total(before, "ai_requests_total")
    assert total(after, "mlops_ingest_events_total", outcome="rejected") == (
        total(before, "mlops_ingest_events_total", outcome="rejected") + 1
    )


def test_a_batch_counts_each_stored_event_once(scrape, send):
    biz = unique_business()
    repeated = str(uuid.uuid4())
    send("/track", event(biz, event_id=repeated))
    before = scrape()
    batch = [
        event(biz, event_id=repeated),  # stored before: duplicate
        event(biz, tokens_used=7),
        event(biz, tokens_used=11, event_id=(inner := str(uuid.uuid4()))),
        event(biz, tokens_used=13, event_id=inner),  # repeated inside the batch: duplicate
        {"business_id": biz, "response_time_ms": "slow", "tokens_used": 1},  # rejected
    ]
    response = send("/track/batch", {"events": batch})
    assert response.status_code == 207
    after = scrape()

    stored = AIMetric.objects.filter(business_id=biz)
    assert total(after, "ai_requests_total", business_id=biz) == stored.count() == 3
    assert total(after, "ai_tokens_used_total", business_id=biz) == stored.aggregate(t=Sum("tokens_used"))["t"]

    def moved(outcome: str) -> float:
        return total(after, "mlops_ingest_events_total", outcome=outcome) - total(
            before, "mlops_ingest_events_total", outcome=outcome
        )

    assert (moved("created"), moved("duplicate"), moved("rejected")) == (2, 2, 1)


def test_failed_replies_are_those_with_success_rate_zero_or_response_type_error(scrape, send):
    biz = unique_business()
    for payload in (
        event(biz, success_rate=0),
        event(biz, response_type="error", intent_detected="error"),
        event(biz, success_rate=0.5),
        event(biz),
    ):
        send("/track", payload)
    text = scrape()
    failed = [row for row in AIMetric.objects.filter(business_id=biz) if row.failed]
    assert total(text, "ai_failed_replies_total", business_id=biz) == len(failed) == 2


def test_a_booking_counts_when_sent_with_the_event_and_when_recorded_later(scrape, send):
    biz = unique_business()
    send("/track", event(biz, appointment_requested=True, appointment_booked=True))
    send("/track", event(biz, appointment_requested=True, model_name="gpt-4o", conversation_id="conv-later"))
    assert total(scrape(), "appointments_booked_total", business_id=biz) == 1

    # An outcome recorded after the fact, as POST /api/conversations/outcome records it.
    conversation = Conversation.objects.get(business_id=biz, conversation_id="conv-later")
    conversations.record_outcome(conversation, flags={"appointment_booked": True})
    text = scrape()
    assert total(text, "appointments_booked_total", business_id=biz) == 2
    assert total(text, "appointments_requested_total", business_id=biz) == 2


def test_genai_histograms_use_the_briefs_buckets_and_split_tokens_by_type(scrape, send):
    biz = unique_business()
    send("/track", event(biz, model_name="claude-3-5-haiku", response_time_ms=700, tokens_used=300,
                         input_tokens=200, output_tokens=100))
    send("/track", event(biz, model_name="claude-3-5-haiku", response_time_ms=61_000, tokens_used=5000))
    text = scrape()
    model = {"gen_ai_request_model": "claude-3-5-haiku", "gen_ai_operation_name": "chat"}

    buckets = {
        labels["le"] for labels, _ in samples(text)["gen_ai_client_operation_duration_seconds_bucket"]
    }
    assert buckets == {"0.1", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0", "15.0", "30.0", "60.0", "+Inf"}
    token_buckets = {float(labels["le"]) for labels, _ in samples(text)["gen_ai_client_token_usage_bucket"]}
    assert token_buckets == {4.0**n for n in range(13)} | {float("inf")}

    assert total(text, "gen_ai_client_operation_duration_seconds_count", **model) == 2
    assert total(text, "gen_ai_client_operation_duration_seconds_bucket", le="1.0", **model) == 1
    assert total(text, "gen_ai_client_operation_duration_seconds_bucket", le="60.0", **model) == 1
    assert total(text, "gen_ai_client_token_usage_sum", gen_ai_token_type="input", **model) == 200
    assert total(text, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **model) == 100
    # Without the split, the total is observed once, as type "total".
    assert total(text, "gen_ai_client_token_usage_sum", gen_ai_token_type="total", **model) == 5000
    assert total(text, "gen_ai_client_token_usage_bucket", gen_ai_token_type="total", le="4096.0", **model) == 0
    assert total(text, "gen_ai_client_token_usage_bucket", gen_ai_token_type="total", le="16384.0", **model) == 1


def test_free_text_intents_response_types_and_models_are_reported_as_other(scrape, send):
    biz = unique_business()
    send("/track", event(biz, intent_detected="Pricing", response_type="TEXT", model_name="GPT-4o-mini"))
    send("/track", event(biz, intent_detected="what is the meaning of life", response_type="poem",
                         model_name="my-own-finetune-7"))
    send("/track", event(biz))
    text = scrape()

    assert label_values(text, "ai_requests_total", "intent") >= {"pricing", "other", "unknown"}
    assert total(text, "ai_requests_total", business_id=biz, intent="pricing", response_type="text") == 1
    assert total(text, "ai_requests_total", business_id=biz, intent="other", response_type="other") == 1
    assert total(text, "ai_requests_total", business_id=biz, intent="unknown", response_type="unknown") == 1
    assert total(text, "ai_tokens_used_total", business_id=biz, model="gpt-4o-mini") == 100
    assert total(text, "ai_tokens_used_total", business_id=biz, model="other") == 100
    assert total(text, "ai_tokens_used_total", business_id=biz, model="unknown") == 100
    assert "what is the meaning of life" not in text
    assert "my-own-finetune-7" not in text


def test_only_the_first_registered_businesses_within_the_cap_keep_their_label(scrape, send, settings):
    settings.MLOPS_PROMETHEUS_MAX_BUSINESSES = 3
    start = timezone.now() - timedelta(days=1)
    ids = [unique_business() for _ in range(5)]
    for offset, biz in enumerate(ids):
        Business.objects.create(id=biz, created_at=start + timedelta(minutes=offset))
    for biz in reversed(ids):
        send("/track", event(biz))
    text = scrape()

    assert {biz for biz in ids if biz in text} == set(ids[:3])
    for biz in ids[:3]:
        assert total(text, "ai_requests_total", business_id=biz) == 1
    assert total(text, "ai_requests_total", business_id="other") >= 2
    assert total(text, "ai_requests_total") >= AIMetric.objects.count() == 5


def test_metrics_needs_the_bearer_token_when_one_is_set(api, settings):
    settings.MLOPS_METRICS_TOKEN = "s3cret-token-for-prometheus"
    missing = api.get("/metrics")
    wrong = api.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    basic = api.get("/metrics", headers={"Authorization": "Basic czNjcmV0LXRva2Vu"})
    right = api.get("/metrics", headers={"Authorization": "Bearer s3cret-token-for-prometheus"})

    for response in (missing, wrong, basic):
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
        body = response.json()
        assert body["error"] and "authorization" in body["errors"]
    assert right.status_code == 200
    assert b"# HELP ai_requests_total" in right.content


def test_metrics_is_open_without_a_token_and_refuses_writes(api, settings):
    settings.MLOPS_METRICS_TOKEN = ""
    assert api.get("/metrics").status_code == 200
    response = api.post("/metrics", data="{}", content_type="application/json")
    assert response.status_code == 405
    assert response.json()["errors"]["method"]


def test_django_request_and_database_metrics_are_served_too(api, scrape, send):
    send("/track", event(unique_business()))
    text = scrape()
    assert total(text, "django_http_requests_latency_seconds_by_view_method_count", view="track", method="POST") >= 1
    assert total(text, "django_http_responses_total_by_status_view_method_total", status="201", view="track") >= 1
    assert total(text, "django_db_execute_total") >= 1
    assert total(text, "django_db_new_connections_total") >= 1


def test_invented_http_methods_share_one_label(api, scrape):
    for n in range(50):
        api.generic(f"FLOOD{n}", "/track")
    text = scrape()
    methods = label_values(text, "django_http_requests_latency_seconds_by_view_method_count", "method")
    assert not any(method.startswith("FLOOD") for method in methods)
    assert total(text, "django_http_requests_latency_seconds_by_view_method_count",
                 view="track", method="<invalid method>") >= 50


def test_production_without_a_metrics_token_is_warned_about(settings):
    from metrics_app.checks import check_metrics_token

    settings.IS_PRODUCTION = True
    settings.MLOPS_METRICS_TOKEN = ""
    assert [message.id for message in check_metrics_token(None)] == ["metrics_app.W001"]
    settings.MLOPS_METRICS_TOKEN = "a-long-enough-random-token"
    assert check_metrics_token(None) == []


def test_cost_counter_adds_decimal_costs_without_drift(scrape, send):
    biz = unique_business()
    for _ in range(10):
        send("/track", event(biz, api_cost_usd=0.1))
    text = scrape()
    expected = AIMetric.objects.filter(business_id=biz).aggregate(c=Sum("api_cost_usd"))["c"]
    assert expected == Decimal("1.000000")
    assert total(text, "ai_api_cost_usd_total", business_id=biz) == pytest.approx(1.0, abs=1e-9)


def test_a_batch_of_new_businesses_costs_one_query_for_their_labels(settings, django_assert_num_queries):
    settings.MLOPS_PROMETHEUS_MAX_BUSINESSES = 100
    ids = [f"batch-biz-{n:03d}" for n in range(300)]
    start = timezone.now() - timedelta(hours=1)
    Business.objects.bulk_create(Business(id=b, created_at=start + timedelta(seconds=n)) for n, b in enumerate(ids))
    with django_assert_num_queries(1):
        mapping = prometheus.labels.businesses(ids)
    assert [mapping[b] for b in ids] == ids[:100] + ["other"] * 200
    # The cap is full: more new ids cost no query at all.
    with django_assert_num_queries(0):
        mapping = prometheus.labels.businesses(["never-registered", None])
    assert mapping == {"never-registered": "other", None: "unknown"}


def test_model_operations_are_counted_including_events_written_by_the_ingest(scrape, send):
    before = scrape()
    biz = Business.objects.create(id=unique_business())
    biz.name = "Renamed"
    biz.save()
    for _ in range(3):
        send("/track", event(biz.id))
    Business.objects.create(id=unique_business()).delete()
    after = scrape()

    def moved(sample: str, model: str) -> float:
        return total(after, sample, model=model) - total(before, sample, model=model)

    assert moved("django_model_inserts_total", "business") == 2
    assert moved("django_model_updates_total", "business") == 1
    assert moved("django_model_deletes_total", "business") == 1
    assert moved("django_model_inserts_total", "aimetric") == AIMetric.objects.filter(business_id=biz.id).count() == 3
