"""Raw-event retention keeps every figure: the same answers before and after pruning, and after a rebuild.

The data are the analytics tests' ten days of events in four odd time zones.
Retention of 5 days at NOW (2026-03-20 12:00 UTC) removes every raw event
before 2026-03-15 00:00 UTC, about half of them. On PostgreSQL four of those
days get partitions of their own first (taking their rows over from the
default partition), so both ways of removing rows run: dropping a day
partition, and deleting in batches what lies outside one.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import connection

from metrics_app.analytics import rollups
from metrics_app.models import (
    AIMetric,
    Business,
    Conversation,
    ConversationRollup,
    EventKey,
    EventRollup,
    LatencySketch,
    MetricTotals,
    PrunedTotals,
    RetentionState,
)
from metrics_app.retention import partitions
from metrics_app.retention import services as retention
from tests.analytics.helpers import BUSINESSES, NOW, make_events, store
from tests.helpers import assert_error_shape, fold_all, on_postgres, post_json

pytestmark = pytest.mark.django_db

DAYS = 5
CUTOFF = datetime(2026, 3, 15, tzinfo=UTC)
OWN_PARTITION_DAYS = [datetime(2026, 3, day, tzinfo=UTC) for day in (11, 12, 13, 14)]

# Whole quarter hours, in UTC and local days: periods wholly pruned, straddling the cutoff, and wholly kept.
PERIODS = [
    ("2026-03-10T12:00:00Z", "2026-03-20T12:00:00Z"),
    ("2026-03-11T00:00:00Z", "2026-03-15T00:00:00Z"),
    ("2026-03-12T06:15:00Z", "2026-03-17T18:45:00Z"),
    ("2026-03-16T00:00:00Z", "2026-03-20T12:00:00Z"),
]


@pytest.fixture
def reader(make_key) -> dict[str, str]:
    _, raw = make_key(None, can_ingest=False, can_read=True)
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def stored(db) -> list[dict[str, Any]]:
    for business_id, tz in BUSINESSES.items():
        Business.objects.create(id=business_id, time_zone=tz)
    payloads = make_events(seed=11, conversations=90)
    store(payloads)
    fold_all()
    return payloads


@pytest.fixture
def retention_on(settings) -> None:
    settings.MLOPS_RAW_RETENTION_DAYS = DAYS


def differences(now: dict[str, Any], then: dict[str, Any]) -> list[str]:
    """The questions whose answers differ, and how: an empty list when all agree."""
    found = []
    for key, answer in then.items():
        if now.get(key) != answer:
            found.append(f"{key}: {_diff(now.get(key), answer)}")
    return found


def _diff(now: Any, then: Any, where: str = "") -> str:
    if isinstance(then, dict) and isinstance(now, dict):
        return "; ".join(_diff(now.get(k), v, f"{where}.{k}") for k, v in then.items() if now.get(k) != v)
    if isinstance(then, list) and isinstance(now, list) and len(now) == len(then):
        return "; ".join(_diff(a, b, f"{where}[{i}]") for i, (a, b) in enumerate(zip(now, then, strict=True)) if a != b)
    return f"{where} {now!r} != {then!r}"


def answers(api, headers) -> dict[str, Any]:
    """What the analytics API answers to a range of questions, per business and for all of them."""
    found = {}
    for start, end in PERIODS:
        for business in [None, *BUSINESSES]:
            scope = {"start": start, "end": end, **({"business_id": business} if business else {})}
            asked = [("summary", {}), ("funnel", {}), ("timeseries", {"interval": "day"}),
                     ("timeseries", {"interval": "hour"}), ("breakdown/intent", {}), ("breakdown/model", {}),
                     ("breakdown/prompt_version", {}), ("summary", {"intent": "booking"}),
                     ("funnel", {"prompt_version": "v1"}), ("timeseries", {"interval": "day", "model": "gpt-4o-mini"})]
            for path, extra in asked:
                response = api.get(f"/api/analytics/{path}", {**scope, **extra}, **_headers(headers))
                assert response.status_code == 200, response.content
                found[(path, start, end, business, tuple(extra.items()))] = response.json()
    return found


def _headers(headers: dict[str, str]) -> dict[str, str]:
    return {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}


def totals() -> dict[tuple[str, ...], tuple[Any, ...]]:
    """The /metrics totals, by label set."""
    return {row[:4]: row[4:] for row in MetricTotals.objects.values_list(
        "business_id", "model_name", "intent", "response_type", "events", "failed", "tokens", "client_cost",
        "requested", "booked", "handoffs", "histograms",
    )}


def conversations() -> dict[tuple[str, str], tuple[Any, ...]]:
    return {(c.business_id, c.conversation_id): (c.first_at, c.last_at, c.turns, c.appointment_booked)
            for c in Conversation.objects.all()}


def give_days_partitions_of_their_own() -> None:
    if on_postgres():
        for day in OWN_PARTITION_DAYS:
            partitions.create(day, day + timedelta(days=1))


def test_pruning_keeps_every_figure_and_a_rebuild_keeps_them_too(api, reader, stored, retention_on):
    give_days_partitions_of_their_own()
    before = answers(api, reader)
    totals_before, conversations_before = totals(), conversations()
    old = [row for row in stored if datetime.fromisoformat(row["timestamp"]) < CUTOFF]
    assert 0 < len(old) < len(stored)

    with time_machine.travel(NOW, tick=False):
        planned = retention.plan()
        done = retention.prune()

    assert planned.events == done.events == len(old)
    assert not AIMetric.objects.filter(timestamp__lt=CUTOFF).exists()
    assert AIMetric.objects.count() == len(stored) - len(old)
    assert EventKey.objects.count() == len(stored) - len(old)
    if on_postgres():
        own_day = sum(1 for row in old if datetime.fromisoformat(row["timestamp"]) >= OWN_PARTITION_DAYS[0])
        assert sorted(done.partitions) == [f"ai_metrics_p2026_03_{day:%d}" for day in OWN_PARTITION_DAYS]
        assert (done.partition_events, done.batched_events) == (own_day, len(old) - own_day)
        assert not {p.name for p in partitions.partitions()} & set(done.partitions)
    else:
        assert (done.partitions, done.batched_events) == ([], len(old))
    state = RetentionState.objects.get()
    assert (state.pruned_before, state.events_pruned) == (CUTOFF, len(old))
    assert sum(PrunedTotals.objects.values_list("events", flat=True)) == len(old)

    assert "\n".join(differences(answers(api, reader), before)) == ""
    assert totals() == totals_before
    assert conversations() == conversations_before

    out = StringIO()
    call_command("rebuild_analytics", "--quiet-progress", stdout=out)
    assert "Raw events before 2026-03-15 00:00 UTC were pruned" in out.getvalue()
    assert "\n".join(differences(answers(api, reader), before)) == ""
    assert totals() == totals_before
    assert conversations() == conversations_before

    out = StringIO()
    call_command("reprice_events", "--quiet-progress", stdout=out)
    assert "their costs in the rollups stay as they were priced" in out.getvalue()
    assert "\n".join(differences(answers(api, reader), before)) == ""


def test_the_rollups_of_a_pruned_period_are_never_rebuilt_from_nothing(api, reader, stored, retention_on):
    """A rebuild that ignored the horizon would empty the pruned days: this is what it must not do."""
    with time_machine.travel(NOW, tick=False):
        retention.prune()
    pruned_rows = EventRollup.objects.filter(bucket__lt=CUTOFF, business_id="*", dimension="").count()
    assert pruned_rows > 0
    call_command("rebuild_analytics", "--quiet-progress", stdout=StringIO())
    assert EventRollup.objects.filter(bucket__lt=CUTOFF, business_id="*", dimension="").count() == pruned_rows
    assert ConversationRollup.objects.filter(bucket__lt=CUTOFF).exists()
    assert LatencySketch.objects.filter(bucket__lt=CUTOFF).exists()


def test_retries_inside_the_window_are_stored_once_and_pruned_ones_are_refused(api, make_key, stored, retention_on):
    business = Business.objects.get(id="london-dental")
    _, raw = make_key(business)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    with time_machine.travel(NOW, tick=False):
        retention.prune()
        kept = [row for row in stored if datetime.fromisoformat(row["timestamp"]) >= CUTOFF
                and row["business_id"] == "london-dental"][:5]
        pruned = next(row for row in stored if datetime.fromisoformat(row["timestamp"]) < CUTOFF
                      and row["business_id"] == "london-dental")
        count = AIMetric.objects.count()
        response = post_json(api, "/track/batch", {"events": kept}, **headers)
        assert response.status_code == 200, response.content
        assert [item["status"] for item in response.json()["results"]] == ["duplicate"] * len(kept)
        assert AIMetric.objects.count() == count

        refused = post_json(api, "/track", pruned, **headers)
        body = assert_error_shape(refused, 400, "timestamp")
        assert "2026-03-15" in str(body)
        assert AIMetric.objects.count() == count

        fresh = {**kept[0], "event_id": str(uuid.uuid4())}
        assert post_json(api, "/track", fresh, **headers).status_code == 201
        assert post_json(api, "/track", fresh, **headers).status_code == 200
        assert AIMetric.objects.count() == count + 1


def test_the_scheduled_run_leaves_no_raw_event_older_than_the_window_and_a_day(stored, retention_on):
    from django_q.models import Schedule

    from metrics_app.retention import schedule

    schedule.ensure_schedule()
    job = Schedule.objects.get(name=schedule.SCHEDULE_NAME)
    assert (job.func, job.schedule_type) == (schedule.TASK, Schedule.DAILY)
    late_at_night = datetime(2026, 3, 20, 23, 59, tzinfo=UTC)
    with time_machine.travel(late_at_night, tick=False):
        summary = retention.run_scheduled()
    assert summary.startswith("Removed ")
    oldest = AIMetric.objects.order_by("timestamp").values_list("timestamp", flat=True).first()
    assert oldest >= late_at_night - timedelta(days=DAYS + 1)
    assert oldest >= CUTOFF
    if on_postgres():
        # Months were made ahead while retention was off; from the last one's end on, the job makes days.
        last = max(p.upper for p in partitions.partitions() if p.upper)
        with time_machine.travel(last + timedelta(days=2), tick=False):
            retention.run_scheduled()
        days = [p for p in partitions.partitions() if p.lower is not None and p.lower >= last]
        assert [p.lower for p in days] == [last + timedelta(days=n) for n in range(len(days))]
        assert all(p.upper - p.lower == timedelta(days=1) for p in days)
        assert days[-1].upper >= last + timedelta(days=2 + 7), "a week of day partitions ahead"


def test_unfolded_events_wait_for_the_next_run(stored, retention_on):
    with time_machine.travel(NOW, tick=False):
        retention.prune()
    # An event before the horizon, stored behind the ingest's back (a bulk load) and not folded yet.
    late = AIMetric.objects.order_by("timestamp").first()
    late.pk, late.event_id, late.timestamp = None, uuid.uuid4(), CUTOFF - timedelta(hours=3)
    late.save()
    with time_machine.travel(NOW, tick=False):
        planned = retention.plan()
        assert (planned.events, planned.unfolded) == (1, 1)
        assert "1 of them are not folded yet: the run folds them first" in planned.summary(done=False)
        # The run folds what is pending first, so the late event is folded and then removed.
        done = retention.prune()
    assert done.events == 1
    assert rollups.folded_through() >= late.pk
    assert not AIMetric.objects.filter(timestamp__lt=CUTOFF).exists()


def test_the_command_dry_run_changes_nothing_and_says_what_would_go(stored, retention_on):
    count = AIMetric.objects.count()
    out = StringIO()
    with time_machine.travel(NOW, tick=False):
        call_command("prune_events", "--dry-run", stdout=out)
    old = sum(1 for row in stored if datetime.fromisoformat(row["timestamp"]) < CUTOFF)
    assert f"Would remove {old} raw events before 2026-03-15 00:00 UTC (kept 5 days)" in out.getvalue()
    assert AIMetric.objects.count() == count
    assert not RetentionState.objects.exists()
    with time_machine.travel(NOW, tick=False):
        call_command("prune_events", "--quiet-progress", stdout=out)
    assert f"Removed {old} raw events" in out.getvalue()
    assert AIMetric.objects.count() == count - old


def test_demo_data_stays_inside_the_retention_window(db, retention_on):
    with pytest.raises(CommandError, match="--days must be at most 5"):
        call_command("generate_demo_data", "--days", "30", "--events", "10", "--no-progress")
    call_command("generate_demo_data", "--days", "5", "--events", "10", "--no-progress", stdout=StringIO())
    assert AIMetric.objects.count() == 10


def test_the_command_refuses_to_prune_while_retention_is_off(stored, settings):
    settings.MLOPS_RAW_RETENTION_DAYS = 0
    with pytest.raises(CommandError, match="MLOPS_RAW_RETENTION_DAYS"):
        call_command("prune_events")
    assert retention.run_scheduled().startswith("raw retention is off")
    assert AIMetric.objects.count() == len(stored)


def test_the_event_list_says_what_was_pruned(stored, retention_on, logged_in, superuser):
    client = logged_in(superuser)
    assert "removed by retention" not in client.get("/admin/metrics_app/aimetric/").content.decode()
    with time_machine.travel(NOW, tick=False):
        done = retention.prune()
    page = client.get("/admin/metrics_app/aimetric/").content.decode()
    assert (f"Raw events before 2026-03-15 00:00 UTC were removed by retention (kept 5 days; {done.events} "
            "removed in all)") in page


@pytest.mark.postgres_only
def test_a_day_partition_takes_over_its_rows_from_the_default_partition(stored, retention_on):
    if not on_postgres():
        pytest.skip("ai_metrics is partitioned on PostgreSQL; the run is on SQLite")
    day = OWN_PARTITION_DAYS[0]
    expected = AIMetric.objects.filter(timestamp__gte=day, timestamp__lt=day + timedelta(days=1)).count()
    assert expected > 0
    name = partitions.create(day, day + timedelta(days=1))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {name}")
        assert cursor.fetchone()[0] == expected
        cursor.execute(f"SELECT COUNT(*) FROM {partitions.DEFAULT} WHERE timestamp >= %s AND timestamp < %s",
                       [day, day + timedelta(days=1)])
        assert cursor.fetchone()[0] == 0
    assert AIMetric.objects.count() == len(stored)


def test_questions_only_raw_events_could_answer_are_refused_over_pruned_days(api, reader, stored, retention_on):
    """The rollups hold whole quarter hours and one filter at a time: anything else would count short."""
    with time_machine.travel(NOW, tick=False):
        retention.prune()
    pruned = {"start": "2026-03-11T00:00:00Z", "end": "2026-03-14T00:00:00Z"}
    asked = [
        ("/api/analytics/summary", {**pruned, "intent": "booking", "model": "gpt-4o-mini"}, "start"),
        ("/api/analytics/breakdown/intent", {**pruned, "model": "gpt-4o-mini"}, "start"),
        ("/api/analytics/summary", {**pruned, "start": "2026-03-11T00:07:00Z"}, "start"),
        ("/api/analytics/funnel", {**pruned, "end": "2026-03-14T00:10:00Z"}, "end"),
        ("/api/analytics/costs", pruned, "start"),
        ("/api/conversations/", {**pruned, "intent": "booking"}, "start"),
    ]
    for path, params, field in asked:
        response = api.get(path, params, **_headers(reader))
        body = assert_error_shape(response, 400, field)
        assert "removed by retention" in str(body), (path, body)
    # The same questions from the horizon on are answered.
    kept = {"start": "2026-03-15T00:07:00Z", "end": "2026-03-18T00:00:00Z"}
    for path, params, _ in asked:
        assert api.get(path, {**params, **kept}, **_headers(reader)).status_code == 200, path
    listed = api.get("/api/conversations/", {**pruned, "limit": 100}, **_headers(reader)).json()["conversations"]
    assert listed and all(item["raw_events_pruned"] for item in listed)
    listed = api.get("/api/conversations/", {**kept, "limit": 100}, **_headers(reader)).json()["conversations"]
    assert listed and not any(item["raw_events_pruned"] for item in listed)


def test_the_cost_options_page_says_its_raw_events_were_pruned(stored, retention_on, logged_in, superuser):
    client = logged_in(superuser)
    with time_machine.travel(NOW, tick=False):
        retention.prune()
        page = client.get("/admin/metrics_app/aimetric/costs/", {"period": "30d"}).content.decode()
        assert "the cost options are made of raw events: choose a period from 2026-03-15 on" in page
        page = client.get("/admin/metrics_app/aimetric/costs/",
                          {"period": "custom", "start": "2026-03-16", "end": "2026-03-19"}).content.decode()
        assert "removed by retention" not in page and 'id="costs-current"' in page
