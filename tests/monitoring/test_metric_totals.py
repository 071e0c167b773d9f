"""The totals that /metrics reports: equal to GROUP BY over the raw rows, whether folded at once, bit by bit or rebuilt."""

from __future__ import annotations

import itertools
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db.models import Count, Q, Sum, Value
from django.db.models.functions import Coalesce

from metrics_app.analytics.totals import EVENT_FIELDS, TotalsAccumulator, rebuild
from metrics_app.models import AIMetric, MetricTotals
from tests.monitoring.helpers import store_varied

pytestmark = pytest.mark.django_db

# The brief's buckets, written out here rather than taken from the code under test.
LATENCY_BOUNDS_MS = [100, 250, 500, 1000, 2000, 4000, 8000, 15000, 30000, 60000]
TOKEN_BOUNDS = [4**n for n in range(13)]


def stored_snapshot() -> dict[tuple[str, str, str, str], dict[str, Any]]:
    return {
        (row.business_id, row.model_name, row.intent, row.response_type): {
            "events": row.events, "failed": row.failed, "tokens": row.tokens, "client_cost": row.client_cost,
            "requested": row.requested, "booked": row.booked, "handoffs": row.handoffs,
            "histograms": row.histograms,
        }
        for row in MetricTotals.objects.all()
    }


def cumulative_counts(bounds: list[int], field: str, rows_filter: Q) -> dict[str, Any]:
    """Aggregates giving, in SQL, the events at most each bound, all of them, and their sum."""
    aggregates: dict[str, Any] = {
        f"le_{bound}": Count("id", filter=rows_filter & Q(**{f"{field}__lte": bound})) for bound in bounds
    }
    aggregates["all"] = Count("id", filter=rows_filter)
    aggregates["sum"] = Sum(field, filter=rows_filter)
    return aggregates


TOKEN_HISTOGRAMS = {
    "tokens_input": ("input_tokens", Q(input_tokens__isnull=False)),
    "tokens_output": ("output_tokens", Q(output_tokens__isnull=False)),
    "tokens_total": ("tokens_used", Q(input_tokens__isnull=True, output_tokens__isnull=True,
                                      tokens_used__isnull=False)),
}


def expected_from_raw_rows() -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """What a careful analyst computes from ai_metrics with GROUP BY, one histogram per pass."""
    keys = {
        "m": Coalesce("model_name", Value("")), "i": Coalesce("intent_detected", Value("")),
        "r": Coalesce("response_type", Value("")),
    }
    grouped = AIMetric.objects.annotate(**keys).values("business_id", "m", "i", "r").order_by()
    found: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for row in grouped.annotate(
        events=Count("id"), failed=Count("id", filter=Q(success_rate=0) | Q(response_type="error")),
        tokens=Coalesce(Sum("tokens_used"), 0), client_cost=Sum("api_cost_usd"),
        requested=Count("id", filter=Q(appointment_requested=True)),
        booked=Count("id", filter=Q(appointment_booked=True)),
        handoffs=Count("id", filter=Q(human_handoff_requested=True)),
    ):
        key = (row["business_id"], row["m"], row["i"], row["r"])
        found[key] = {name: row[name] for name in ("events", "failed", "tokens", "requested", "booked", "handoffs")}
        found[key]["client_cost"] = row["client_cost"] or Decimal(0)
        found[key]["histograms"] = {}
    passes = {"latency_ms": ("response_time_ms", Q(response_time_ms__isnull=False), LATENCY_BOUNDS_MS)}
    passes.update({name: (field, where, TOKEN_BOUNDS) for name, (field, where) in TOKEN_HISTOGRAMS.items()})
    for name, (field, where, bounds) in passes.items():
        for row in grouped.annotate(**cumulative_counts(bounds, field, where)):
            if row["all"]:
                key = (row["business_id"], row["m"], row["i"], row["r"])
                found[key]["histograms"][name] = {
                    "cumulative": [row[f"le_{b}"] for b in bounds] + [row["all"]], "sum": row["sum"],
                }
    return found


def as_cumulative(histograms: dict[str, Any]) -> dict[str, Any]:
    """The stored layout (a count per bucket) as running totals, to compare with what SQL counted."""
    return {
        name: {"cumulative": list(itertools.accumulate(data["counts"])), "sum": data["sum"]}
        for name, data in histograms.items()
    }


def test_folded_totals_equal_the_counts_sums_and_buckets_of_the_raw_rows(businesses, store_event):
    store_varied(store_event, range(120))  # stored and folded, as the folder folds them

    stored = stored_snapshot()
    expected = expected_from_raw_rows()
    assert set(stored) == set(expected)
    assert sum(row["events"] for row in stored.values()) == AIMetric.objects.count() == 120
    for key, want in expected.items():
        got = dict(stored[key], histograms=as_cumulative(stored[key]["histograms"]))
        assert got == want, key
    # Missing values are stored as empty strings, not NULL or "None".
    assert any(key[1] == "" and key[2] == "" and key[3] == "" for key in stored)


def test_adding_in_several_folds_equals_one_fold_and_later_flags_count_once(businesses, store_event):
    store_varied(store_event, range(90))  # each event folded as it is stored: 90 folds

    # Outcomes recorded after the fact turn flags on for events already folded.
    later = TotalsAccumulator()
    for row in AIMetric.objects.filter(appointment_booked=False).order_by("id")[:5].values("id", *EVENT_FIELDS):
        AIMetric.objects.filter(id=row["id"]).update(appointment_booked=True)
        later.add_flags(row, ["appointment_booked"])
    later.write()

    incremental = stored_snapshot()
    assert rebuild() == len(incremental)
    assert stored_snapshot() == incremental
    assert sum(row["booked"] for row in incremental.values()) == AIMetric.objects.filter(
        appointment_booked=True).count()


def test_a_rebuild_read_a_few_events_a_query_equals_one_read_of_all(businesses, store_event):
    store_varied(store_event, range(40))
    folded = stored_snapshot()

    rebuild(chunk=7)  # 40 events: five full pages and a short one

    assert stored_snapshot() == folded


def test_a_rebuild_through_an_id_counts_only_the_events_up_to_it(businesses, store_event):
    store_varied(store_event, range(30))
    through = AIMetric.objects.order_by("-id").values_list("id", flat=True).first()
    folded = stored_snapshot()
    store_varied(store_event, range(30, 45))

    rebuild(through=through)
    assert stored_snapshot() == folded


def test_a_flag_that_is_not_an_outcome_is_refused():
    with pytest.raises(ValueError, match="not an outcome flag"):
        TotalsAccumulator().add_flags({"business_id": "b"}, ["appointment_cancelled"])


def test_rebuild_analytics_rebuilds_the_totals_and_says_how_many_rows(businesses, store_event):
    store_varied(store_event, range(20))
    out = StringIO()
    call_command("rebuild_analytics", "--quiet-progress", stdout=out)
    rows = MetricTotals.objects.count()
    assert rows > 0
    assert f"{rows} /metrics totals rows from 20 events" in out.getvalue()
    assert sum(MetricTotals.objects.values_list("events", flat=True)) == 20
