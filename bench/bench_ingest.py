"""Ingest benchmark: this service against the seed's Flask service, on one PostgreSQL, in one run.

    .venv/bin/python bench/bench_ingest.py [--seed-app PATH] [--duration 10] [--workers 4]

Measures, on a temporary PostgreSQL server this script starts:
  - POST /track, one seed-shaped event per request, 16 concurrent connections
    (wrk), for this service (gunicorn) and for the seed's two forms (its Flask
    server, and gunicorn with 4 workers);
  - POST /track/batch in events/s (500 events a batch, 4 concurrent senders);
  - the raw database limits: single-row INSERTs/s (pgbench, 16 clients) and
    COPY rows/s;
then prints the figures and the ratios the targets are stated in. Needs wrk
and the PostgreSQL server binaries (Debian: wrk, postgresql). The seed's
service runs in its own virtual environment, made on first use under
~/.cache/mlops-bench/seed-venv.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.pgserver import TempPostgres, free_port  # noqa: E402

SEED_REQUIREMENTS = [
    "Flask==3.0.0", "Flask-CORS==4.0.0", "prometheus-client==0.19.0", "psycopg2-binary==2.9.13", "gunicorn==27.0.1",
]
WRK_SCRIPT = ROOT / "bench" / "track_event.lua"
BATCH_SIZE = 500


def psql(server: TempPostgres, sql: str, db: str = TempPostgres.DB) -> str:
    result = subprocess.run(
        [str(server.bindir / "psql"), "-h", "127.0.0.1", "-p", str(server.port), "-U", server.ROLE, "-d", db,
         "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
        capture_output=True, text=True, check=True,
    )
    return result.stdout.strip()


def wait_http(url: str, timeout: float = 60.0) -> None:
    host, port = url.split("//")[1].split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not come up")


@contextmanager
def serve(command: list[str], env: dict[str, str], url: str, cwd: Path) -> Iterator[None]:
    log = tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log", delete=False)
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(url)
        yield
    except Exception:
        print(Path(log.name).read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def wrk(url: str, duration: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{duration}s", "--latency", "-s", str(WRK_SCRIPT), url + "/track"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def latency(pct: str) -> float:
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": latency("50"), "p99": latency("99"), "errors": int(non2xx.group(1)) if non2xx else 0}


def batch_rate(url: str, duration: int, senders: int = 4) -> float:
    """Events/s through /track/batch, bodies made before the clock starts."""
    host, port = url.split("//")[1].split(":")
    template = json.loads(WRK_SCRIPT.read_text().split("wrk.body = '")[1].split("'\n")[0])
    bodies: list[bytes] = []
    for _ in range(max(40, duration * 20)):
        events = [{**template, "event_id": str(uuid.uuid4())} for _ in range(BATCH_SIZE)]
        bodies.append(json.dumps({"events": events}).encode())
    stored = 0
    lock = threading.Lock()
    deadline = time.monotonic() + duration
    queue = iter(bodies)

    def sender() -> None:
        nonlocal stored
        while time.monotonic() < deadline:
            with lock:
                body = next(queue, None)
            if body is None:
                return
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.request("POST", "/track/batch", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            if response.status != 200:
                raise RuntimeError(f"batch answered {response.status}: {answer}")
            with lock:
                stored += answer["created"]

    started = time.monotonic()
    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return stored / (time.monotonic() - started)


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
        capture_output=True, text=True, check=True,
    ).stdout
    return float(re.search(r"tps = ([\d.]+)", out).group(1))


def copy_rate(server: TempPostgres, rows: int = 500_000) -> float:
    import psycopg2

    line = "test-business\tc1\ts1\t1500\t1.0\t150\t0.002\tgemini-1.5-flash\tgeneral\tf\tf\tf\t45\t120\ttext\n"
    data = io.StringIO(line * rows)
    conn = psycopg2.connect(host="127.0.0.1", port=server.port, user=server.ROLE, dbname="seed_bench")
    with conn, conn.cursor() as cursor:
        cursor.execute("CREATE TABLE raw_copy (LIKE ai_metrics INCLUDING DEFAULTS)")
    started = time.monotonic()
    with conn, conn.cursor() as cursor:
        cursor.copy_expert(
            "COPY raw_copy (business_id, conversation_id, session_id, response_time_ms, success_rate, tokens_used, "
            "api_cost_usd, model_name, intent_detected, appointment_requested, appointment_booked, "
            "human_handoff_requested, user_message_length, ai_response_length, response_type) FROM STDIN",
            data,
        )
    elapsed = time.monotonic() - started
    conn.close()
    return rows / elapsed


def seed_venv() -> Path:
    venv = Path.home() / ".cache" / "mlops-bench" / "seed-venv"
    if not (venv / "bin" / "gunicorn").exists():
        print(f"making the seed's virtual environment in {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *SEED_REQUIREMENTS], check=True)
    return venv


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

    server = TempPostgres.create()
    results: dict[str, dict[str, float]] = {}
    try:
        psql(server, "CREATE DATABASE seed_bench")
        ours_url = f"postgresql://{server.ROLE}@127.0.0.1:{server.port}/{server.DB}"
        env = {**os.environ, "DATABASE_URL": ours_url, "MLOPS_ENV": "development", "DEBUG": "false",
               "LOG_LEVEL": "WARNING", "WEB_CONCURRENCY": str(args.workers),
               "GUNICORN_THREADS": str(args.threads)}
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with serve([sys.executable, "-m", "gunicorn", "mlops_site.wsgi", "-c", "gunicorn.conf.py",
                    "-b", f"127.0.0.1:{port}"], env, url, ROOT):
            results["this service, /track"] = wrk(url, args.duration)
            results["this service, /track/batch"] = {"events_per_s": batch_rate(url, args.duration)}
        if args.only_ours:
            for name, figures in results.items():
                print(f"{name:55s} " + ", ".join(f"{k}={v:,.1f}" for k, v in figures.items()))
            return 0

        venv = seed_venv()
        seed_env = {**os.environ, "DATABASE_URL": f"postgresql://{server.ROLE}@127.0.0.1:{server.port}/seed_bench"}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with serve([str(venv / "bin" / "python"), str(seed_app)], {**seed_env, "SERVICE_PORT": str(port)}, url,
                   seed_app.parent):
            results["seed, Flask server"] = wrk(url, args.duration)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with serve([str(venv / "bin" / "gunicorn"), "-w", "4", "-b", f"127.0.0.1:{port}", "seed_flask_app:app"],
                   seed_env, url, seed_app.parent):
            results["seed, gunicorn -w 4"] = wrk(url, args.duration)

        results["PostgreSQL single-row INSERT (pgbench, 16 clients)"] = {
            "rows_per_s": pgbench_insert_rate(server, args.duration)
        }
        results["PostgreSQL COPY"] = {"rows_per_s": copy_rate(server)}
    finally:
        server.destroy()

    print()
    for name, figures in results.items():
        shown = ", ".join(f"{k}={v:,.1f}" for k, v in figures.items())
        print(f"{name:55s} {shown}")
    ours = results["this service, /track"]
    best_seed = max(results["seed, Flask server"]["rps"], results["seed, gunicorn -w 4"]["rps"])
    batch = results["this service, /track/batch"]["events_per_s"]
    copy = results["PostgreSQL COPY"]["rows_per_s"]
    insert = results["PostgreSQL single-row INSERT (pgbench, 16 clients)"]["rows_per_s"]
    print()
    print(f"single-event ingest / best seed form: {ours['rps'] / best_seed:.2f}x  (target >= 4x)")
    print(f"single-event ingest p99: {ours['p99']:.1f} ms  (target < 50 ms)")
    print(f"single-event ingest / raw single-row INSERT: {ours['rps'] / insert:.2%}")
    print(f"batch ingest / raw COPY: {batch / copy:.2%}  (target >= 25%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
