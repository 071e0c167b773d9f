"""Analytics speed at scale: load N events with COPY, rebuild the rollups, time the analytics API over HTTP.

Run against a temporary server:

    .venv/bin/python -m tests.pgserver --direct -- .venv/bin/python bench/bench_analytics.py --events 10000000

The issue's targets, at 10 million events over 30 days: each analytics read
of a 30-day period (summary, funnel, hourly and daily series with
percentiles, each breakdown, peak hours, and a summary filtered by model, by
intent and by prompt version), for all businesses and for the busiest one,
under 100 ms median through HTTP; the dashboard's whole set of API calls under
300 ms; `rebuild_analytics` under 120 s.

What it does:

- Loads --events events over the last --days days (30: the 30-day reads cover
  every event) with COPY, the event table's indexes dropped and rebuilt after.
  Every dimension (intent, model, response_type, prompt_version, kb_version)
  has several values; events belong to conversations of 1-8 turns with
  requests, bookings, handoffs, failures and log-normal latencies.
- Times `rebuild_analytics` on the loaded table (vacuumed and analysed first,
  as autovacuum leaves a production table).
- Stores --tail more events through `record_events` and leaves them unfolded
  (no folder runs during the reads), so every read also adds the unfolded
  tail, as it does in production while the folder is a moment behind.
- Serves the database with gunicorn (gunicorn.conf.py, MLOPS_ENV=production)
  on a free loopback port, with an agency read key from `manage.py
  create_api_key`, and times each request with http.client on a kept-alive
  connection: one untimed request, then --runs timed ones (fewer when a
  case's runs pass --case-budget seconds), median and worst.
- Times the dashboard's set of API calls (metrics_app/console/dashboard.py
  gives the page's parameters, its script metrics_app/static/metrics_app/
  dashboard/dashboard.js the calls) for the busiest business and for all
  businesses: as the browser makes them (summary, previous summary, series
  and funnel at once; then the intent breakdown; then the top intents' series
  at once), and one after another, with the agency key where the page sends
  the staff member's session cookie. With --days 30 the page's previous period
  (the 30 days before, for its "vs previous period") holds no events.
- Prints the row counts of the rollup and sketch tables the reads touch.

The service runs with a statement timeout (--request-timeout), so a read that
runs away is cancelled and reported rather than holding the run. Every
process started here is stopped on the way out, by its process group.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import io
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlops_site.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from bench.processes import manage, production_env, stop_group  # noqa: E402
from metrics_app.console import dashboard  # noqa: E402
from metrics_app.ingest import services  # noqa: E402
from metrics_app.ingest.validation import check_event  # noqa: E402
from metrics_app.models import AIMetric, Business, Conversation  # noqa: E402
from metrics_app.pricing import services as pricing  # noqa: E402
from tests.pgserver import free_port  # noqa: E402

ZONES = ["Asia/Kolkata", "Asia/Kathmandu", "Australia/Eucla", "Europe/London", "America/New_York", "UTC",
         "Australia/Adelaide", "America/St_Johns", "Asia/Tokyo", "Europe/Berlin"]
MODELS = ["gemini-1.5-flash", "gemini-2.0-flash", "gpt-4o-mini", "claude-3-5-haiku-20241022", "in-house-llm"]
INTENTS = ["booking", "pricing", "hours", "location", "cancellation", "general", "complaint", "services"]
PROMPTS = ("v1", "v2", "v3")
KBS = ("kb-2026-10", "kb-2026-11")
# Replies that neither failed nor handed off; "error" and "handoff" come from the event's own flags.
REPLY_TYPES = ("text", "booking_link", "faq_answer")
REPLY_WEIGHTS = (80, 12, 8)
COLUMNS = ("event_id", "business_id", "conversation_id", "response_time_ms", "success_rate", "tokens_used",
           "input_tokens", "output_tokens", "api_cost_usd", "model_name", "intent_detected",
           "appointment_requested", "appointment_booked", "human_handoff_requested", "response_type",
           "prompt_version", "kb_version", "timestamp", "created_at", "cost_usd", "cost_basis")

# The targets.
TARGET_READ_MS = 100.0
TARGET_DASHBOARD_MS = 300.0
TARGET_REBUILD_S = 120.0
PERIOD = timedelta(days=30)
# The dimensions the breakdown endpoint answers for (metrics_app/analytics/selectors.py DIMENSIONS).
BREAKDOWNS = ("intent", "model", "response_type", "business", "prompt_version", "kb_version")
# dashboard.js: TOP_INTENTS intents charted, asked for with limit TOP_INTENTS + 1 (one may be null).
DASHBOARD_TOP_INTENTS = 5
# Requests per minute for the bench's key: far above what one client sends, so nothing is throttled.
KEY_RATE_LIMIT = 2_000_000_000


# --- The data


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
        # Pareto: a few businesses hold most events, as an agency's busiest clients do.
        business = businesses[int(rng.paretovariate(1.2)) % len(businesses)]
        model = rng.choice(MODELS)
        prompt = rng.choice(PROMPTS)
        kb = rng.choice(KBS)
        start = now - timedelta(seconds=rng.random() * span)
        requested = rng.random() < 0.35
        turns = min(rng.randint(1, 8), total - made)
        for turn in range(turns):
            moment = start + timedelta(seconds=turn * rng.randint(20, 90))
            tokens_in = rng.randint(400, 3000)
            tokens_out = rng.randint(20, 400)
            latency = int(rng.lognormvariate(7.0, 0.6))
            failed = rng.random() < 0.03
            handoff = rng.random() < 0.02
            booked = requested and turn == turns - 1 and rng.random() < 0.5
            if failed:
                reply = "error"
            elif handoff:
                reply = "handoff"
            else:
                reply = rng.choices(REPLY_TYPES, REPLY_WEIGHTS)[0]
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
                "t" if handoff else "f", reply, prompt, kb,
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


@dataclass(frozen=True)
class Loaded:
    businesses: list[str]
    copy_rate: float  # events/s
    rebuild_seconds: float


def vacuum_analyze(table: str | None = None) -> float:
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {connection.ops.quote_name(table)}" if table else "VACUUM ANALYZE")
    return time.perf_counter() - started


def prepare(events: int, business_count: int, days: int, now: datetime) -> Loaded:
    """Migrate, load `events` events with COPY, time rebuild_analytics; bench_admin loads its data here too."""
    call_command("migrate", verbosity=0)
    businesses = [f"bench-{i:03d}" for i in range(business_count)]
    Business.objects.bulk_create(
        [Business(id=b, time_zone=ZONES[i % len(ZONES)]) for i, b in enumerate(businesses)], ignore_conflicts=True
    )
    print(f"Loading {events:,} events ({business_count} businesses, {days} days) with COPY ...")
    copy_rate = load(events, businesses, days, now)
    print(f"  COPY: {copy_rate:,.0f} events/s")
    print(f"  VACUUM ANALYZE of the event table: {vacuum_analyze(AIMetric._meta.db_table):.1f} s")
    started = time.perf_counter()
    call_command("rebuild_analytics", "--quiet-progress")
    rebuild_seconds = time.perf_counter() - started
    print(f"  rebuild_analytics: {rebuild_seconds:.1f} s")
    print(f"  VACUUM ANALYZE of the database: {vacuum_analyze():.1f} s")
    return Loaded(businesses=businesses, copy_rate=copy_rate, rebuild_seconds=rebuild_seconds)


def store_tail(business_id: str, count: int, now: datetime) -> float:
    """`count` events of the last minutes through record_events, left unfolded; returns events/s.

    Half continue conversations the rollups already hold (the reads then
    correct those conversations' figures), half start new ones.
    """
    if count <= 0:
        return 0.0
    rng = random.Random(7)
    folded = list(Conversation.objects.filter(business_id=business_id).order_by("-first_at")
                  .values_list("conversation_id", flat=True)[: max(1, count // 10)])
    batch = []
    for n in range(count):
        conversation = rng.choice(folded) if folded and n % 2 == 0 else f"tail-{n // 5}"
        batch.append(check_event({
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "business_id": business_id, "conversation_id": conversation,
            "response_time_ms": int(rng.lognormvariate(7.0, 0.6)), "tokens_used": 900, "input_tokens": 800,
            "output_tokens": 100, "model_name": rng.choice(MODELS), "intent_detected": rng.choice(INTENTS),
            "response_type": rng.choices(REPLY_TYPES, REPLY_WEIGHTS)[0],
            "prompt_version": rng.choice(PROMPTS), "kb_version": rng.choice(KBS),
            "appointment_requested": n % 7 == 0, "appointment_booked": n % 11 == 0,
            "timestamp": (now - timedelta(seconds=rng.randrange(600))).isoformat(),
        }).values)
    started = time.perf_counter()
    for part in range(0, count, 500):  # what one chat app's client flushes at a time
        services.record_events(batch[part:part + 500])
    return count / (time.perf_counter() - started)


def busiest_business() -> tuple[str, int]:
    """The business with the most events, and how many."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT business_id, count(*) FROM {connection.ops.quote_name(AIMetric._meta.db_table)} "
                       "GROUP BY business_id ORDER BY count(*) DESC, business_id LIMIT 1")
        business_id, events = cursor.fetchone()
    return business_id, events


