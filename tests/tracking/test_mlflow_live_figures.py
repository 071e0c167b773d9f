"""Each version's daily figures in MLflow, read back from a real tracking server and checked against the raw rows."""

from __future__ import annotations

import random
import re
import uuid
from collections import defaultdict
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from io import StringIO
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from metrics_app.models import AIMetric, Business
from metrics_app.tracking import live
from tests.analytics.helpers import failed, quantile, store
from tests.helpers import fold_all

pytestmark = [pytest.mark.django_db(transaction=True)]

TZ = "America/New_York"  # days that are not UTC days: a late-evening reply belongs to the day before in UTC+0 terms
DAYS = [date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 4)]
FIGURES = ("booking_rate", "handoff_rate", "error_rate", "latency_p50_ms", "latency_p95_ms", "cost_per_booking_usd",
           "conversations", "events")


def seed(businesses: list[str], rng: random.Random) -> None:
    """Conversations over three local days and the evenings around them, with two prompt versions and a knowledge
    base that each business updates on the second day."""
    tz = ZoneInfo(TZ)
    payloads = []
    for business in businesses:
        Business.objects.create(id=business, time_zone=TZ)  # the days MLflow gets are the business's own
        for n in range(70):
            day = rng.choice([DAYS[0] - timedelta(days=1), *DAYS, DAYS[-1] + timedelta(days=1)])
            start = datetime.combine(day, time(), tzinfo=tz) + timedelta(minutes=rng.randrange(24 * 60))
            kb = "kb-aaaaaaaaaaaa" if day < DAYS[1] else f"kb-{business[:4]}bbbbbbbb"
            prompt = rng.choice(["v1", "v2"])
            for turn in range(rng.randint(1, 4)):
                payloads.append({
                    "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                    "business_id": business,
                    "conversation_id": f"conv-{n}",
                    "timestamp": (start + timedelta(minutes=4 * turn)).isoformat(),
                    "response_time_ms": rng.randint(200, 6000),
                    "tokens_used": rng.randint(100, 900),
                    "model_name": "gemini-1.5-flash",
                    "success_rate": rng.choice([1, 1, 1, 0]),
                    "appointment_booked": rng.random() < 0.25,
                    "human_handoff_requested": rng.random() < 0.1,
                    # Now and then a turn of the conversation answered by the other prompt.
                    "prompt_version": prompt if rng.random() < 0.9 else {"v1": "v2", "v2": "v1"}[prompt],
                    "kb_version": kb,
                })
    rng.shuffle(payloads)
    store(payloads)
    fold_all()


def expected(business: str, dimension: str, version: str, day: date) -> dict[str, float]:
    """The figures of one version's day, from the raw rows: conversations that started that day (local) with a
    reply of that version, and that version's replies of that day."""
    tz = ZoneInfo(TZ)
    start = datetime.combine(day, time(), tzinfo=tz)
    end = start + timedelta(days=1)
    rows = list(AIMetric.objects.filter(business_id=business).values())
    conversations: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        conversations[row["conversation_id"]].append(row)
    started = [
        events for events in conversations.values()
        if start <= min(e["timestamp"] for e in events) < end and any(e[dimension] == version for e in events)
    ]
    replies = [r for r in rows if start <= r["timestamp"] < end and r[dimension] == version]
    booked = sum(any(e["appointment_booked"] for e in events) for events in started)
    handed = sum(any(e["human_handoff_requested"] for e in events) for events in started)
    cost = float(sum((r["cost_usd"] or Decimal(0) for r in replies), Decimal(0)))
    latencies = [r["response_time_ms"] for r in replies]
    if not replies:
        return {"events": 0.0}
    figures = {
        "events": float(len(replies)),
        "conversations": float(len(started)),
        "error_rate": sum(failed(r) for r in replies) / len(replies),
        "latency_p50_ms": quantile(latencies, 0.5),
        "latency_p95_ms": quantile(latencies, 0.95),
    }
    if started:
        figures["booking_rate"] = booked / len(started)
        figures["handoff_rate"] = handed / len(started)
    if booked:
        figures["cost_per_booking_usd"] = cost / booked
    return figures


def logged(client, business: str) -> dict[tuple[str, str], dict[str, dict[int, float]]]:
    """What MLflow holds for a business: per (dimension, version) run, each metric's value per step."""
    experiment = client.get_experiment_by_name(live.experiment_name(business))
    assert experiment is not None, f"no experiment for {business}"
    found: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for run in client.search_runs([experiment.experiment_id]):
        key = (run.data.tags[live.TAG_DIMENSION], run.data.tags[live.TAG_VERSION])
        assert key not in found, f"two runs for {key}"
        points: dict[str, dict[int, float]] = {}
        for name in FIGURES:
            history = client.get_metric_history(run.info.run_id, name)
            steps = [point.step for point in history]
            assert len(steps) == len(set(steps)), f"{key} {name} has two points on one day: {history}"
            points[name] = {point.step: point.value for point in history}
        found[key] = points
    return found


