"""Capacity figures: what one instance ingests, and what PostgreSQL spends per event in CPU, WAL and disk.

    .venv/bin/python bench/bench_capacity.py [--duration 10] [--businesses 10]
        [--storage-businesses 50 --days 30 --replies-per-day 200]

On a temporary PostgreSQL server this script starts (tests/pgserver.py), it measures:

  1. one instance as start.sh runs it: gunicorn with gunicorn.conf.py's worker
     and thread counts (WEB_CONCURRENCY and GUNICORN_THREADS when the
     environment sets them, else its defaults) and the folder (`manage.py
     fold_events`) beside it, driven for --duration s with 500-event batches
     through POST /track/batch from --senders concurrent senders, each batch of
     one of --businesses businesses with its own ingest key: events stored/s,
     and the folder's lag and backlog when ingest stops and how long it then
     took to drain;
  2. PostgreSQL CPU time per 1,000 events: utime + stime of the postmaster and
     of every process it started (/proc/<pid>/stat; the postmaster's cutime and
     cstime hold the backends that ended), and
  3. WAL bytes per 1,000 events (pg_current_wal_lsn() before and after),
     for the instance as a whole (phase 1), for ingest alone (the folder
     stopped, a second --duration s of batches) and for folding alone (the
     folder started again on that backlog, until it is drained); the CPU time of
     gunicorn's and the folder's process groups, and of this script's senders,
     beside them. Each phase starts after a CHECKPOINT, so each pays the
     full-page images that follow one;
  4. storage: --storage-businesses x --days x --replies-per-day events COPYed
     into a database of their own (the indexes in place, as ingest fills them),
     then `manage.py rebuild_analytics`; pg_total_relation_size of each table
     (summed over its partitions when it is partitioned), per million events,
     without the derived tables (raw events and their dedupe keys) and with them
     (conversations, rollups, latency sketches, the /metrics totals).

The figures are printed in one table with their units and where each comes from.
Every phase is bounded (ingest by --duration, a drain by max(120, 6 x --duration)
s); every process started here is stopped by its process group at the end, also
on Ctrl-C or SIGTERM. Needs the PostgreSQL server binaries (Debian: postgresql).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_ingest import FolderPhase, FolderWatch, connect, folder_process, psql  # noqa: E402
from bench.processes import manage, production_env, serve, service_command, stop_on_sigterm  # noqa: E402
from bench.senders import Answer, Body, Sent, send_bodies  # noqa: E402
from tests.pgserver import TempPostgres, free_port  # noqa: E402

BATCH_SIZE = 500  # the batch endpoint's limit, and what a chat app's client flushes at once
# Requests per minute for the bench's keys: the senders come nowhere near it, so no batch is throttled.
KEY_RATE_LIMIT = 2_000_000_000
STORAGE_DB = "capacity_storage"
COPY_CHUNK = 50_000

# The tables of metrics_app/models.py the storage figures are about. A table that is not there (the dedupe
# keys' table, say) is left out; a table that is partitioned is summed over its partitions.
RAW_TABLES = ("ai_metrics", "mlops_event_key")
DERIVED_TABLES = (
    "mlops_conversation", "mlops_event_rollup", "mlops_conversation_rollup", "mlops_latency_sketch",
    "mlops_metric_totals",
)
ROLLUP_TABLES = ("mlops_event_rollup", "mlops_conversation_rollup", "mlops_latency_sketch", "mlops_metric_totals")


# --- The event mix, one definition for the live batches and the COPYed history


@dataclass(frozen=True)
class EventMix:
    """What each reply is made of: conversations of 1-8 turns, every dimension with several values."""

    models: tuple[str, ...] = ("gemini-1.5-flash", "gemini-2.0-flash", "gpt-4o-mini", "claude-3-5-haiku")
    intents: tuple[str, ...] = ("booking", "pricing", "hours", "location", "cancellation", "general",
                                "complaint", "services")
    replies: tuple[str, ...] = ("text", "booking_link", "faq_answer")
    reply_weights: tuple[int, ...] = (80, 12, 8)
    prompts: tuple[str, ...] = ("v1", "v2", "v3")
    kbs: tuple[str, ...] = ("kb-2026-10", "kb-2026-11")
    max_turns: int = 8

    @property
    def mean_turns(self) -> float:
        return (1 + self.max_turns) / 2

    def describe(self) -> str:
        return (f"conversations of 1-{self.max_turns} turns (mean {self.mean_turns:.1f}), {len(self.models)} models, "
                f"{len(self.intents)} intents, {len(self.replies)} reply types + error/handoff, "
                f"{len(self.prompts)} prompt versions, {len(self.kbs)} KB versions; "
                "3% failed, 2% handed off, 35% of conversations ask for an appointment")

    def conversation(self, rng: random.Random, business: str, conversation: str, start: datetime) -> list[dict]:
        """One conversation's replies, as the chat app's client sends them."""
        model, prompt, kb = rng.choice(self.models), rng.choice(self.prompts), rng.choice(self.kbs)
        requested = rng.random() < 0.35
        turns = rng.randint(1, self.max_turns)
        events = []
        moment = start
        for turn in range(turns):
            tokens_in, tokens_out = rng.randint(400, 3000), rng.randint(20, 400)
            failed, handoff = rng.random() < 0.03, rng.random() < 0.02
            reply = "error" if failed else "handoff" if handoff else rng.choices(self.replies, self.reply_weights)[0]
            events.append({
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "business_id": business, "conversation_id": conversation, "session_id": f"s-{conversation}",
                "response_time_ms": min(int(rng.lognormvariate(7.0, 0.6)), 3_600_000),
                "success_rate": 0 if failed else 1, "tokens_used": tokens_in + tokens_out,
                "input_tokens": tokens_in, "output_tokens": tokens_out,
                "api_cost_usd": round((tokens_in + tokens_out) * 0.0000002, 6), "model_name": model,
                "intent_detected": rng.choice(self.intents), "appointment_requested": requested and turn == 0,
                "appointment_booked": requested and turn == turns - 1 and rng.random() < 0.5,
                "human_handoff_requested": handoff, "response_type": reply, "prompt_version": prompt,
                "kb_version": kb, "user_message_length": rng.randint(5, 400),
                "ai_response_length": rng.randint(20, 1200), "timestamp": moment.isoformat(),
            })
            moment += timedelta(seconds=rng.randint(20, 90))
        return events


MIX = EventMix()


def business_ids(count: int, prefix: str) -> list[str]:
    return [f"{prefix}-{n:04d}" for n in range(count)]


def live_batches(keys: dict[str, str], seed: int) -> Iterator[Body]:
    """/track/batch bodies for ever, the businesses in turn, each of BATCH_SIZE replies of the last minutes,
    sent with its business's key."""
    rng = random.Random(seed)
    businesses = sorted(keys)
    made = 0
    while True:
        business = businesses[made % len(businesses)]
        events: list[dict] = []
        while len(events) < BATCH_SIZE:
            start = datetime.now(UTC) - timedelta(minutes=rng.randint(1, 10))
            events += MIX.conversation(rng, business, f"live-{seed}-{made}-{len(events)}", start)
        made += 1
        yield Body(json.dumps({"events": events[:BATCH_SIZE]}).encode(), {"Authorization": f"Bearer {keys[business]}"})


