"""/metrics renders the ai_* and gen_ai_* series from the folded totals: raw-row figures, bounded labels, buckets."""

from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from metrics_app.models import AIMetric, Business, MetricTotals
from metrics_app.monitoring import prometheus
from tests.helpers import fold_all, post_json
from tests.monitoring.helpers import BUSINESSES, samples, store_varied, total

pytestmark = pytest.mark.django_db

# The brief's latency buckets, written out here rather than taken from the code under test.
LATENCY_BOUNDS_MS = [100, 250, 500, 1000, 2000, 4000, 8000, 15000, 30000, 60000]


def scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200, response.content
    return response.content.decode()


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(labels.items())): value for labels, value in samples(text).get(name, [])}


def test_metrics_renders_the_totals_with_unlisted_values_summed_under_other(api, settings, store_event, businesses):
    settings.MLOPS_PROMETHEUS_MAX_BUSINESSES = 2
    settings.MLOPS_PROMETHEUS_INTENTS = ["general", "pricing"]
    settings.MLOPS_PROMETHEUS_RESPONSE_TYPES = ["text", "error"]
    settings.MLOPS_PROMETHEUS_MODELS = ["gpt-4o-mini"]
    store_varied(store_event, range(90))
    fold_all()
    text = scrape(api)

    def label(value: str | None, listed: list[str]) -> str:
        if not value:
            return "unknown"
        return value.lower() if value.lower() in listed else "other"

    def business(value: str) -> str:
        return value if value in BUSINESSES[:2] else "other"

    requests: Counter = Counter()
    tokens: Counter = Counter()
    cost: defaultdict = defaultdict(Decimal)
    booked: Counter = Counter()
    for row in AIMetric.objects.values():
        b = business(row["business_id"])
        requests[(("business_id", b), ("intent", label(row["intent_detected"], ["general", "pricing"])),
                  ("response_type", label(row["response_type"], ["text", "error"])))] += 1
        tokens[(("business_id", b), ("model", label(row["model_name"], ["gpt-4o-mini"])))] += row["tokens_used"]
        cost[(("business_id", b),)] += row["api_cost_usd"] or 0
        booked[(("business_id", b),)] += row["appointment_booked"]

    assert series(text, "ai_requests_total") == requests
    assert series(text, "ai_tokens_used_total") == tokens
    assert series(text, "ai_api_cost_usd_total") == pytest.approx({k: float(v) for k, v in cost.items()})
    assert series(text, "appointments_booked_total") == booked
    assert "salon-three" not in text
    assert "what is the meaning of life" not in text and "my-finetune-7" not in text
    assert total(text, "mlops_ingest_events_total", outcome="created") == AIMetric.objects.count() == 90
    # One family, one HELP line: the created series joins the per-process duplicate, rejected and skipped ones.
    assert text.count("# HELP mlops_ingest_events_total") == 1
    assert {labels["outcome"] for labels, _ in samples(text)["mlops_ingest_events_total"]} == {
        "created", "duplicate", "rejected", "skipped"}


def test_histogram_buckets_are_cumulative_and_count_the_events_with_a_latency(api, businesses, store_event):
    store_varied(store_event, range(66))
    now = timezone.now()
    # Rows adopted from the seed's table may have no latency and no tokens.
    for _ in range(4):
        AIMetric.objects.create(business_id="dental-one", timestamp=now, response_time_ms=None, tokens_used=None)
    fold_all()
    text = scrape(api)

    buckets: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)
    for labels, value in samples(text)["ai_response_time_seconds_bucket"]:
        buckets[labels["business_id"]].append((float(labels["le"]), value))
    assert set(buckets) == set(BUSINESSES)
    for business_id, found in buckets.items():
        rows = AIMetric.objects.filter(business_id=business_id)
        timed = rows.filter(response_time_ms__isnull=False)
        found.sort()
        assert [le for le, _ in found] == [b / 1000 for b in LATENCY_BOUNDS_MS] + [float("inf")]
        assert [value for _, value in found] == [timed.filter(response_time_ms__lte=b).count()
                                                  for b in LATENCY_BOUNDS_MS] + [timed.count()]
        assert total(text, "ai_response_time_seconds_count", business_id=business_id) == timed.count()
        assert total(text, "ai_requests_total", business_id=business_id) == rows.count()
        expected_sum = Decimal(timed.aggregate(s=Sum("response_time_ms"))["s"]) / 1000
        assert total(text, "ai_response_time_seconds_sum", business_id=business_id) == float(expected_sum)
    assert total(text, "ai_requests_total", business_id="dental-one") == total(
        text, "ai_response_time_seconds_count", business_id="dental-one") + 4

    # Every histogram family: running totals never fall, and the last bucket is the count.
    for family in ("ai_response_time_seconds", "gen_ai_client_operation_duration_seconds", "gen_ai_client_token_usage"):
        by_series: defaultdict[tuple, list[tuple[float, float]]] = defaultdict(list)
        for labels, value in samples(text)[f"{family}_bucket"]:
            rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
            by_series[rest].append((float(labels["le"]), value))
        for rest, found in by_series.items():
            values = [value for _, value in sorted(found)]
            assert values == sorted(values), (family, rest)
            assert values[-1] == total(text, f"{family}_count", **dict(rest)), (family, rest)
    timed_all = AIMetric.objects.filter(response_time_ms__isnull=False).count()
    assert total(text, "gen_ai_client_operation_duration_seconds_count") == timed_all == 66