@pytest.fixture
def client(mlflow_tracking, settings):
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow_tracking.url)


def counts(line: str) -> tuple[int, int]:
    """(version-days logged, version-days already there) from the command's summary line."""
    found = re.search(r"logged (\d+) version-days .*; (\d+) version-days were there already", line)
    assert found, line
    return int(found[1]), int(found[2])


def run_command(*args: str) -> str:
    out = StringIO()
    call_command("log_mlflow_metrics", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_each_versions_daily_figures_equal_those_of_the_raw_rows_one_experiment_per_business(client) -> None:
    businesses = [f"clinic-{uuid.uuid4().hex[:6]}", f"salon-{uuid.uuid4().hex[:6]}"]
    seed(businesses, random.Random(12))

    line = run_command("--date", DAYS[-1].isoformat(), "--days", str(len(DAYS)))
    assert "version-days" in line and "2026-03-02 to 2026-03-04" in line

    for business in businesses:
        runs = logged(client, business)
        assert set(runs) == {
            ("prompt_version", "v1"), ("prompt_version", "v2"),
            ("kb_version", "kb-aaaaaaaaaaaa"), ("kb_version", f"kb-{business[:4]}bbbbbbbb"),
        }
        for (dimension, version), points in runs.items():
            days = {step for step in points["events"]}
            assert days <= {live.step_of(day) for day in DAYS}  # the evenings around the three days stay out
            for day in DAYS:
                step = live.step_of(day)
                want = expected(business, dimension, version, day)
                if not want["events"]:
                    assert step not in days
                    continue
                for name in FIGURES:
                    if name not in want or want[name] is None:
                        assert step not in points[name], (dimension, version, day, name)
                    elif name.startswith("latency_p"):
                        assert points[name][step] == pytest.approx(want[name], rel=0.01), (version, day, name)
                    else:
                        assert points[name][step] == pytest.approx(want[name], rel=1e-9), (version, day, name)
        stamps = {
            point.timestamp for run in client.search_runs([client.get_experiment_by_name(
                live.experiment_name(business)).experiment_id])
            for point in client.get_metric_history(run.info.run_id, "events")
        }
        assert stamps <= {int(live.day_start(day, ZoneInfo(TZ)).timestamp() * 1000) for day in DAYS}


def test_logging_the_same_days_again_adds_no_point(client) -> None:
    business = f"dental-{uuid.uuid4().hex[:6]}"
    seed([business], random.Random(5))
    first = run_command("--business", business, "--date", DAYS[1].isoformat(), "--days", "2")
    before = logged(client, business)
    again = run_command("--business", business, "--date", DAYS[-1].isoformat(), "--days", "3")
    after = logged(client, business)

    logged_first, there_first = counts(first)
    logged_again, there_again = counts(again)
    assert logged_first > 0 and there_first == 0
    assert there_again == logged_first and logged_again > 0  # only the third day was new
    for key, points in before.items():
        for name, values in points.items():
            assert {s: v for s, v in after[key][name].items() if s in values} == values
    assert any(live.step_of(DAYS[-1]) in points["events"] for points in after.values())


def test_the_command_refuses_an_unknown_business_and_a_bad_time_zone(client) -> None:
    with pytest.raises(CommandError, match="no such business: nobody-here"):
        run_command("--business", "nobody-here")
    with pytest.raises(CommandError, match="--tz must be an IANA time zone"):
        run_command("--tz", "Mars/Olympus")


def test_the_workers_job_logs_each_business_the_days_finished_in_its_own_time_zone(client) -> None:
    """At 03:30 UTC on 5 March it is already 5 March's evening on Kiritimati (UTC+14) but still 4 March in New
    York: the job logs 4 March for the first and only up to 3 March for the second."""
    import time_machine

    islands, city = f"atoll-{uuid.uuid4().hex[:6]}", f"dental-{uuid.uuid4().hex[:6]}"
    seed([city], random.Random(9))
    Business.objects.create(id=islands, time_zone="Pacific/Kiritimati")
    moment = datetime.combine(DAYS[-1], time(12), tzinfo=ZoneInfo("Pacific/Kiritimati"))
    store([{"event_id": str(uuid.uuid4()), "business_id": islands, "conversation_id": "c-1",
            "timestamp": moment.isoformat(), "response_time_ms": 800, "tokens_used": 100, "prompt_version": "v1"}])
    fold_all()
    with time_machine.travel(datetime(2026, 3, 5, 3, 30, tzinfo=ZoneInfo("UTC")), tick=False):
        live.log_finished_days()
    island_steps = set(logged(client, islands)[("prompt_version", "v1")]["events"])
    city_steps = {step for points in logged(client, city).values() for step in points["events"]}
    assert island_steps == {live.step_of(DAYS[-1])}
    assert live.step_of(DAYS[-1]) not in city_steps and live.step_of(DAYS[1]) in city_steps