@dataclass(frozen=True)
class StorageMix:
    """The history loaded for the storage figures: the same replies every day for every business."""

    businesses: int
    days: int
    replies_per_day: int
    open_hour: int = 8  # replies fall between these UTC hours: 48 of the day's 96 quarter-hour buckets
    close_hour: int = 20

    @property
    def events(self) -> int:
        return self.businesses * self.days * self.replies_per_day

    def describe(self) -> str:
        return (f"{self.businesses} businesses x {self.days} days x {self.replies_per_day} replies a day "
                f"(~{self.replies_per_day / MIX.mean_turns:.0f} conversations a business a day), "
                f"{self.open_hour:02d}:00-{self.close_hour:02d}:00 UTC")


COPY_COLUMNS = (
    "event_id", "business_id", "conversation_id", "session_id", "response_time_ms", "success_rate", "tokens_used",
    "input_tokens", "output_tokens", "api_cost_usd", "model_name", "intent_detected", "appointment_requested",
    "appointment_booked", "human_handoff_requested", "response_type", "prompt_version", "kb_version",
    "user_message_length", "ai_response_length", "timestamp", "created_at", "cost_usd", "cost_basis",
)


def copy_line(event: dict, created: str) -> str:
    # The client's cost is the analytics cost ("client"): repricing is not what the storage figures measure.
    values = {**event, "created_at": created, "cost_usd": event["api_cost_usd"], "cost_basis": "client"}
    return "\t".join(
        ("t" if value else "f") if isinstance(value, bool) else str(value)
        for value in (values[column] for column in COPY_COLUMNS)
    ) + "\n"