def rollup_table_counts() -> dict[str, int]:
    """Rows of every rollup and sketch table there is: what the reads read instead of the events."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND (table_name LIKE 'mlops\\_%rollup%' OR table_name LIKE 'mlops\\_%sketch%') ORDER BY table_name"
        )
        tables = [name for (name,) in cursor.fetchall()]
        counts = {}
        for name in tables:
            cursor.execute(f"SELECT count(*) FROM {connection.ops.quote_name(name)}")
            counts[name] = cursor.fetchone()[0]
    return counts


# --- The service


def service_env(args: argparse.Namespace) -> dict[str, str]:
    """This service configured as production requires (metrics_app/checks.py), on this bench's database."""
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    env = production_env(f"postgresql://{auth}@{s['HOST']}:{s['PORT']}/{s['NAME']}")
    # A read that runs away is cancelled by PostgreSQL, before gunicorn would kill its worker.
    env["PGOPTIONS"] = f"-c statement_timeout={int(args.request_timeout * 1000)}"
    env["GUNICORN_TIMEOUT"] = str(int(args.request_timeout) + 15)
    if args.workers:
        env["WEB_CONCURRENCY"] = str(args.workers)
    if args.threads:
        env["GUNICORN_THREADS"] = str(args.threads)
    return env


@dataclass
class Service:
    port: int
    log_path: Path
    keep_log: bool = False  # set when something failed: the log then stays for the reader

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@contextmanager
def gunicorn(env: dict[str, str], timeout: float = 60.0) -> Iterator[Service]:
    """gunicorn serving mlops_site.wsgi as start.sh does, on a free loopback port; stopped on the way out."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="bench-analytics-gunicorn-", suffix=".log", delete=False)
    service = Service(port=port, log_path=Path(log.name))
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "mlops_site.wsgi", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{service.log_tail()}")
            try:
                if Lane(port, 2.0).get("/health", {}).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not answer /health within {timeout:.0f} s:\n{service.log_tail()}")
            time.sleep(0.2)
        yield service
    except BaseException:
        service.keep_log = True
        raise
    finally:
        stop_group(process)
        log.close()
        if service.keep_log:
            print(f"gunicorn's log: {service.log_path}", file=sys.stderr)
        else:
            service.log_path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    ms: float

    def json(self) -> Any:
        return json.loads(self.body)


class Lane:
    """One kept-alive HTTP connection, as a browser keeps one per parallel request."""

    def __init__(self, port: int, timeout: float, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.timeout = timeout
        self.headers = {"Accept": "application/json", **(headers or {})}
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str, params: dict[str, Any]) -> Answer:
        url = f"{path}?{urlencode(params)}" if params else path
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            started = time.perf_counter()
            try:
                self.conn.request("GET", url, headers=self.headers)
                response = self.conn.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed a kept-alive connection (keepalive timeout, a recycled worker): reconnect once.
                self.close()
                if attempt == 2:
                    raise
                continue
            ms = (time.perf_counter() - started) * 1000
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            return Answer(response.status, body, ms)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# --- The cases


@dataclass(frozen=True)
class Case:
    name: str
    scope: str  # "all" or "busiest"
    path: str
    params: dict[str, str]
    target_ms: float | None = TARGET_READ_MS
    # What a right answer holds: the bench refuses to time an empty or wrong one.
    check: Callable[[Any], str | None] | None = None


@dataclass
class Timing:
    name: str
    scope: str
    target_ms: float | None
    times: list[float] = field(default_factory=list)
    failure: str = ""
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    @property
    def worst(self) -> float | None:
        return max(self.times) if self.times else None

    @property
    def verdict(self) -> str:
        if self.failure:
            return "FAILED"
        if self.target_ms is None or self.median is None:
            return "info"
        return "met" if self.median < self.target_ms else "MISSED"


def _summary_check(answer: Any) -> str | None:
    s = answer["summary"]
    missing = [k for k in ("events", "conversations", "conversations_booked", "conversations_handed_off",
                           "errors", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms") if not s.get(k)]
    return f"summary without {', '.join(missing)}" if missing else None


def _funnel_check(answer: Any) -> str | None:
    steps = {step["step"]: step["conversations"] for step in answer["funnel"]["steps"]}
    return None if all(steps.values()) and answer["funnel"]["human_handoffs"] else f"an empty funnel step: {steps}"


def _series_check(buckets: int) -> Callable[[Any], str | None]:
    def check(answer: Any) -> str | None:
        series = answer["series"]
        if len(series) < buckets:
            return f"{len(series)} buckets, expected at least {buckets}"
        filled = [b for b in series if b["events"]]
        if len(filled) < len(series) * 0.9:
            return f"only {len(filled)} of {len(series)} buckets hold events"
        if any(b["latency_p95_ms"] is None for b in filled):
            return "a bucket with events but no latency percentile"
        return None

    return check


def _breakdown_check(least: int) -> Callable[[Any], str | None]:
    def check(answer: Any) -> str | None:
        keys = [row["key"] for row in answer["rows"] if row["key"] is not None and row["events"]]
        return None if len(keys) >= least else f"{len(keys)} values of {answer['dimension']}: {keys}"

    return check


def _peak_check(answer: Any) -> str | None:
    cells = answer["cells"]
    return None if len(cells) == 168 and sum(c["events"] for c in cells) else f"{len(cells)} cells"


BREAKDOWN_VALUES = {"intent": len(INTENTS), "model": len(MODELS), "response_type": len(REPLY_TYPES) + 2,
                    "prompt_version": len(PROMPTS), "kb_version": len(KBS)}


def read_cases(busiest: str, end: datetime) -> list[Case]:
    """Every read the issue names, over the 30 days before `end`, for all businesses and for the busiest."""
    period = {"start": (end - PERIOD).isoformat(), "end": end.isoformat()}
    days = PERIOD.days
    cases = []
    for scope, scoped in (("all", period), ("busiest", {**period, "business_id": busiest})):
        cases += [
            Case("summary", scope, "/api/analytics/summary", scoped, check=_summary_check),
            Case("funnel", scope, "/api/analytics/funnel", scoped, check=_funnel_check),
            Case("hourly series, percentiles", scope, "/api/analytics/timeseries", {**scoped, "bucket": "hour"},
                 check=_series_check(days * 24)),
            Case("daily series, percentiles", scope, "/api/analytics/timeseries", {**scoped, "bucket": "day"},
                 check=_series_check(days)),
        ]
        for dimension in BREAKDOWNS:
            # Pareto leaves some businesses nearly empty: all businesses must show at least two of them.
            least = BREAKDOWN_VALUES.get(dimension, 2 if scope == "all" else 1)
            cases.append(Case(f"breakdown by {dimension}", scope, f"/api/analytics/breakdown/{dimension}",
                              scoped, check=_breakdown_check(least)))
        cases += [
            Case("peak hours", scope, "/api/analytics/peak-hours", scoped, check=_peak_check),
            Case("summary, model filter", scope, "/api/analytics/summary", {**scoped, "model": "gpt-4o-mini"},
                 check=_summary_check),
            Case("summary, intent filter", scope, "/api/analytics/summary", {**scoped, "intent": "booking"},
                 check=_summary_check),
            Case("summary, prompt version filter", scope, "/api/analytics/summary",
                 {**scoped, "prompt_version": "v2"}, check=_summary_check),
        ]
    return cases


def measure(lane: Lane, case: Case, runs: int, budget: float) -> Timing:
    """One untimed request, then `runs` timed ones, or fewer once they have taken `budget` seconds."""
    timing = Timing(case.name, case.scope, case.target_ms)
    try:
        first = lane.get(case.path, case.params)
        if first.status != 200:
            timing.failure = f"HTTP {first.status}: {first.body[:300].decode(errors='replace')}"
            return timing
        problem = case.check(first.json()) if case.check else None
        if problem:
            timing.failure = f"wrong answer: {problem}"
            return timing
        spent = 0.0
        for _ in range(runs):
            answer = lane.get(case.path, case.params)
            if answer.status != 200:
                timing.failure = f"HTTP {answer.status} on a repeat: {answer.body[:300].decode(errors='replace')}"
                return timing
            timing.times.append(answer.ms)
            spent += answer.ms / 1000
            if spent > budget and len(timing.times) < runs:
                timing.note = f"{len(timing.times)} of {runs} runs (over the {budget:.0f} s budget)"
                break
    except (OSError, http.client.HTTPException) as exc:
        lane.close()
        timing.failure = f"no answer: {type(exc).__name__}: {exc}"
    return timing


# --- The dashboard


@dataclass(frozen=True)
class DashboardCalls:
    """The API calls dashboard.js makes for one page, in its three steps."""

    first: list[tuple[str, dict[str, str]]]  # at once: summary, previous summary, series, funnel
    intents: tuple[str, dict[str, str]]  # then: the intent breakdown
    series: str  # then, at once: the series filtered to each of the top intents
    params: dict[str, str]


def dashboard_calls(business_id: str | None, zones: dict[str, str], now: datetime) -> DashboardCalls:
    """The page's calls for the last 30 days, with the parameters the page itself computes."""
    query = {"period": "30d", **({"business": business_id} if business_id else {})}
    filters, problems = dashboard.parse_filters(query, zones=zones, now=now)
    if problems:
        raise RuntimeError(f"the dashboard refused its own filters: {problems}")
    api = dashboard.api_urls()
    params = filters.api_params()
    before, after = filters.previous()
    previous = {**params, "start": before.isoformat(), "end": after.isoformat()}
    return DashboardCalls(
        first=[(api["summary"], params), (api["summary"], previous), (api["timeseries"], params),
               (api["funnel"], params)],
        intents=(api["intents"], {**params, "limit": str(DASHBOARD_TOP_INTENTS + 1)}),
        series=api["timeseries"], params=params,
    )


