"""The staff console at scale: load N events into PostgreSQL, then time the admin pages staff use.

Run against a temporary server:

    .venv/bin/python -m tests.pgserver --direct -- .venv/bin/python bench/bench_admin.py --events 5000000

It loads events with bench_analytics' COPY loader and rebuilds the derived
tables, then times through the full Django stack (median and worst of --runs):
the event list unfiltered, filtered and searched, a deep page, the conversation
list and page, the dashboard page and the analytics calls its script makes,
the CSV export rate, and the demo-data generator's rate through record_events.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_analytics import prepare  # noqa: E402  (sets Django up)
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Count  # noqa: E402
from django.test import Client  # noqa: E402

from metrics_app.models import AIMetric, Conversation  # noqa: E402


def timed(client: Client, url: str, runs: int) -> tuple[float, float]:
    response = client.get(url)
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}")
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(url)
        if hasattr(response, "streaming_content"):
            for _chunk in response.streaming_content:
                pass
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--businesses", type=int, default=20)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("bench_admin needs PostgreSQL: run it under python -m tests.pgserver --direct -- ...")

    now = datetime.now(UTC)
    prepare(args.events, args.businesses, args.days, now)

    client = Client()
    client.force_login(User.objects.create_superuser("bench", "bench@example.com", "bench-password-1"))
    one = (AIMetric.objects.values("business_id").annotate(n=Count("id")).order_by("-n")
           .values_list("business_id", flat=True).first())
    some_event = AIMetric.objects.filter(business_id=one).order_by("-timestamp").first()
    conversation = Conversation.objects.filter(business_id=one).order_by("-first_at").first()
    week_ago = (now - timedelta(days=7)).isoformat()
    events = "/admin/metrics_app/aimetric/"
    conversations = "/admin/metrics_app/conversation/"

    def url(path: str, **params: Any) -> str:
        return f"{path}?{urlencode(params)}" if params else path

    cases = [
        ("events, no filter (newest first)", url(events)),
        ("events, one business", url(events, business=one)),
        ("events, one business, model, past 7 days", url(events, business=one, model="gpt-4o-mini",
                                                          timestamp__gte=week_ago)),
        ("events, failed replies, all businesses", url(events, failed="yes")),
        ("events, booked, one business", url(events, business=one, appointment_booked__exact=1)),
        ("events, page 50", url(events, p=50)),
        ("events, search by event id", url(events, q=str(some_event.event_id))),
        ("events, search by conversation id, one business", url(events, business=one,
                                                                  q=some_event.conversation_id)),
        ("events, search by conversation id, all businesses", url(events, q=some_event.conversation_id)),
        ("conversations, no filter", url(conversations)),
        ("conversations, one business", url(conversations, business=one)),
        ("conversation page with its events", f"{conversations}{conversation.pk}/change/"),
        ("dashboard page (HTML)", url(f"{events}dashboard/", business=one, period="30d")),
    ]
    total = AIMetric.objects.count()
    print(f"Busiest business {one}: {AIMetric.objects.filter(business_id=one).count():,} events of {total:,}")
    print(f"Admin page times (median / worst of {args.runs}, ms):")
    for name, target in cases:
        median, worst = timed(client, target, args.runs)
        print(f"  {name:52s} {median:8.1f} / {worst:8.1f}")

    # The analytics calls the dashboard's script makes for one business over 30 days, one after another.
    page = client.get(url(f"{events}dashboard/", business=one, period="30d")).content.decode()
    config_tag = '<script id="dashboard-config" type="application/json">'
    config = json.loads(page.split(config_tag, 1)[1].split("</script>")[0])
    params = config["params"]
    core = [
        (config["api"]["summary"], params), (config["api"]["summary"], config["previous"]),
        (config["api"]["timeseries"], params), (config["api"]["funnel"], params),
    ]
    intents = client.get(config["api"]["intents"], {**params, "limit": 6}).json()["rows"]
    by_intent = [(config["api"]["intents"], {**params, "limit": 6})] + [
        (config["api"]["timeseries"], {**params, "intent": r["key"]}) for r in intents if r["key"]][:6]
    for name, calls in (("summary, series and funnel", core), ("intents over time", by_intent)):
        medians = [timed(client, f"{path}?{urlencode(query)}", args.runs)[0] for path, query in calls]
        print(f"  dashboard's {len(calls)} API calls for the {name}, one after another: {sum(medians):.1f} ms "
              f"(slowest {max(medians):.1f} ms)")

    started = time.perf_counter()
    response = client.get(url(f"{events}export.csv", business=one, timestamp__gte=week_ago))
    rows = sum(chunk.count(b"\n") for chunk in response.streaming_content) - 1
    seconds = time.perf_counter() - started
    print(f"CSV export, one business, 7 days: {rows:,} rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)")

    started = time.perf_counter()
    call_command("generate_demo_data", "--events", "20000", "--seed", "5", "--no-progress", stdout=io.StringIO())
    seconds = time.perf_counter() - started
    print(f"generate_demo_data on the loaded database: 20,000 events in {seconds:.1f} s "
          f"({20000 / seconds:,.0f} events/s through record_events)")


if __name__ == "__main__":
    main()
