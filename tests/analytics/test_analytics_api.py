"""The analytics API: every figure equals the one computed from the raw rows, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import User

from metrics_app.models import StaffBusinessAccess
from tests.analytics.helpers import (
    NOW,
    expected_conversations,
    expected_event_figures,
    failed,
    local_hour,
    rows,
    select,
)
from tests.helpers import staff_user

START = NOW - timedelta(days=12)
PERIOD = {"start": START.isoformat(), "end": NOW.isoformat()}


@pytest.fixture
def agency(make_key) -> dict[str, str]:
    _, raw = make_key(None, can_ingest=False, can_read=True)
    return {"Authorization": f"Bearer {raw}"}


def get(api, path: str, headers: dict[str, str], **params: Any):
    return api.get(path, {k: v for k, v in params.items() if v is not None}, headers=headers)


def assert_figures(actual: dict[str, Any], expected: dict[str, Any], sketch: bool = False) -> None:
    """Counts equal, sums to float precision; percentiles exact, or within the sketch's stated 1%."""
    for name, value in expected.items():
        if value is None or isinstance(value, int) and not isinstance(value, bool):
            assert actual[name] == value, name
        elif sketch and name.startswith("latency_p"):
            assert actual[name] == pytest.approx(value, rel=0.01), name
        else:
            assert actual[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize("business_id", [None, "kolkata-clinic", "eucla-motel"])
def test_summary_matches_the_raw_rows(api, agency, analytics_data, business_id):
    response = get(api, "/api/analytics/summary", agency, business_id=business_id, **PERIOD)
    assert response.status_code == 200, response.content
    summary = response.json()["summary"]
    businesses = {business_id} if business_id else None
    all_rows = rows()
    chosen = select(all_rows, START, NOW, businesses)
    assert chosen, "the fixture must put events in the period"
    expected = expected_event_figures(chosen)
    assert expected["cache_read_input_tokens"] > 0 and expected["cache_savings_usd"] > 0, "the data must use a cache"
    assert_figures(summary, expected, sketch=True)
    conversations = expected_conversations(all_rows, START, NOW, businesses)
    booked = sum(c["booked"] for c in conversations)
    assert summary["conversations"] == len(conversations)
    assert summary["conversations_booked"] == booked
    assert summary["conversations_handed_off"] == sum(c["handoff"] for c in conversations)
    assert summary["booking_rate"] == pytest.approx(booked / len(conversations))
    assert summary["cost_per_conversation_usd"] == pytest.approx(expected["cost_usd"] / len(conversations))
    if booked:
        assert summary["cost_per_booked_appointment_usd"] == pytest.approx(expected["cost_usd"] / booked)


def test_summary_filters_by_model_intent_and_versions(api, agency, analytics_data):
    all_rows = rows()
    for params, fields in [
        ({"model": "gpt-4o-mini"}, {"model_name": "gpt-4o-mini"}),
        ({"intent": "booking", "prompt_version": "v2"}, {"intent_detected": "booking", "prompt_version": "v2"}),
        ({"kb_version": "kb-1"}, {"kb_version": "kb-1"}),
    ]:
        response = get(api, "/api/analytics/summary", agency, **PERIOD, **params)
        assert response.status_code == 200
        summary = response.json()["summary"]
        # One filter reads that value's rollups and sketch (percentiles within 1%); two read the raw rows.
        expected = expected_event_figures(select(all_rows, START, NOW, **fields))
        assert_figures(summary, expected, sketch=len(fields) == 1)
        assert summary["conversations"] == len(expected_conversations(all_rows, START, NOW, **fields))


def test_retried_and_out_of_order_events_count_once(api, agency, analytics_data):
    summary = get(api, "/api/analytics/summary", agency, **PERIOD).json()["summary"]
    assert summary["events"] == len(analytics_data)


def test_funnel_counts_a_conversation_at_a_step_if_any_of_its_events_does(api, agency, analytics_data):
    response = get(api, "/api/analytics/funnel", agency, business_id="london-dental", **PERIOD)
    assert response.status_code == 200
    funnel = response.json()["funnel"]
    conversations = expected_conversations(rows(), START, NOW, {"london-dental"})
    steps = {s["step"]: s["conversations"] for s in funnel["steps"]}
    assert steps == {
        "conversations": len(conversations),
        "appointment_requested": sum(c["requested"] for c in conversations),
        "appointment_booked": sum(c["booked"] for c in conversations),
    }
    assert funnel["human_handoffs"] == sum(c["handoff"] for c in conversations)


@pytest.mark.parametrize("tz", ["Asia/Kolkata", "Asia/Kathmandu", "Australia/Eucla", "America/St_Johns"])
def test_hourly_series_buckets_by_local_hours_of_odd_offset_zones(api, agency, analytics_data, tz):
    start, end = NOW - timedelta(days=3), NOW
    response = get(api, "/api/analytics/timeseries", agency, bucket="hour", tz=tz,
                   start=start.isoformat(), end=end.isoformat())
    assert response.status_code == 200, response.content
    series = response.json()["series"]
    chosen = select(rows(), start, end)
    by_hour: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in chosen:
        by_hour[local_hour(r["timestamp"], tz)].append(r)
    got = {}
    for point in series:
        moment = __import__("datetime").datetime.fromisoformat(point["start"])
        assert moment.utcoffset() == moment.astimezone(ZoneInfo(tz)).utcoffset()
        got[moment.replace(tzinfo=None)] = point
    assert sum(p["events"] for p in series) == len(chosen)
    # Counts are JSON integers (PostgreSQL sums bigints as numeric; 12.0 is not a count).
    assert all(type(p[name]) is int for p in series for name in ("events", "errors", "tokens", "conversations"))
    for hour, events in by_hour.items():
        assert_figures(got[hour], expected_event_figures(events), sketch=True)
    # Every hour of the period is there, empty ones with zero events.
    assert len(series) == len(set(got)) >= 72


def test_daily_series_uses_the_business_time_zone_by_default(api, agency, analytics_data):
    response = get(api, "/api/analytics/timeseries", agency, business_id="kathmandu-salon", bucket="day", **PERIOD)
    assert response.status_code == 200
    body = response.json()
    assert body["period"]["time_zone"] == "Asia/Kathmandu"
    all_rows = rows()
    counts = Counter(
        r["timestamp"].astimezone(ZoneInfo("Asia/Kathmandu")).date()
        for r in select(all_rows, START, NOW, {"kathmandu-salon"})
    )
    got = {__import__("datetime").date.fromisoformat(p["start"][:10]): p["events"] for p in body["series"]}
    assert {d: n for d, n in got.items() if n} == dict(counts)
    conv_days = Counter(
        c["first"].astimezone(ZoneInfo("Asia/Kathmandu")).date()
        for c in expected_conversations(all_rows, START, NOW, {"kathmandu-salon"})
    )
    got_conv = {__import__("datetime").date.fromisoformat(p["start"][:10]): p["conversations"] for p in body["series"]}
    assert {d: n for d, n in got_conv.items() if n} == dict(conv_days)


@pytest.mark.parametrize(
    "dimension,field",
    [("intent", "intent_detected"), ("model", "model_name"), ("response_type", "response_type"),
     ("business", "business_id"), ("prompt_version", "prompt_version"), ("kb_version", "kb_version")],
)
def test_breakdowns_match_the_raw_rows(api, agency, analytics_data, dimension, field):
    response = get(api, f"/api/analytics/breakdown/{dimension}", agency, limit=100, **PERIOD)
    assert response.status_code == 200, response.content
    table = {row["key"]: row for row in response.json()["rows"]}
    grouped: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in select(rows(), START, NOW):
        grouped[r[field]].append(r)
    assert set(table) == set(grouped)
    # Conversations count where they start, once under each value their events carry (as a filtered summary does).
    started: Counter = Counter()
    for conversation in conversations_of(rows()).values():
        if START <= conversation["first"] < NOW:
            started.update(conversation["values"][field])
    for key, events in grouped.items():
        assert_figures(table[key], expected_event_figures(events), sketch=True)
        assert table[key]["conversations"] == started[key], key


def conversations_of(all_rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Each conversation's first event time and the values its events carry, per column."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for r in all_rows:
        if not r["conversation_id"]:
            continue
        c = found.setdefault((r["business_id"], r["conversation_id"]), {"first": r["timestamp"], "values": defaultdict(set)})
        c["first"] = min(c["first"], r["timestamp"])
        for column, value in r.items():
            if isinstance(value, str) or value is None:
                c["values"][column].add(value)
    return found


def test_peak_hours_count_events_per_local_hour_of_week(api, agency, analytics_data):
    tz = "Asia/Kathmandu"
    response = get(api, "/api/analytics/peak-hours", agency, tz=tz, **PERIOD)
    assert response.status_code == 200
    cells = response.json()["cells"]
    assert len(cells) == 168
    expected = Counter()
    errors = Counter()
    for r in select(rows(), START, NOW):
        local = r["timestamp"].astimezone(ZoneInfo(tz))
        expected[(local.isoweekday(), local.hour)] += 1
        errors[(local.isoweekday(), local.hour)] += failed(r)
    assert {(c["weekday"], c["hour"]): c["events"] for c in cells if c["events"]} == dict(expected)
    assert {(c["weekday"], c["hour"]): c["errors"] for c in cells if c["errors"]} == +errors


# --- Access.


def test_analytics_need_a_key_or_a_session(api, analytics_data):
    response = api.get("/api/analytics/summary")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert set(response.json()) == {"error", "errors"}


def test_an_ingest_only_key_may_not_read(api, make_key, business):
    _, raw = make_key(business, can_ingest=True, can_read=False)
    response = api.get("/api/analytics/summary", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 403
    assert response.json()["error"]


def test_a_business_key_sees_only_its_own_business(api, make_key, analytics_data):
    from metrics_app.models import Business

    _, raw = make_key(Business.objects.get(pk="eucla-motel"), can_ingest=False, can_read=True)
    headers = {"Authorization": f"Bearer {raw}"}
    other = get(api, "/api/analytics/summary", headers, business_id="kolkata-clinic", **PERIOD)
    assert other.status_code == 403
    own = get(api, "/api/analytics/summary", headers, **PERIOD)
    assert own.status_code == 200
    assert own.json()["summary"]["events"] == len(select(rows(), START, NOW, {"eucla-motel"}))
    breakdown = get(api, "/api/analytics/breakdown/business", headers, **PERIOD).json()
    assert [row["key"] for row in breakdown["rows"]] == ["eucla-motel"]


def test_a_staff_user_limited_to_some_businesses_sees_only_those(api, analytics_data):
    from metrics_app.models import Business

    staff = User.objects.create_user("ops", password="pw-for-tests-only", is_staff=True)
    StaffBusinessAccess.objects.create(user=staff, business=Business.objects.get(pk="london-dental"))
    api.force_login(staff)
    summary = get(api, "/api/analytics/summary", {}, **PERIOD)
    assert summary.status_code == 200
    assert summary.json()["summary"]["events"] == len(select(rows(), START, NOW, {"london-dental"}))
    assert get(api, "/api/analytics/funnel", {}, business_id="kolkata-clinic", **PERIOD).status_code == 403


def test_an_unrestricted_staff_user_sees_every_business_and_a_non_staff_user_none(api, analytics_data):
    staff = staff_user("agency")
    api.force_login(staff)
    assert get(api, "/api/analytics/summary", {}, **PERIOD).json()["summary"]["events"] == len(
        select(rows(), START, NOW)
    )
    api.force_login(User.objects.create_user("customer", password="pw-for-tests-only"))
    assert get(api, "/api/analytics/summary", {}, **PERIOD).status_code == 403


# --- Bad queries.


@pytest.mark.parametrize(
    "params,field",
    [
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"start": "2026-03-10T00:00:00Z", "end": "2026-03-01T00:00:00Z"}, "start"),
        ({"start": "2020-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start"),
        ({"start": "yesterday"}, "start"),
        ({"end": "9999-12-31T23:59:59+14:00"}, "end"),
        ({"start": "0001-01-01T00:00:00", "end": "0001-01-02T00:00:00"}, "start"),
        ({"end": "0001-01-01T00:00:00Z"}, "end"),
        ({"bucket": "minute"}, "bucket"),
        ({"bucket": "hour", "start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "bucket"),
        ({"business_id": "x" * 300}, "business_id"),
    ],
)
def test_bad_queries_get_a_400_naming_the_field(api, agency, db, params, field):
    response = get(api, "/api/analytics/timeseries", agency, **params)
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_an_unknown_breakdown_dimension_is_a_404(api, agency, db):
    response = get(api, "/api/analytics/breakdown/colour", agency)
    assert response.status_code == 404
    assert response.json()["error"]


def test_a_series_without_percentiles_keeps_every_other_figure(api, agency, analytics_data):
    params = {**PERIOD, "bucket": "hour", "tz": "Asia/Kolkata"}
    full = get(api, "/api/analytics/timeseries", agency, **params).json()["series"]
    lean = get(api, "/api/analytics/timeseries", agency, percentiles="false", **params).json()["series"]
    assert len(full) == len(lean)
    assert any(p["latency_p95_ms"] is not None for p in full)
    for a, b in zip(full, lean, strict=True):
        assert b["latency_p50_ms"] is None and b["latency_p95_ms"] is None
        assert {k: v for k, v in a.items() if not k.startswith("latency_p")} == {
            k: v for k, v in b.items() if not k.startswith("latency_p")
        }