def _ok(answer: Answer, path: str) -> Answer:
    if answer.status != 200:
        raise RuntimeError(f"{path} answered HTTP {answer.status}: {answer.body[:300].decode(errors='replace')}")
    return answer


def _top_intents(answer: Answer) -> list[str]:
    keys = [row["key"] for row in answer.json()["rows"]]
    return [key for key in keys if key is not None][:DASHBOARD_TOP_INTENTS]


def dashboard_one_after_another(lane: Lane, calls: DashboardCalls) -> tuple[float, int]:
    """Every call of the page on one connection, one after another; (wall ms, calls)."""
    started = time.perf_counter()
    for path, params in calls.first:
        _ok(lane.get(path, params), path)
    intents = _ok(lane.get(*calls.intents), calls.intents[0])
    top = _top_intents(intents)
    for intent in top:
        _ok(lane.get(calls.series, {**calls.params, "intent": intent}), calls.series)
    return (time.perf_counter() - started) * 1000, len(calls.first) + 1 + len(top)


def _at_once(pool: ThreadPoolExecutor, lanes: list[Lane], requests: list[tuple[str, dict[str, str]]]) -> None:
    """Each request on a connection of its own, all at once, as the script's Promise.all; back when all answered."""
    if len(requests) > len(lanes):
        raise RuntimeError(f"{len(requests)} requests at once, {len(lanes)} connections")
    futures = [pool.submit(lane.get, path, params) for lane, (path, params) in zip(lanes, requests, strict=False)]
    for future, (path, _) in zip(futures, requests, strict=True):
        _ok(future.result(), path)