def test_stored_events_reach_metrics_when_folded_not_before(api):
    biz = "not-folded-yet"
    before = scrape(api)
    response = post_json(api, "/track/batch", {"events": [
        {"business_id": biz, "response_time_ms": 800, "tokens_used": 90} for _ in range(3)]})
    assert response.status_code == 200
    waiting = scrape(api)
    assert total(waiting, "ai_requests_total", business_id=biz) == 0
    assert total(waiting, "mlops_ingest_events_total", outcome="created") == total(
        before, "mlops_ingest_events_total", outcome="created")

    fold_all()
    folded = scrape(api)
    assert total(folded, "ai_requests_total", business_id=biz) == 3
    assert total(folded, "mlops_ingest_events_total", outcome="created") == AIMetric.objects.count() == 3


# --- A database that fails at scrape time


def rename_table(old: str, new: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {connection.ops.quote_name(old)} RENAME TO {connection.ops.quote_name(new)}")


@pytest.mark.parametrize("table", [MetricTotals._meta.db_table, Business._meta.db_table])
def test_a_database_error_at_scrape_serves_the_rest_and_is_counted(api, businesses, store_event, table):
    store_event(business_id="dental-one", api_cost_usd=0.5)
    fold_all()
    healthy = scrape(api)
    assert total(healthy, "ai_requests_total", business_id="dental-one") == 1
    errors_before = total(healthy, "mlops_metrics_totals_read_errors_total")
    prometheus.labels.forget_businesses()  # as in a new worker, which reads the business list at its first scrape

    rename_table(table, f"{table}_away")
    try:
        response = api.get("/metrics")
    finally:
        rename_table(f"{table}_away", table)
    assert response.status_code == 200
    broken = response.content.decode()
    assert "ai_requests_total" not in broken and "gen_ai_client_token_usage" not in broken
    # Never relabelled as `other`: a business's series would seem to drop, which Prometheus reads as a reset.
    assert 'business_id="other"' not in broken
    assert total(broken, "mlops_metrics_totals_read_errors_total") == errors_before + 1
    assert total(broken, "django_http_requests_latency_seconds_by_view_method_count") >= 1
    assert {labels["outcome"] for labels, _ in samples(broken)["mlops_ingest_events_total"]} == {
        "duplicate", "rejected", "skipped"}

    assert total(scrape(api), "ai_requests_total", business_id="dental-one") == 1


def test_totals_stored_with_other_buckets_leave_the_series_out_until_a_rebuild(api, businesses, store_event):
    store_event(business_id="dental-one", response_time_ms=700)
    fold_all()
    errors_before = total(scrape(api), "mlops_metrics_totals_read_errors_total")
    # As the table would be after DURATION_BUCKETS gained a bound, before rebuild_analytics.
    row = MetricTotals.objects.get(business_id="dental-one")
    row.histograms["latency_ms"]["counts"].append(0)
    row.save()

    stale = scrape(api)
    assert "ai_requests_total" not in stale
    assert total(stale, "mlops_metrics_totals_read_errors_total") == errors_before + 1

    call_command("rebuild_analytics", "--quiet-progress", stdout=StringIO())  # what the logged error says to run
    assert total(scrape(api), "ai_response_time_seconds_bucket", business_id="dental-one", le="1.0") == 1
