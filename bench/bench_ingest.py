"""Ingest benchmark: this service against the seed's Flask service, on one PostgreSQL, in one run.

    .venv/bin/python bench/bench_ingest.py [--seed-app PATH] [--duration 10] [--workers 4]

Measures, on a temporary PostgreSQL server this script starts:
  - POST /track, one seed-shaped event per request, 16 concurrent connections
    (wrk), for this service as production runs it (MLOPS_ENV=production, an
    ingest API key sent as a Bearer token, the key's rate limit out of reach)
    and for the seed's two forms (its Flask server, and gunicorn with 4 workers);
  - POST /track/batch in events/s (500 events a batch, 4 concurrent senders, the same key);
  - the background folder (`manage.py fold_events`) running beside the service,
    when this checkout has it: every 0.25 s of each ingest phase its backlog
    (stored events not yet folded), its lag (the age of the oldest of them) and
    its memory, then how long it takes to fold the backlog once ingest stops;
  - the raw database limits: single-row INSERTs/s (pgbench, 16 clients), and
    COPY rows/s into a bare table and into a copy of ai_metrics with all its
    indexes and constraints;
then prints the figures, each ratio or figure the issue sets a target for
beside its target. Every phase lasts at most --duration seconds (each drain at
most max(30, 3 x --duration)), and every process started here is stopped by
its process group at the end, also on Ctrl-C or SIGTERM. Needs wrk and the PostgreSQL
server binaries (Debian: wrk, postgresql). The seed's service runs in its own
virtual environment, made on first use under ~/.cache/mlops-bench/seed-venv.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import (  # noqa: E402
    create_ingest_key,
    manage,
    production_env,
    serve,
    service_command,
    stop_group,
    stop_on_sigterm,
)
from bench.senders import Answer, send_bodies  # noqa: E402
from tests.pgserver import TempPostgres, free_port  # noqa: E402

SEED_REQUIREMENTS = [
    "Flask==3.0.0", "Flask-CORS==4.0.0", "prometheus-client==0.19.0", "psycopg2-binary==2.9.13", "gunicorn==27.0.1",
]
WRK_SCRIPT = ROOT / "bench" / "track_event.lua"
KEY_VARIABLE = "MLOPS_BENCH_API_KEY"  # track_event.lua sends it as "Authorization: Bearer ..." when set
BUSINESS_ID = "test-business"  # the business of the wrk script's event
# Requests per minute for the bench's key: 16 connections come nowhere near it, so no request is throttled.
KEY_RATE_LIMIT = 2_000_000_000
TRACK = "this service, /track (production, API key)"
BATCH = "this service, /track/batch (production, API key)"
BATCH_SIZE = 500
BATCHES_PER_SECOND = 40  # bodies made per second of --duration: the batch phase's load is bounded in count too
COPY_ROWS = 500_000
SAMPLE_SECONDS = 0.25
# The targets.
TARGET_SEED_RATIO = 4.0
TARGET_P99_MS = 50.0
TARGET_BATCH_OF_COPY = 0.25
TARGET_FOLDER_LAG_S = 5.0
TARGET_FOLDER_RSS_MB = 200.0


def drain_limit(duration: int) -> float:
    """Seconds the folder gets to fold the backlog after a phase before it is reported as not drained."""
    return max(30.0, 3.0 * duration)


def psql(server: TempPostgres, sql: str, db: str = TempPostgres.DB) -> str:
    result = subprocess.run(
        [str(server.bindir / "psql"), "-h", "127.0.0.1", "-p", str(server.port), "-U", server.ROLE, "-d", db,
         "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
        capture_output=True, text=True, check=True, timeout=600,
    )
    return result.stdout.strip()


def connect(server: TempPostgres, db: str = TempPostgres.DB) -> Any:
    import psycopg2  # type: ignore[import-untyped]  # no stubs installed; the bench only connects

    return psycopg2.connect(host="127.0.0.1", port=server.port, user=server.ROLE, dbname=db)


def found(pattern: str, output: str) -> re.Match[str]:
    """The first match of `pattern` in a tool's output; RuntimeError with the output when it is not there."""
    match = re.search(pattern, output)
    if match is None:
        raise RuntimeError(f"no {pattern!r} in the output:\n{output[-2000:]}")
    return match