def dashboard_as_browser(lanes: list[Lane], pool: ThreadPoolExecutor, calls: DashboardCalls) -> tuple[float, int]:
    """The page's calls as its script makes them: the first four at once, the breakdown, the top intents at once."""
    started = time.perf_counter()
    _at_once(pool, lanes, calls.first)
    top = _top_intents(_ok(lanes[0].get(*calls.intents), calls.intents[0]))
    _at_once(pool, lanes, [(calls.series, {**calls.params, "intent": intent}) for intent in top])
    return (time.perf_counter() - started) * 1000, len(calls.first) + 1 + len(top)


def measure_dashboard(
    name: str, scope: str, run: Callable[[], tuple[float, int]], runs: int, budget: float
) -> Timing:
    """One untimed set, then `runs` timed ones, or fewer once they have taken `budget` seconds."""
    timing = Timing(name, scope, TARGET_DASHBOARD_MS)
    try:
        _, count = run()
        for _ in range(runs):
            ms, count = run()
            timing.times.append(ms)
            if sum(timing.times) / 1000 > budget and len(timing.times) < runs:
                break
        timing.note = f"{count} calls" + (f", {len(timing.times)} of {runs} runs (over the {budget:.0f} s budget)"
                                          if len(timing.times) < runs else "")
    except (OSError, http.client.HTTPException, RuntimeError) as exc:
        timing.failure = f"{type(exc).__name__}: {exc}"
    return timing


