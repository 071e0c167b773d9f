"""The pre-aggregated path: exact with late, out-of-order and retried events, odd time zones, outcomes and repricing."""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command

from metrics_app.analytics import sketches
from metrics_app.models import ModelPrice
from tests.analytics.helpers import (
    NOW,
    expected_conversations,
    expected_event_figures,
    quantile,
    rollup_tables,
    rows,
    select,
    store,
)
from tests.helpers import fold_all


@pytest.fixture
def agency(make_key) -> dict[str, str]:
    _, raw = make_key(None, can_ingest=False, can_read=True)
    return {"Authorization": f"Bearer {raw}"}


@pytest.mark.parametrize("spread", [(1, 50), (100, 3000), (1, 3_600_000)])
def test_the_latency_sketch_is_within_one_percent_of_the_exact_percentile(spread):
    rng = random.Random(spread[1])
    for size in (1, 2, 3, 10, 999):
        values = sorted(int(rng.lognormvariate(0, 2) * spread[0]) % spread[1] + 1 for _ in range(size))
        bins: dict[int, int] = {}
        for value in values:
            index = sketches.latency_bin(value)
            bins[index] = bins.get(index, 0) + 1
        for fraction in (0.5, 0.95, 0.99):
            exact = quantile(values, fraction)
            assert sketches.sketch_percentile(bins, fraction) == pytest.approx(exact, rel=0.01)


def test_rollups_kept_by_the_folder_equal_a_rebuild_from_the_raw_rows(analytics_data):
    fold_all()
    kept = rollup_tables()
    assert kept[0] and kept[1] and kept[2]
    call_command("rebuild_analytics", "--quiet-progress", stdout=StringIO())
    assert rollup_tables() == kept


def test_a_period_with_partial_quarter_hours_at_both_ends_is_exact(api, agency, analytics_data):
    start = NOW - timedelta(days=6, minutes=7, seconds=13)
    end = NOW - timedelta(days=1, minutes=52, microseconds=5)
    response = api.get("/api/analytics/summary", {"start": start.isoformat(), "end": end.isoformat()},
                       headers=agency)
    summary = response.json()["summary"]
    all_rows = rows()
    expected = expected_event_figures(select(all_rows, start, end))
    for name in ("events", "errors", "tokens", "unpriced_events", "appointments_booked"):
        assert summary[name] == expected[name], name
    assert summary["cost_usd"] == pytest.approx(expected["cost_usd"], rel=1e-9)
    assert summary["latency_p95_ms"] == pytest.approx(expected["latency_p95_ms"], rel=0.01)
    assert summary["conversations"] == len(expected_conversations(all_rows, start, end))


@pytest.mark.parametrize("folded_between", [False, True], ids=["unfolded", "folded-between"])
def test_a_late_first_turn_moves_the_conversation_to_its_earlier_local_hour(api, agency, db, folded_between):
    base = NOW - timedelta(hours=5)

    def turn(n, minutes, **extra):
        return {"event_id": f"00000000-0000-4000-9000-{n:012d}", "business_id": "kathmandu-salon",
                "conversation_id": "late", "response_time_ms": 900, "tokens_used": 50,
                "timestamp": (base + timedelta(minutes=minutes)).isoformat(), **extra}

    store([turn(2, 70, appointment_booked=True), turn(3, 75)])
    if folded_between:
        fold_all()
    store([turn(1, -50, appointment_requested=True), turn(2, 70)])  # the real first turn, an hour earlier, and a retry
    params = {"start": (NOW - timedelta(hours=8)).isoformat(), "end": NOW.isoformat(), "bucket": "hour",
              "tz": "Asia/Kathmandu"}
    series = api.get("/api/analytics/timeseries", params, headers=agency).json()["series"]
    started = {p["start"]: (p["conversations"], p["conversations_with_request"], p["conversations_booked"])
               for p in series if p["conversations"]}
    first = (base - timedelta(minutes=50)).astimezone(ZoneInfo("Asia/Kathmandu"))
    assert started == {first.replace(minute=0, second=0, microsecond=0).isoformat(): (1, 1, 1)}
    assert sum(p["events"] for p in series) == 3