def history_lines(mix: StorageMix, now: datetime, seed: int) -> Iterator[str]:
    """COPY lines of `mix`: each business's replies of each day, in conversations, in business hours."""
    rng = random.Random(seed)
    created = now.isoformat()
    window = (mix.close_hour - mix.open_hour) * 3600
    first_day = (now - timedelta(days=mix.days)).replace(hour=0, minute=0, second=0, microsecond=0)
    for day in range(mix.days):
        opens = first_day + timedelta(days=day, hours=mix.open_hour)
        for business in business_ids(mix.businesses, "store"):
            made = 0
            while made < mix.replies_per_day:
                start = opens + timedelta(seconds=rng.randrange(window))
                events = MIX.conversation(rng, business, f"c-{day}-{made}", start)[: mix.replies_per_day - made]
                for event in events:
                    yield copy_line(event, created)
                made += len(events)


# --- Reading CPU time and WAL


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (the state is [0], ppid [1], pgrp [2]); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(leader: int, member: Callable[[list[str]], bool]) -> float:
    """utime + stime of `leader`, its ended children (cutime + cstime), and of every live process `member` picks."""
    ticks = 0
    own = _stat(leader)
    if own is not None:
        ticks += sum(int(value) for value in own[11:15])  # utime, stime, cutime, cstime
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == leader:
            continue
        fields = _stat(int(entry.name))
        if fields is not None and member(fields):
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def started_by(parent: int) -> Callable[[list[str]], bool]:
    return lambda fields: int(fields[1]) == parent


def in_group(pgid: int) -> Callable[[list[str]], bool]:
    return lambda fields: int(fields[2]) == pgid


def postmaster_pid(server: TempPostgres) -> int:
    return int((server.datadir / "postmaster.pid").read_text().split("\n", 1)[0])


@dataclass(frozen=True)
class Reading:
    at: float
    wal_lsn: str
    cpu: dict[str, float]  # seconds by process: "postgres", "gunicorn", "folder", "bench"


@dataclass(frozen=True)
class Usage:
    """What one phase cost, from two readings, for `events` events."""

    phase: str
    events: int
    seconds: float
    wal_bytes: int
    cpu: dict[str, float]

    def per_thousand(self, value: float) -> float:
        return value / self.events * 1000 if self.events else float("nan")


