"""Analytics speed at scale: load N events into PostgreSQL with COPY, build the rollups, time the API.

Run against a temporary server:

    .venv/bin/python -m tests.pgserver -- .venv/bin/python bench/bench_analytics.py --events 10000000

It prints the COPY rate, the rebuild time, the ingest rate of record_events
(with and without the pricing, conversation and rollup work it does in the
insert's transaction), and the median and worst time of each analytics
endpoint through the full Django/DRF stack. Targets: each 30-day summary and
the 30-day hourly series under 100 ms with 10 million events.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlops_site.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.db.models import Count  # noqa: E402
from django.test import Client  # noqa: E402

from metrics_app.ingest import services
from metrics_app.ingest.validation import check_event  # noqa: E402
from metrics_app.models import AIMetric, Business, ModelPrice  # noqa: E402
from metrics_app.pricing import services as pricing  # noqa: E402

ZONES = ["Asia/Kolkata", "Asia/Kathmandu", "Australia/Eucla", "Europe/London", "America/New_York", "UTC",
         "Australia/Adelaide", "America/St_Johns", "Asia/Tokyo", "Europe/Berlin"]
MODELS = ["gemini-1.5-flash", "gemini-2.0-flash", "gpt-4o-mini", "claude-3-5-haiku-20241022", "in-house-llm"]
INTENTS = ["booking", "pricing", "hours", "location", "cancellation", "general", "complaint", "services"]
COLUMNS = ("event_id", "business_id", "conversation_id", "response_time_ms", "success_rate", "tokens_used",
           "input_tokens", "output_tokens", "api_cost_usd", "model_name", "intent_detected",
           "appointment_requested", "appointment_booked", "human_handoff_requested", "response_type",
           "prompt_version", "kb_version", "timestamp", "created_at", "cost_usd", "cost_basis")


def rows(total: int, businesses: list[str], days: int, now: datetime, seed: int) -> Iterator[str]:
    """Tab-separated COPY lines: conversations of 1-8 turns spread over the last `days` days."""
    rng = random.Random(seed)
    table = pricing.current_table()
    per_token = {}
    for model in MODELS:
        price = table.price_for(model, now)
        per_token[model] = None if price is None else (float(price.input_per_mtok) / 1e6,
                                                         float(price.output_per_mtok) / 1e6)
    span = days * 86400
    made = 0
    conversation = 0
    created = now.isoformat()
    while made < total:
        conversation += 1
        business = businesses[int(rng.paretovariate(1.2)) % len(businesses)]
        model = rng.choice(MODELS)
        prompt = rng.choice(("v1", "v2", "v3"))
        kb = rng.choice(("kb-2026-10", "kb-2026-11"))
        start = now - timedelta(seconds=rng.random() * span)
        requested = rng.random() < 0.35
        turns = min(rng.randint(1, 8), total - made)
        for turn in range(turns):
            moment = start + timedelta(seconds=turn * rng.randint(20, 90))
            tokens_in = rng.randint(400, 3000)
            tokens_out = rng.randint(20, 400)
            latency = int(rng.lognormvariate(7.0, 0.6))
            failed = rng.random() < 0.03
            booked = requested and turn == turns - 1 and rng.random() < 0.5
            prices = per_token[model]
            if prices is None:
                cost, basis = f"{(tokens_in + tokens_out) * 0.0000002:.10f}", "client"
            else:
                cost, basis = f"{tokens_in * prices[0] + tokens_out * prices[1]:.10f}", "tokens"
            yield "\t".join((
                str(uuid.UUID(int=rng.getrandbits(128), version=4)), business, f"c{conversation}",
                str(min(latency, 3_600_000)), "0" if failed else "1", str(tokens_in + tokens_out),
                str(tokens_in), str(tokens_out), f"{(tokens_in + tokens_out) * 0.0000002:.6f}", model,
                rng.choice(INTENTS), "t" if requested and turn == 0 else "f", "t" if booked else "f",
                "t" if rng.random() < 0.02 else "f", "error" if failed else "text", prompt, kb,
                moment.isoformat(), created, cost, basis,
            )) + "\n"
            made += 1


def chunked(lines: Iterator[str], n: int) -> Iterator[list[str]]:
    batch = []
    for line in lines:
        batch.append(line)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def load(total: int, businesses: list[str], days: int, now: datetime) -> float:
    """COPY `total` rows with the event table's indexes dropped, then rebuild them. Returns COPY rows/s."""
    meta = AIMetric._meta
    with connection.schema_editor() as editor:
        for index in meta.indexes:
            editor.remove_index(AIMetric, index)
        for constraint in meta.constraints:
            editor.remove_constraint(AIMetric, constraint)
    table = connection.ops.quote_name(meta.db_table)
    copy_seconds = 0.0
    with connection.cursor() as cursor:
        # Only the COPY itself is timed: making the rows in Python is the bench's own cost.
        for part in chunked(rows(total, businesses, days, now, seed=1), 200_000):
            data = io.StringIO("".join(part))
            started = time.perf_counter()
            cursor.cursor.copy_expert(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN", data)
            copy_seconds += time.perf_counter() - started
    started = time.perf_counter()
    with connection.schema_editor() as editor:
        for constraint in meta.constraints:
            editor.add_constraint(AIMetric, constraint)
        for index in meta.indexes:
            editor.add_index(AIMetric, index)
    print(f"  indexes and constraints rebuilt in {time.perf_counter() - started:.1f} s")
    return total / copy_seconds


def ingest_rate(businesses: list[str], now: datetime, batches: int, hooks: bool) -> float:
    """Events per second through record_events (500-event batches), or the bare insert when hooks is False.

    A batch is what one chat app's client flushes: one business, the last few
    minutes, about 100 conversations of 5 turns.
    """
    rng = random.Random(99 if hooks else 98)
    payloads = []
    for b in range(batches):
        batch = []
        business = businesses[b % len(businesses)]
        for n in range(500):
            event = {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "business_id": business, "conversation_id": f"ingest-{hooks}-{b}-{n // 5}",
                "response_time_ms": int(rng.lognormvariate(7.0, 0.6)), "tokens_used": 900, "input_tokens": 800,
                "output_tokens": 100, "model_name": rng.choice(MODELS), "intent_detected": rng.choice(INTENTS),
                "timestamp": (now - timedelta(seconds=rng.randrange(300))).isoformat(),
            }
            batch.append(check_event(event).values)
        payloads.append(batch)
    started = time.perf_counter()
    for batch in payloads:
        if hooks:
            services.record_events(batch)
        else:
            for event in batch:
                event["created_at"] = now
                event["cost_usd"], event["cost_basis"] = None, "none"
            with transaction.atomic():
                services.ensure_businesses({e["business_id"] for e in batch})
                services._insert_events(batch)
    return batches * 500 / (time.perf_counter() - started)


def timed(client: Client, path: str, params: dict[str, str], headers: dict[str, str], runs: int) -> tuple[float, float]:
    response = client.get(path, params, headers=headers)
    assert response.status_code == 200, (path, response.status_code, response.content[:300])
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(path, params, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    return statistics.median(times), max(times)


def prepare(events: int, business_count: int, days: int, now: datetime) -> tuple[list[str], float]:
    """Migrate, load `events` events with COPY, build the derived tables; return (business ids, COPY events/s)."""
    call_command("migrate", verbosity=0)
    businesses = [f"bench-{i:03d}" for i in range(business_count)]
    Business.objects.bulk_create(
        [Business(id=b, time_zone=ZONES[i % len(ZONES)]) for i, b in enumerate(businesses)], ignore_conflicts=True
    )
    print(f"Loading {events:,} events ({business_count} businesses, {days} days) with COPY ...")
    copy_rate = load(events, businesses, days, now)
    print(f"  COPY: {copy_rate:,.0f} events/s")
    started = time.perf_counter()
    call_command("rebuild_analytics", "--quiet-progress")
    print(f"  rebuild_analytics: {time.perf_counter() - started:.1f} s")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    return businesses, copy_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--businesses", type=int, default=20)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--ingest-batches", type=int, default=40)
    parser.add_argument("--skip-raw", action="store_true", help="Skip the cases that read raw rows (slow at 10M).")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("bench_analytics needs PostgreSQL: run it under python -m tests.pgserver -- ...")

    now = datetime.now(UTC)
    businesses, copy_rate = prepare(args.events, args.businesses, args.days, now)

    print("Ingest through record_events, 500-event batches, on the loaded database:")
    bare = ingest_rate(businesses, now, args.ingest_batches, hooks=False)
    full = ingest_rate(businesses, now, args.ingest_batches, hooks=True)
    print(f"  bare insert: {bare:,.0f} events/s; with pricing, conversations and rollups: {full:,.0f} events/s "
          f"({full / copy_rate:.0%} of COPY)")

    from metrics_app.keys.services import create_api_key

    _, raw = create_api_key(business=None, name="bench", can_ingest=False, can_read=True)
    headers = {"Authorization": f"Bearer {raw}"}
    client = Client()
    end = datetime.now(UTC)
    month = {"start": (end - timedelta(days=30)).isoformat(), "end": end.isoformat()}
    # The busiest business: the slowest single-business case.
    one = (AIMetric.objects.values("business_id").annotate(n=Count("id")).order_by("-n")
           .values_list("business_id", flat=True).first())
    cases = [
        ("30-day summary, all businesses", "/api/analytics/summary", month, True),
        ("30-day summary, one business", "/api/analytics/summary", {**month, "business_id": one}, True),
        ("30-day hourly series, one business (its zone)", "/api/analytics/timeseries",
         {**month, "business_id": one, "bucket": "hour"}, True),
        ("30-day hourly series, all businesses, Asia/Kathmandu", "/api/analytics/timeseries",
         {**month, "bucket": "hour", "tz": "Asia/Kathmandu"}, True),
        ("30-day hourly series, one business, no percentiles", "/api/analytics/timeseries",
         {**month, "business_id": one, "bucket": "hour", "percentiles": "false"}, True),
        ("30-day hourly series, all businesses, no percentiles", "/api/analytics/timeseries",
         {**month, "bucket": "hour", "tz": "Asia/Kathmandu", "percentiles": "false"}, True),
        ("30-day daily series, all businesses", "/api/analytics/timeseries", {**month, "bucket": "day"}, False),
        ("30-day funnel, all businesses", "/api/analytics/funnel", month, False),
        ("30-day breakdown by intent, one business (raw rows)", "/api/analytics/breakdown/intent",
         {**month, "business_id": one}, False),
        ("30-day peak hours, one business", "/api/analytics/peak-hours", {**month, "business_id": one}, False),
        ("30-day summary, one business, model filter (raw rows)", "/api/analytics/summary",
         {**month, "business_id": one, "model": "gpt-4o-mini"}, False),
    ]
    total = AIMetric.objects.count()
    print(f"Busiest business {one}: {AIMetric.objects.filter(business_id=one).count():,} events")
    print(f"Endpoint times over {total:,} events (median / worst of {args.runs}, ms; target < 100 ms where marked):")
    for name, path, params, target in cases:
        if args.skip_raw and "raw rows" in name:
            continue
        median, worst = timed(client, path, params, headers, args.runs)
        verdict = ("met" if median < 100 else "MISSED") if target else "info"
        print(f"  {name:55s} {median:8.1f} / {worst:8.1f}  {verdict}")
    print(f"Prices in the table: {ModelPrice.objects.count()}")


if __name__ == "__main__":
    main()