def check_key(url: str, api_key: str) -> None:
    """One keyed event through /track, so a service that refuses the key stops the bench instead of being timed."""
    host, port = url.split("//")[1].split(":")
    body = WRK_SCRIPT.read_text().split("wrk.body = '")[1].split("'\n")[0]
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/track", body, {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"})
    response = conn.getresponse()
    answer = response.read().decode(errors="replace")
    if response.status != 201:
        raise RuntimeError(f"this service refused the bench's ingest key: {response.status} {answer[:500]}")


def wrk(url: str, duration: int, api_key: str | None = None) -> dict[str, float]:
    env = {name: value for name, value in os.environ.items() if name != KEY_VARIABLE}
    if api_key:
        env[KEY_VARIABLE] = api_key
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{duration}s", "--latency", "-s", str(WRK_SCRIPT), url + "/track"],
        capture_output=True, text=True, check=True, env=env, timeout=duration + 60,
    ).stdout
    rps = float(found(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def latency(pct: str) -> float:
        value, unit = found(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": latency("50"), "p99": latency("99"), "errors": int(non2xx.group(1)) if non2xx else 0}


def batch_bodies(count: int) -> list[bytes]:
    """`count` batches of the wrk script's event, each event with an event_id of its own."""
    template = json.loads(WRK_SCRIPT.read_text().split("wrk.body = '")[1].split("'\n")[0])
    head, tail = json.dumps({**template, "event_id": "@"}).split('"@"')
    return [
        ('{"events":[' + ",".join(f'{head}"{uuid.uuid4()}"{tail}' for _ in range(BATCH_SIZE)) + "]}").encode()
        for _ in range(count)
    ]


def batch_created(answer: Answer) -> int:
    """The events a /track/batch answer says it created; RuntimeError for any answer but 200."""
    if answer.status != 200:
        raise RuntimeError(f"batch answered {answer.status}: {answer.body[:500].decode(errors='replace')}")
    return json.loads(answer.body)["created"]


def batch_rate(url: str, duration: int, api_key: str | None = None, senders: int = 4) -> dict[str, float]:
    """Events/s through /track/batch, bodies made before the clock starts; `seconds` is less than
    `duration` when every body was sent before the deadline."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    bodies = batch_bodies(max(40, duration * BATCHES_PER_SECOND))
    return send_bodies(url, "/track/batch", bodies, headers, batch_created, duration, senders).figures()


def pgbench_insert_rate(server: TempPostgres, duration: int) -> float:
    psql(server, "CREATE TABLE IF NOT EXISTS raw_insert (LIKE ai_metrics INCLUDING DEFAULTS)", db="seed_bench")
    script = Path(tempfile.mkstemp(suffix=".sql")[1])
    script.write_text(
        "INSERT INTO raw_insert (business_id, conversation_id, session_id, response_time_ms, success_rate, "
        "tokens_used, api_cost_usd, model_name, intent_detected, appointment_requested, appointment_booked, "
        "human_handoff_requested, user_message_length, ai_response_length, response_type) VALUES "
        "('test-business', 'c1', 's1', 1500, 1.0, 150, 0.002, 'gemini-1.5-flash', 'general', false, false, "
        "false, 45, 120, 'text');\n"
    )
    script.chmod(0o644)
    out = subprocess.run(
        [str(server.bindir / "pgbench"), "-h", "127.0.0.1", "-p", str(server.port), "-U", server.ROLE, "-n",
         "-c", "16", "-j", "2", "-T", str(duration), "-f", str(script), "seed_bench"],
        capture_output=True, text=True, check=True, timeout=duration + 60,
    ).stdout
    script.unlink()
    return float(found(r"tps = ([\d.]+)", out).group(1))


def timed_copy(conn: Any, table: str, columns: list[str], data: io.BytesIO, rows: int) -> float:
    """Rows/s of one COPY of `data` into `table`, committed."""
    started = time.monotonic()
    with conn, conn.cursor() as cursor:
        cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", data)
    return rows / (time.monotonic() - started)


def copy_rate(server: TempPostgres, rows: int = COPY_ROWS) -> float:
    """COPY into a bare table of the seed's columns: no index, no constraint but NOT NULL."""
    columns = [
        "business_id", "conversation_id", "session_id", "response_time_ms", "success_rate", "tokens_used",
        "api_cost_usd", "model_name", "intent_detected", "appointment_requested", "appointment_booked",
        "human_handoff_requested", "user_message_length", "ai_response_length", "response_type",
    ]
    line = b"test-business\tc1\ts1\t1500\t1.0\t150\t0.002\tgemini-1.5-flash\tgeneral\tf\tf\tf\t45\t120\ttext\n"
    conn = connect(server, "seed_bench")
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("CREATE TABLE raw_copy (LIKE ai_metrics INCLUDING DEFAULTS)")
        return timed_copy(conn, "raw_copy", columns, io.BytesIO(line * rows), rows)
    finally:
        conn.close()


def copy_indexed_rate(server: TempPostgres, rows: int = COPY_ROWS) -> float:
    """COPY into a copy of this service's ai_metrics with its indexes and constraints.

    Each row is the last event the service stored, with an event_id of its own,
    so the unique (business, event_id) index takes the same random keys as
    /track/batch gives it.
    """
    conn = connect(server)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("CREATE TABLE copy_target (LIKE ai_metrics INCLUDING ALL)")
            # INCLUDING ALL gives an identity column a sequence of its own; a serial column's copied default
            # would draw from ai_metrics's sequence instead.
            cursor.execute("SELECT attidentity FROM pg_attribute WHERE attrelid = 'copy_target'::regclass "
                           "AND attname = 'id'")
            if not cursor.fetchone()[0]:
                cursor.execute("ALTER TABLE copy_target ALTER COLUMN id DROP DEFAULT, "
                               "ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY")
            cursor.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                           "AND table_name = 'ai_metrics' AND column_name <> 'id' ORDER BY ordinal_position")
            names = [name for (name,) in cursor.fetchall()]
            columns = [f'"{name}"' for name in names]
            stored = io.StringIO()
            cursor.copy_expert(
                f"COPY (SELECT {', '.join(columns)} FROM ai_metrics ORDER BY id DESC LIMIT 1) TO STDOUT", stored
            )
        if not stored.getvalue():
            raise RuntimeError("the service stored no event to copy")
        fields = stored.getvalue().rstrip("\n").split("\t")
        at = names.index("event_id")
        before = "".join(f"{value}\t" for value in fields[:at])
        after = "".join(f"\t{value}" for value in fields[at + 1:]) + "\n"
        data = io.BytesIO("".join(f"{before}{uuid.uuid4()}{after}" for _ in range(rows)).encode())
        return timed_copy(conn, "copy_target", columns, data, rows)
    finally:
        conn.close()


# --- The background folder


@dataclass
class FolderSample:
    backlog: int  # highest stored event id - folded_through
    lag_seconds: float  # age of the oldest unfolded event, 0 when none
    rss_mb: float  # the folder's process group


@dataclass
class FolderPhase:
    """The folder's figures over one ingest phase and the drain after it."""

    phase: str
    events_per_s: float
    samples: list[FolderSample]
    drain_seconds: float | None  # None: backlog_left events still unfolded after the drain limit
    backlog_left: int
    running: bool  # the folder process was still alive at the end

    @property
    def max_lag(self) -> float:
        return max(sample.lag_seconds for sample in self.samples)

    @property
    def end_lag(self) -> float:
        return self.samples[-1].lag_seconds

    @property
    def max_rss(self) -> float:
        return max(sample.rss_mb for sample in self.samples)

    @property
    def max_backlog(self) -> int:
        return max(sample.backlog for sample in self.samples)


def group_rss_mb(pgid: int) -> float:
    """VmRSS summed over the processes of one process group (the folder and any children it starts)."""
    total_kb = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in Path(entry.path, "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except (OSError, ValueError, IndexError):  # the process ended while being read
            continue
    return total_kb / 1024


@dataclass
class FolderWatch:
    """Reads the folder's state row (mlops_folder_state) and memory; one thread at a time uses it."""

    server: TempPostgres
    process: subprocess.Popen
    conn: Any = field(init=False)

    def __post_init__(self) -> None:
        self.conn = connect(self.server)
        self.conn.autocommit = True

    def _one(self, sql: str) -> tuple:
        with self.conn.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()

    def sample(self) -> FolderSample:
        backlog, lag = self._one(
            "SELECT coalesce((SELECT max(id) FROM ai_metrics), 0) - f.folded_through, "
            "coalesce((SELECT extract(epoch FROM now() - m.created_at) FROM ai_metrics m "
            "          WHERE m.id > f.folded_through ORDER BY m.id LIMIT 1), 0) "
            "FROM mlops_folder_state f WHERE f.name = 'events'"
        )
        return FolderSample(max(0, int(backlog)), max(0.0, float(lag)), group_rss_mb(self.process.pid))

    def backlog(self) -> int:
        """Stored events not yet folded, counted (ids may have gaps)."""
        return self._one(
            "SELECT count(*) FROM ai_metrics WHERE id > "
            "(SELECT folded_through FROM mlops_folder_state WHERE name = 'events')"
        )[0]

    def errors(self) -> tuple[int, str]:
        return self._one("SELECT errors, last_error FROM mlops_folder_state WHERE name = 'events'")

    def wait_started(self, timeout: float = 20.0) -> bool:
        """Until the folder has taken its lease or folded once, so the first phase does not time its start-up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if self._one("SELECT holder <> '' OR folded_at IS NOT NULL FROM mlops_folder_state "
                         "WHERE name = 'events'")[0]:
                return True
            time.sleep(0.1)
        return False

    def watch(
        self, phase: str, run: Callable[[], dict[str, float]], limit: float
    ) -> tuple[dict[str, float], FolderPhase]:
        """Run one ingest phase while sampling every SAMPLE_SECONDS, then time the drain (at most `limit` s)."""
        samples: list[FolderSample] = []
        stop = threading.Event()

        def sampler() -> None:
            while True:
                samples.append(self.sample())
                if stop.wait(SAMPLE_SECONDS):
                    return

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        try:
            figures = run()
        finally:
            stop.set()
            thread.join()
        samples.append(self.sample())  # the lag when ingest stopped
        stopped = time.monotonic()
        left = self.backlog()
        while left and time.monotonic() - stopped < limit and self.process.poll() is None:
            time.sleep(0.1)
            left = self.backlog()
        drained = None if left else time.monotonic() - stopped
        rate = figures.get("events_per_s", figures.get("rps", 0.0))
        return figures, FolderPhase(phase, rate, samples, drained, left, self.process.poll() is None)

    def close(self) -> None:
        self.conn.close()


@contextmanager
def folder_process(env: dict[str, str]) -> Iterator[subprocess.Popen | None]:
    """`manage.py fold_events` in a process group of its own; None when this checkout has no such command."""
    if subprocess.run([sys.executable, "manage.py", "help", "fold_events"], cwd=ROOT, env=env,
                      capture_output=True, timeout=120).returncode != 0:
        yield None
        return
    log = tempfile.NamedTemporaryFile(prefix="bench-folder-", suffix=".log", delete=False)
    process = subprocess.Popen([sys.executable, "manage.py", "fold_events"], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        ended = process.poll()
        stop_group(process)
        if ended is not None:
            print(f"the folder exited during the run ({ended}); its log {log.name} ends:", file=sys.stderr)
            print(Path(log.name).read_text()[-3000:], file=sys.stderr)


# --- The runs


def service_env(server: TempPostgres, args: argparse.Namespace) -> dict[str, str]:
    """This service configured as production requires (metrics_app/checks.py), on the temporary server."""
    env = production_env(server.url)
    env.update(WEB_CONCURRENCY=str(args.workers), GUNICORN_THREADS=str(args.threads))
    return env


@dataclass
class IngestPhase:
    result: str  # its name in the results
    endpoint: str
    run: Callable[[], dict[str, float]]


def run_ours(
    server: TempPostgres, args: argparse.Namespace, results: dict[str, dict[str, float]]
) -> list[FolderPhase] | None:
    """This service's two ingest phases, with the folder beside it; the folder's figures, None without one."""
    env = service_env(server, args)
    manage(env, "migrate", "-v0")
    key = create_ingest_key(env, BUSINESS_ID, "bench_ingest", KEY_RATE_LIMIT)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    limit = drain_limit(args.duration)
    phases = [
        IngestPhase(TRACK, "/track", lambda: wrk(url, args.duration, key)),
        IngestPhase(BATCH, "/track/batch", lambda: batch_rate(url, args.duration, key)),
    ]
    with ExitStack() as stack:
        stack.enter_context(serve(service_command(port), env, url, ROOT))
        check_key(url, key)
        folder = stack.enter_context(folder_process(env))
        if folder is None:
            for phase in phases:
                results[phase.result] = phase.run()
            return None
        watch = FolderWatch(server, folder)
        stack.callback(watch.close)
        if not watch.wait_started():
            print("the folder took no lease and folded nothing in 20 s; measuring anyway", file=sys.stderr)
        folded: list[FolderPhase] = []
        for phase in phases:
            results[phase.result], figures = watch.watch(phase.endpoint, phase.run, limit)
            folded.append(figures)
        errors, last_error = watch.errors()
        if errors:
            print(f"the folder recorded {errors} failed fold(s); the last: {last_error[:500]}", file=sys.stderr)
        return folded


def run_seed(server: TempPostgres, seed_app: Path, duration: int, results: dict[str, dict[str, float]]) -> None:
    venv = seed_venv()
    seed_env = {**os.environ, "DATABASE_URL": f"postgresql://{server.ROLE}@127.0.0.1:{server.port}/seed_bench"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve([str(venv / "bin" / "python"), str(seed_app)], {**seed_env, "SERVICE_PORT": str(port)}, url,
               seed_app.parent):
        results["seed, Flask server"] = wrk(url, duration)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve([str(venv / "bin" / "gunicorn"), "-w", "4", "-b", f"127.0.0.1:{port}", "seed_flask_app:app"],
               seed_env, url, seed_app.parent):
        results["seed, gunicorn -w 4"] = wrk(url, duration)


def run_raw_limits(server: TempPostgres, duration: int, results: dict[str, dict[str, float]]) -> None:
    results["PostgreSQL single-row INSERT (pgbench, 16 clients)"] = {
        "rows_per_s": pgbench_insert_rate(server, duration)
    }
    results["PostgreSQL COPY, bare table"] = {"rows_per_s": copy_rate(server)}
    results["PostgreSQL COPY, ai_metrics's indexes and constraints"] = {"rows_per_s": copy_indexed_rate(server)}


def seed_venv() -> Path:
    venv = Path.home() / ".cache" / "mlops-bench" / "seed-venv"
    if not (venv / "bin" / "gunicorn").exists():
        print(f"making the seed's virtual environment in {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *SEED_REQUIREMENTS], check=True)
    return venv


# --- The report


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def report_ingest(results: dict[str, dict[str, float]]) -> None:
    ours = results[TRACK]
    batch = results[BATCH]["events_per_s"]
    if ours["errors"]:
        print(f"WARNING: this service answered {ours['errors']:,.0f} /track requests with a non-2xx status; "
              "its requests/s count those refusals")
    p99 = f"/track p99: {ours['p99']:.1f} ms  (target < {TARGET_P99_MS:.0f} ms: {verdict(ours['p99'] < TARGET_P99_MS)})"
    if "seed, Flask server" not in results:
        print(p99)
        return
    best_seed = max(results["seed, Flask server"]["rps"], results["seed, gunicorn -w 4"]["rps"])
    ratio = ours["rps"] / best_seed
    insert = results["PostgreSQL single-row INSERT (pgbench, 16 clients)"]["rows_per_s"]
    bare = results["PostgreSQL COPY, bare table"]["rows_per_s"]
    indexed = results["PostgreSQL COPY, ai_metrics's indexes and constraints"]["rows_per_s"]
    print(f"/track / best seed form: {ratio:.2f}x  (target >= {TARGET_SEED_RATIO:.0f}x: "
          f"{verdict(ratio >= TARGET_SEED_RATIO)})")
    print(p99)
    print(f"/track / raw single-row INSERT: {ours['rps'] / insert:.2%}")
    print(f"/track/batch / COPY into a bare table: {batch / bare:.2%}")
    print(f"/track/batch / COPY into a table with ai_metrics's indexes and constraints: {batch / indexed:.2%}  "
          f"(target >= {TARGET_BATCH_OF_COPY:.0%}: {verdict(batch / indexed >= TARGET_BATCH_OF_COPY)})")


def report_folder(phases: list[FolderPhase] | None) -> None:
    if phases is None:
        print("folder: not available in this checkout (no manage.py fold_events)")
        return
    busiest = max(phases, key=lambda phase: phase.events_per_s)
    for phase in phases:
        mark = " (the highest-rate phase)" if phase is busiest else ""
        drained = (f"drained {phase.drain_seconds:.1f} s after ingest stopped" if phase.drain_seconds is not None
                   else f"NOT drained: {phase.backlog_left:,} events left")
        print(f"folder during {phase.phase}{mark}: "
              f"max lag {phase.max_lag:.2f} s (target < {TARGET_FOLDER_LAG_S:.0f} s: "
              f"{verdict(phase.max_lag < TARGET_FOLDER_LAG_S)}), lag at end {phase.end_lag:.2f} s, "
              f"max RSS {phase.max_rss:.0f} MB (target < {TARGET_FOLDER_RSS_MB:.0f} MB: "
              f"{verdict(phase.max_rss < TARGET_FOLDER_RSS_MB)}), max backlog {phase.max_backlog:,} events, "
              f"{drained}{'' if phase.running else '; the folder process had exited'}")


def report(results: dict[str, dict[str, float]], phases: list[FolderPhase] | None) -> None:
    print()
    for name, figures in results.items():
        shown = ", ".join(f"{k}={v:,.1f}" for k, v in figures.items())
        print(f"{name:55s} {shown}")
    print()
    report_ingest(results)
    report_folder(phases)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed-app", default=str(ROOT.parent / "shared" / "bench" / "seed_flask_app.py"),
                        help="the seed's Flask service (default: ../shared/bench/seed_flask_app.py)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers of this service")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker of this service")
    parser.add_argument("--only-ours", action="store_true", help="skip the seed's service and the raw limits")
    args = parser.parse_args()
    seed_app = Path(args.seed_app).resolve()
    if not seed_app.exists():
        parser.error(f"no seed service at {seed_app}")
    if not shutil.which("wrk"):
        parser.error("wrk not found (Debian package wrk)")
    stop_on_sigterm()

    server = TempPostgres.create()
    results: dict[str, dict[str, float]] = {}
    try:
        psql(server, "CREATE DATABASE seed_bench")
        phases = run_ours(server, args, results)
        if not args.only_ours:
            run_seed(server, seed_app, args.duration, results)
            run_raw_limits(server, args.duration, results)
    except RuntimeError as exc:
        print(f"bench_ingest: {exc}", file=sys.stderr)
        return 1
    finally:
        server.destroy()
    report(results, phases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