@dataclass
class Meter:
    server: TempPostgres
    groups: dict[str, subprocess.Popen] = field(default_factory=dict)  # process groups by name
    conn: Any = field(init=False)

    def __post_init__(self) -> None:
        self.conn = connect(self.server)
        self.conn.autocommit = True

    def one(self, sql: str, params: tuple = ()) -> Any:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()[0]

    def checkpoint(self) -> None:
        self.one("CHECKPOINT; SELECT 1")

    def read(self) -> Reading:
        postmaster = postmaster_pid(self.server)
        cpu = {"postgres": cpu_seconds(postmaster, started_by(postmaster))}
        for name, process in self.groups.items():
            cpu[name] = cpu_seconds(process.pid, in_group(process.pid))
        times = os.times()
        cpu["bench"] = times.user + times.system
        return Reading(time.monotonic(), self.one("SELECT pg_current_wal_lsn()::text"), cpu)

    def usage(self, phase: str, before: Reading, after: Reading, events: int) -> Usage:
        wal = int(self.one("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (after.wal_lsn, before.wal_lsn)))
        cpu = {name: after.cpu[name] - before.cpu[name] for name in after.cpu if name in before.cpu}
        return Usage(phase, events, after.at - before.at, wal, cpu)

    def close(self) -> None:
        self.conn.close()


# --- Phases 1-3: one instance, ingest alone, folding alone


def create_keys(env: dict[str, str], businesses: list[str]) -> dict[str, str]:
    """An ingest key for each business (made if missing), in one manage.py process: {business: raw key}."""
    code = (
        "import json\n"
        "from metrics_app.keys import services\n"
        "from metrics_app.models import Business\n"
        "keys = {}\n"
        f"for business_id in {businesses!r}:\n"
        "    business, _ = Business.objects.get_or_create(id=business_id)\n"
        "    keys[business_id] = services.create_api_key(business=business, name='bench_capacity', "
        f"can_ingest=True, rate_limit_per_minute={KEY_RATE_LIMIT})[1]\n"
        "print(json.dumps(keys))\n"
    )
    return json.loads(manage(env, "shell", "-c", code).splitlines()[-1])


def batch_created(answer: Answer) -> int:
    """The events a /track/batch answer says it stored; RuntimeError for any answer but 200."""
    if answer.status != 200:
        raise RuntimeError(f"batch answered {answer.status}: {answer.body[:500].decode(errors='replace')}")
    return int(json.loads(answer.body)["created"])


@dataclass
class Load:
    """Batches of every business through /track/batch, each with its business's key."""

    url: str
    keys: dict[str, str]
    senders: int
    runs: int = 0

    def send(self, duration: float) -> Sent:
        self.runs += 1  # each run its own event ids and conversations
        return send_bodies(self.url, "/track/batch", live_batches(self.keys, self.runs),
                           {"Content-Type": "application/json"}, batch_created, duration, self.senders)


@dataclass(frozen=True)
class InstanceRun:
    workers: int
    threads: int
    sent: Sent
    folder: FolderPhase
    usages: list[Usage]
    live_table_bytes: int  # ai_metrics (and partitions) after the three phases
    live_events: int


def gunicorn_workers(master: subprocess.Popen) -> int:
    """gunicorn's workers: the processes its master started."""
    count = 0
    for entry in os.scandir("/proc"):
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        count += fields is not None and int(fields[1]) == master.pid
    return count


def folded_all(meter: Meter) -> bool:
    """Every stored event folded: two index look-ups, cheap enough to ask twice a second while measuring."""
    return bool(meter.one("SELECT f.folded_through >= (SELECT coalesce(max(id), 0) FROM ai_metrics) "
                           "FROM mlops_folder_state f WHERE f.name = 'events'"))


def unfolded(meter: Meter) -> int:
    return int(meter.one("SELECT count(*) FROM ai_metrics WHERE id > "
                          "(SELECT folded_through FROM mlops_folder_state WHERE name = 'events')"))


def instance_phase(meter: Meter, load: Load, env: dict[str, str], server: TempPostgres, duration: float,
                   limit: float) -> tuple[Sent, FolderPhase, Usage]:
    """Phase 1: batches with the folder beside the service, then its drain; the whole is one usage."""
    with folder_process(env) as folder:
        if folder is None:
            raise RuntimeError("this checkout has no manage.py fold_events")
        watch = FolderWatch(server, folder)
        try:
            if not watch.wait_started():
                raise RuntimeError("the folder took no lease in 20 s")
            meter.groups["folder"] = folder
            load.send(min(3.0, duration))  # warm-up: the workers' first requests, the folder's first folds
            deadline = time.monotonic() + limit
            while not folded_all(meter) and time.monotonic() < deadline:
                time.sleep(0.2)
            meter.checkpoint()
            before = meter.read()
            runs: list[Sent] = []

            def run() -> dict[str, float]:
                runs.append(load.send(duration))
                return runs[-1].figures()

            _, folded = watch.watch("/track/batch", run, limit)
            after = meter.read()
            errors, last_error = watch.errors()
        finally:
            watch.close()
            meter.groups.pop("folder", None)
    if errors:
        print(f"the folder recorded {errors} failed fold(s); the last: {last_error[:500]}", file=sys.stderr)
    return runs[0], folded, meter.usage("instance: ingest + folder", before, after, runs[0].events)


def fold_phase(meter: Meter, env: dict[str, str], limit: float) -> Usage:
    """Phase 3: the folder started on the backlog ingest alone left, until it is folded (at most `limit` s)."""
    backlog = unfolded(meter)
    meter.checkpoint()
    before = meter.read()
    with folder_process(env) as folder:
        if folder is None:
            raise RuntimeError("this checkout has no manage.py fold_events")
        meter.groups["folder"] = folder
        try:
            before = Reading(before.at, before.wal_lsn, {**before.cpu, "folder": 0.0})  # counted from its start
            deadline = time.monotonic() + limit
            while not folded_all(meter) and time.monotonic() < deadline:
                time.sleep(0.5)
            after = meter.read()
        finally:
            meter.groups.pop("folder", None)
    left = unfolded(meter)
    if left:
        print(f"folding alone: {left:,} events still unfolded after {limit:.0f} s; the figures count what was "
              "folded", file=sys.stderr)
    return meter.usage("folding alone (folder from its start)", before, after, backlog - left)


def run_instance(server: TempPostgres, meter: Meter, args: argparse.Namespace) -> InstanceRun:
    """Phases 1-3 on the server's own database, one instance of the service serving it."""
    env = production_env(server.url)
    manage(env, "migrate", "-v0")
    keys = create_keys(env, business_ids(args.businesses, "live"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    limit = max(120.0, 6.0 * args.duration)  # the folder drains a few times slower than ingest fills
    load = Load(url, keys, args.senders)
    with serve(service_command(port), env, url, ROOT) as gunicorn:
        meter.groups["gunicorn"] = gunicorn
        workers = gunicorn_workers(gunicorn)
        sent, folded, together = instance_phase(meter, load, env, server, args.duration, limit)
        print(f"  instance: {sent.events_per_s:,.0f} events/s; folder lag at end {folded.end_lag:.2f} s", flush=True)

        meter.checkpoint()  # phase 2: the folder stopped, so ingest alone
        before = meter.read()
        alone = load.send(args.duration)
        ingest = meter.usage("ingest alone (folder stopped)", before, meter.read(), alone.events)
        print(f"  ingest alone: {alone.events_per_s:,.0f} events/s", flush=True)
        fold = fold_phase(meter, env, limit)
        print(f"  folding alone: {fold.events / fold.seconds:,.0f} events/s", flush=True)
        meter.groups.pop("gunicorn")
    threads = int(env.get("GUNICORN_THREADS") or 4)  # gunicorn.conf.py's default
    events = int(meter.one("SELECT count(*) FROM ai_metrics"))
    return InstanceRun(workers, threads, sent, folded, [together, ingest, fold],
                       relation_sizes(meter.conn, ("ai_metrics",))["ai_metrics"].total, events)


# --- Phase 4: storage


@dataclass(frozen=True)
class Size:
    table_bytes: int  # heap and TOAST
    index_bytes: int
    rows: int

    @property
    def total(self) -> int:
        return self.table_bytes + self.index_bytes


def relation_sizes(conn: Any, names: tuple[str, ...]) -> dict[str, Size]:
    """Sizes of the tables of `names` that exist; a partitioned table is summed over its leaf partitions."""
    sizes = {}
    with conn.cursor() as cursor:
        for name in names:
            cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (name,))
            found = cursor.fetchone()
            if found is None:
                continue
            if found[0] == "p":
                cursor.execute("SELECT coalesce(sum(pg_table_size(relid)), 0), coalesce(sum(pg_indexes_size(relid)), 0)"
                               " FROM pg_partition_tree(%s::regclass) WHERE isleaf", (name,))
            else:
                cursor.execute("SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass)", (name, name))
            table_bytes, index_bytes = cursor.fetchone()
            cursor.execute(f'SELECT count(*) FROM "{name}"')
            sizes[name] = Size(int(table_bytes), int(index_bytes), int(cursor.fetchone()[0]))
    return sizes


@dataclass(frozen=True)
class StorageRun:
    mix: StorageMix
    copy_events_per_s: float
    rebuild_seconds: float
    raw: dict[str, Size]  # the raw tables after the COPY, before any rollup
    derived: dict[str, Size]  # the derived tables after rebuild_analytics
    business_days: int  # (business, UTC day) pairs with events


def run_storage(server: TempPostgres, mix: StorageMix) -> StorageRun:
    """Phase 4: `mix` COPYed into a database of its own with the indexes in place, then rebuild_analytics."""
    psql(server, f"CREATE DATABASE {STORAGE_DB}")
    env = production_env(server.url.rsplit("/", 1)[0] + f"/{STORAGE_DB}")
    manage(env, "migrate", "-v0")
    manage(env, "shell", "-c", "from metrics_app.models import Business\n"
           f"Business.objects.bulk_create([Business(id=b) for b in {business_ids(mix.businesses, 'store')!r}], "
           "ignore_conflicts=True)")
    conn = connect(server, STORAGE_DB)
    try:
        print(f"  storage: COPY of {mix.events:,} events ({mix.describe()})", flush=True)
        lines = history_lines(mix, datetime.now(UTC), seed=4)
        copy_seconds = 0.0
        while True:
            chunk = "".join(line for _, line in zip(range(COPY_CHUNK), lines, strict=False))
            if not chunk:
                break
            started = time.perf_counter()
            with conn, conn.cursor() as cursor:
                cursor.copy_expert(f"COPY ai_metrics ({', '.join(COPY_COLUMNS)}) FROM STDIN", io.StringIO(chunk))
            copy_seconds += time.perf_counter() - started
        with conn, conn.cursor() as cursor:
            # A bulk load's events need their dedupe keys, which the ingest claims for each event it stores.
            cursor.execute("SELECT to_regclass('mlops_event_key') IS NOT NULL")
            if cursor.fetchone()[0]:
                cursor.execute("INSERT INTO mlops_event_key (business_id, event_id) "
                               "SELECT business_id, event_id FROM ai_metrics")
        raw = relation_sizes(conn, RAW_TABLES)
        started = time.perf_counter()
        manage(env, "rebuild_analytics", "--quiet-progress")
        rebuild_seconds = time.perf_counter() - started
        derived = relation_sizes(conn, DERIVED_TABLES)
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM (SELECT DISTINCT business_id, (timestamp AT TIME ZONE 'UTC')::date "
                           "FROM ai_metrics) pairs")
            business_days = int(cursor.fetchone()[0])
        conn.commit()
    finally:
        conn.close()
    return StorageRun(mix, mix.events / copy_seconds, rebuild_seconds, raw, derived, business_days)


# --- The report


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    source: str
    decimals: int = 0


def instance_figures(run: InstanceRun, args: argparse.Namespace) -> list[Figure]:
    sent, folder = run.sent, run.folder
    shape = (f"phase 1: {args.senders} senders, {args.businesses} businesses, "
             f"{run.workers} workers x {run.threads} threads")
    drained = folder.drain_seconds if folder.drain_seconds is not None else float("nan")
    return [
        Figure("events stored/s, one instance (/track/batch, 500 a batch)", sent.events_per_s, "events/s",
               f"{shape}; {sent.events:,} events in {sent.seconds:.1f} s"),
        Figure("batch latency p50 / p99", sent.percentile_ms(50), "ms", f"p99 {sent.percentile_ms(99):.0f} ms"),
        Figure("folder lag when ingest stopped", folder.end_lag, "s",
               "age of the oldest unfolded event (mlops_folder_state, ai_metrics)", 2),
        Figure("folder lag, highest during ingest", folder.max_lag, "s", "sampled every 0.25 s", 2),
        Figure("folder backlog, highest during ingest", folder.max_backlog, "events", "max(id) - folded_through"),
        Figure("folder drained after ingest stopped", drained, "s",
               "nan: not drained" if folder.drain_seconds is None else "every stored event folded", 1),
    ]


def usage_figures(usage: Usage) -> list[Figure]:
    phase = usage.phase
    rows = [
        Figure(f"PostgreSQL CPU per 1,000 events, {phase}", usage.per_thousand(usage.cpu["postgres"]) * 1000,
               "CPU ms", f"/proc stat of the postmaster and its children; {usage.events:,} events, "
               f"{usage.seconds:.1f} s"),
        Figure(f"WAL per 1,000 events, {phase}", usage.per_thousand(usage.wal_bytes) / 1024, "KiB",
               f"pg_wal_lsn_diff; {usage.wal_bytes / 2**20:,.0f} MiB in all", 1),
    ]
    for name in ("gunicorn", "folder"):
        if name in usage.cpu:
            rows.append(Figure(f"{name} CPU per 1,000 events, {phase}", usage.per_thousand(usage.cpu[name]) * 1000,
                               "CPU ms", f"/proc stat of its process group ({usage.cpu[name]:.1f} CPU s)"))
    rows.append(Figure(f"PostgreSQL cores busy, {phase}", usage.cpu["postgres"] / usage.seconds, "cores",
                       f"CPU s / wall s; this script (senders, sampling) {usage.cpu['bench'] / usage.seconds:.2f} "
                       "cores", 2))
    return rows


def storage_figures(run: StorageRun) -> list[Figure]:
    events = run.mix.events
    source = f"phase 4: {run.mix.describe()}"

    def per_million(size: int) -> float:
        return size / events * 1e6 / 2**20

    rows = []
    for name, size in {**run.raw, **run.derived}.items():
        rows.append(Figure(f"{name} per million events (table + indexes)", per_million(size.total), "MiB",
                           f"{size.rows:,} rows; table {size.table_bytes / 2**20:,.1f} MiB, indexes "
                           f"{size.index_bytes / 2**20:,.1f} MiB", 1))
    raw = sum(size.total for size in run.raw.values())
    derived = sum(size.total for size in run.derived.values())
    rollups = sum(size.total for name, size in run.derived.items() if name in ROLLUP_TABLES)
    conversations = run.derived.get("mlops_conversation")
    rows += [
        Figure("storage per million events, without rollups (raw)", per_million(raw), "MiB",
               " + ".join(run.raw), 1),
        Figure("storage per million events, with rollups and conversations", per_million(raw + derived), "MiB",
               f"{source}", 1),
        Figure("rollups + sketches + totals per business-day", rollups / max(1, run.business_days) / 1024, "KiB",
               f"{run.business_days:,} business-days with events; {run.mix.replies_per_day} replies each", 1),
    ]
    if conversations is not None and conversations.rows:
        rows.append(Figure("bytes per conversation (mlops_conversation)", conversations.total / conversations.rows,
                           "bytes", f"{conversations.rows:,} conversations"))
    rows += [
        Figure("COPY into ai_metrics with its indexes", run.copy_events_per_s, "events/s", "the load, not a target"),
        Figure("rebuild_analytics", run.rebuild_seconds, "s", f"{events:,} events", 1),
    ]
    return rows


def print_table(figures: list[Figure]) -> None:
    width = max(len(figure.name) for figure in figures)
    print(f"{'figure':{width}s}  {'value':>12s}  {'unit':9s}  from")
    for figure in figures:
        print(f"{figure.name:{width}s}  {figure.value:>12,.{figure.decimals}f}  {figure.unit:9s}  {figure.source}")


def commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return result.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return f"{os.cpu_count()} cores ({model}), {memory:.0f} GiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds of batches in each ingest phase")
    parser.add_argument("--senders", type=int, default=4, help="concurrent /track/batch senders")
    parser.add_argument("--businesses", type=int, default=10, help="businesses of the live batches, each its key")
    parser.add_argument("--storage-businesses", type=int, default=50)
    parser.add_argument("--days", type=int, default=30, help="days of history loaded for the storage figures")
    parser.add_argument("--replies-per-day", type=int, default=200, help="replies a business a day in the history")
    parser.add_argument("--skip-storage", action="store_true", help="phases 1-3 only")
    args = parser.parse_args()
    stop_on_sigterm()
    mix = StorageMix(args.storage_businesses, args.days, args.replies_per_day)
    started = datetime.now(UTC)
    load_before = os.getloadavg()

    server = TempPostgres.create()
    meter = Meter(server)
    try:
        version = meter.one("SHOW server_version")
        print(f"PostgreSQL {version} on 127.0.0.1:{server.port}; phases 1-3 ({args.duration:.0f} s of batches each)",
              flush=True)
        instance = run_instance(server, meter, args)
        storage = None if args.skip_storage else run_storage(server, mix)
    except RuntimeError as exc:
        print(f"bench_capacity: {exc}", file=sys.stderr)
        return 1
    finally:
        meter.close()
        server.destroy()

    figures = instance_figures(instance, args)
    for usage in instance.usages:
        figures += usage_figures(usage)
    fold = instance.usages[-1]
    figures.append(Figure("events folded/s, folding alone", fold.events / fold.seconds, "events/s",
                          "phase 3: the backlog of phase 2, timed from the folder's start"))
    figures.append(Figure("ai_metrics as ingested, bytes per event", instance.live_table_bytes / instance.live_events,
                          "bytes", f"table + indexes after phases 1-3, {instance.live_events:,} events"))
    if storage is not None:
        figures += storage_figures(storage)
    print()
    print(f"{started:%Y-%m-%d %H:%M} UTC, commit {commit()}, {machine()}, PostgreSQL {version} "
          f"(tests/pgserver.py: shared_buffers 256MB, fsync on); load average before {load_before[0]:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")
    print(f"live batches: {MIX.describe()}")
    print_table(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