# --- The report


def _ms(value: float | None) -> str:
    return f"{value:,.1f}" if value is not None else "-"


def print_table(title: str, timings: list[Timing]) -> None:
    print(title)
    print(f"  {'endpoint':34s} {'scope':8s} {'median ms':>10s} {'worst ms':>10s} {'target':>9s}  verdict")
    for t in timings:
        target = f"< {t.target_ms:.0f}" if t.target_ms is not None else "-"
        extra = f"  {t.failure or t.note}" if (t.failure or t.note) else ""
        print(f"  {t.name:34s} {t.scope:8s} {_ms(t.median):>10s} {_ms(t.worst):>10s} {target:>9s}  {t.verdict}{extra}")


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop what was started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--businesses", type=int, default=20)
    parser.add_argument("--days", type=int, default=30, help="the events span this many days before now")
    parser.add_argument("--runs", type=int, default=7, help="timed requests per case, after one untimed")
    parser.add_argument("--case-budget", type=float, default=20.0,
                        help="seconds of timed runs per case (a read, a dashboard set); a slower one stops early")
    parser.add_argument("--request-timeout", type=float, default=60.0,
                        help="seconds a read may take before PostgreSQL cancels it")
    parser.add_argument("--tail", type=int, default=500,
                        help="events stored through record_events after the rebuild and left unfolded")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: gunicorn.conf.py's)")
    parser.add_argument("--threads", type=int, help="threads per gunicorn worker (default: gunicorn.conf.py's)")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("bench_analytics needs PostgreSQL: run it under python -m tests.pgserver --direct -- ...")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    now = datetime.now(UTC)
    loaded = prepare(args.events, args.businesses, args.days, now)
    busiest, busiest_events = busiest_business()
    tail_rate = store_tail(busiest, args.tail, datetime.now(UTC))
    if args.tail:
        print(f"  record_events: {args.tail:,} events of {busiest} in 500-event batches, {tail_rate:,.0f} events/s "
              "(left unfolded: the reads add them as the tail)")
    zones = dict(Business.objects.values_list("id", "time_zone"))
    total = AIMetric.objects.count()
    end = datetime.now(UTC)
    in_period = AIMetric.objects.filter(timestamp__gte=end - PERIOD, timestamp__lt=end)
    print(f"{total:,} events; in the 30-day period: {in_period.count():,} for all businesses, "
          f"{in_period.filter(business_id=busiest).count():,} for the busiest, {busiest} ({zones[busiest]}, "
          f"{busiest_events:,} events in all)")
    print(f"{Conversation.objects.count():,} conversations")
    print("Rollup and sketch tables (rows):")
    for table, count in rollup_table_counts().items():
        print(f"  {table:40s} {count:>12,}")

    env = service_env(args)
    key = manage(env, "create_api_key", "--agency", "--scope", "read", "--name", "bench_analytics",
                 "--rate-limit", str(KEY_RATE_LIMIT))
    headers = {"Authorization": f"Bearer {key}"}
    http_timeout = args.request_timeout + 30
    reads: list[Timing] = []
    boards: list[Timing] = []
    with gunicorn(env) as service:
        print(f"gunicorn on 127.0.0.1:{service.port} (workers {env.get('WEB_CONCURRENCY', 'default')}, "
              f"threads {env.get('GUNICORN_THREADS', 'default')}); agency read key; "
              f"statement timeout {args.request_timeout:.0f} s")
        lane = Lane(service.port, http_timeout, headers)
        cases = read_cases(busiest, end)
        started = time.perf_counter()
        for number, case in enumerate(cases, 1):
            reads.append(measure(lane, case, args.runs, args.case_budget))
            t = reads[-1]
            print(f"  [{number}/{len(cases)}] {case.name}, {case.scope}: {_ms(t.median)} ms {t.verdict}", flush=True)
        print(f"  reads timed in {time.perf_counter() - started:.0f} s")

        lanes = [Lane(service.port, http_timeout, headers) for _ in range(6)]  # a browser's 6 per host
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
            for scope, business_id in (("busiest", busiest), ("all", None)):
                calls = dashboard_calls(business_id, zones, datetime.now(UTC))
                ways = (("dashboard, as the browser (||)", functools.partial(dashboard_as_browser, lanes, pool, calls)),
                        ("dashboard, one after another", functools.partial(dashboard_one_after_another, lane, calls)))
                for name, run in ways:
                    boards.append(measure_dashboard(name, scope, run, args.runs, args.case_budget))
                    t = boards[-1]
                    print(f"  {name}, {scope}: {_ms(t.median)} ms {t.verdict}", flush=True)
        print(f"  dashboard timed in {time.perf_counter() - started:.0f} s")
        for open_lane in [lane, *lanes]:
            open_lane.close()
        service.keep_log = any(t.failure for t in reads + boards)
        failed_log = service.log_tail() if service.keep_log else ""

    print()
    print(f"{args.events:,} events over {args.days} days, {args.businesses} businesses; "
          f"COPY {loaded.copy_rate:,.0f} events/s")
    rebuilt = "met" if loaded.rebuild_seconds < TARGET_REBUILD_S else "MISSED"
    print(f"rebuild_analytics: {loaded.rebuild_seconds:.1f} s (target < {TARGET_REBUILD_S:.0f} s) {rebuilt}")
    print_table(f"Analytics reads over HTTP, 30 days (median and worst of up to {args.runs} runs after one untimed):",
                reads)
    print_table("The dashboard's API calls, last 30 days, day buckets (|| = as its script: 4 at once, the "
                "breakdown, the top intents at once):", boards)
    timings = reads + boards
    missed = sum(t.verdict == "MISSED" for t in timings)
    failed = sum(t.verdict == "FAILED" for t in timings)
    print(f"{len(timings) - missed - failed} met, {missed} missed, {failed} failed; rebuild {rebuilt}")
    if failed_log:
        print("gunicorn's log (the end), for the failures above:")
        print(failed_log)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