def test_repricing_moves_the_rolled_up_cost(api, agency, analytics_data):
    price = ModelPrice.objects.get(model_pattern="gpt-4o-mini*")
    price.input_usd_per_mtok = Decimal("7.5")
    price.save()
    call_command("reprice_events", "--model", "gpt-4o-mini*", "--quiet-progress", stdout=StringIO())
    params = {"start": (NOW - timedelta(days=12)).isoformat(), "end": NOW.isoformat()}
    summary = api.get("/api/analytics/summary", params, headers=agency).json()["summary"]
    expected = expected_event_figures(select(rows(), NOW - timedelta(days=12), NOW))
    assert summary["cost_usd"] == pytest.approx(expected["cost_usd"], rel=1e-9)
    assert summary["estimated_cost_events"] == expected["estimated_cost_events"]


def test_daily_series_in_a_45_minute_zone_sums_quarter_hours_exactly(api, agency, analytics_data):
    params = {"start": (NOW - timedelta(days=12)).isoformat(), "end": NOW.isoformat(), "bucket": "day",
              "tz": "Australia/Eucla"}
    series = api.get("/api/analytics/timeseries", params, headers=agency).json()["series"]
    counts = Counter(r["timestamp"].astimezone(ZoneInfo("Australia/Eucla")).date().isoformat()
                     for r in select(rows(), NOW - timedelta(days=12), NOW))
    assert {p["start"][:10]: p["events"] for p in series if p["events"]} == dict(counts)


def test_an_hourly_series_with_partial_quarter_hours_is_exact_per_local_hour(api, agency, analytics_data):
    from collections import defaultdict

    from tests.analytics.helpers import local_hour

    tz = "Asia/Kathmandu"
    start = NOW - timedelta(days=4, minutes=4, seconds=1)
    end = NOW - timedelta(hours=7, minutes=38)
    params = {"start": start.isoformat(), "end": end.isoformat(), "bucket": "hour", "tz": tz}
    series = api.get("/api/analytics/timeseries", params, headers=agency).json()["series"]
    by_hour = defaultdict(list)
    for r in select(rows(), start, end):
        by_hour[local_hour(r["timestamp"], tz)].append(r)
    got = {datetime_from(p["start"]): p for p in series}
    assert sum(p["events"] for p in series) == sum(len(v) for v in by_hour.values())
    for hour, events in by_hour.items():
        expected = expected_event_figures(events)
        point = got[hour]
        assert (point["events"], point["errors"], point["tokens"]) == (
            expected["events"], expected["errors"], expected["tokens"]
        )
        assert point["cost_usd"] == pytest.approx(expected["cost_usd"], rel=1e-9)
        for name in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms"):
            assert point[name] == pytest.approx(expected[name], rel=0.01), (hour, name)


def datetime_from(text: str):
    from datetime import datetime

    return datetime.fromisoformat(text).replace(tzinfo=None)


def test_peak_hours_over_an_unaligned_period_match_the_raw_rows_in_a_45_minute_zone(api, agency, analytics_data):
    tz = "Australia/Eucla"
    start = NOW - timedelta(days=9, minutes=11)
    end = NOW - timedelta(minutes=3)
    params = {"start": start.isoformat(), "end": end.isoformat(), "tz": tz}
    cells = api.get("/api/analytics/peak-hours", params, headers=agency).json()["cells"]
    expected = Counter()
    booked = Counter()
    for r in select(rows(), start, end):
        local = r["timestamp"].astimezone(ZoneInfo(tz))
        expected[(local.isoweekday(), local.hour)] += 1
        booked[(local.isoweekday(), local.hour)] += r["appointment_booked"]
    assert {(c["weekday"], c["hour"]): c["events"] for c in cells if c["events"]} == dict(expected)
    assert {(c["weekday"], c["hour"]): c["appointments_booked"] for c in cells if c["appointments_booked"]} == +booked
    assert all(type(c["events"]) is int for c in cells)
