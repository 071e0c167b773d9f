"""Scrape benchmark: GET /metrics with 200 businesses, 10 intents and 5 models of live series, 4 workers.

    .venv/bin/python bench/bench_metrics.py [--businesses 200] [--intents 10] [--models 5] [--workers 4]
                                            [--scrapes 60]

On a temporary PostgreSQL server this script starts, it serves the service
with gunicorn (gunicorn.conf.py, multiprocess metrics), sends events until
every (business, intent) and (business, model) pair has been seen by every
worker, folds them into the totals that the AI series are read from
(rebuild_analytics, 2,000 MetricTotals rows at the default size), then:
  - times GET /metrics from a client on loopback (median, p95, max) and
    reports the size of the text;
  - reads the resident memory of the worker that served each scrape (from
    gunicorn's access log, which names the worker) before and after;
  - splits the time of the per-process part of a scrape (django-prometheus's
    metrics, the duplicate and rejected counts) into reading the workers'
    files, merging them and writing the text, by running the same steps in
    this process on the service's metric files.
Targets: a scrape under 50 ms and under 1 MB of text.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.pgserver import TempPostgres, free_port  # noqa: E402

RESPONSE_TYPES = ("text", "appointment_booking", "human_handoff", "error")
BATCH = 500


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def events_for(businesses: list[str], intents: list[str], models: list[str]) -> list[dict]:
    """One event per (business, intent), cycling models so each business sees every model."""
    events = []
    for b, business in enumerate(businesses):
        for i, intent in enumerate(intents):
            n = b * len(intents) + i
            events.append({
                "business_id": business,
                "event_id": str(uuid.uuid4()),
                "response_time_ms": 200 + (n * 37) % 9000,
                "tokens_used": 100 + n % 900,
                "input_tokens": 80 + n % 700,
                "output_tokens": 20 + n % 200,
                "api_cost_usd": 0.0001 * (1 + n % 50),
                "model_name": models[(b + i) % len(models)],
                "intent_detected": intent,
                "response_type": RESPONSE_TYPES[i % len(RESPONSE_TYPES)],
                "success_rate": 0 if n % 17 == 0 else 1,
                "appointment_requested": i % 3 == 0,
                "appointment_booked": i % 6 == 0,
                "human_handoff_requested": i % 5 == 0,
            })
    return events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--businesses", type=int, default=200)
    parser.add_argument("--intents", type=int, default=10)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--scrapes", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=8, help="times every pair is sent (spreads them over workers)")
    args = parser.parse_args()

    businesses = [f"bench-business-{n:03d}" for n in range(args.businesses)]
    intents = [f"bench_intent_{n}" for n in range(args.intents)]
    models = [f"bench-model-{n}" for n in range(args.models)]
    work = Path(tempfile.mkdtemp(prefix="mlops-bench-metrics-"))
    metrics_dir = work / "prometheus"
    access_log = work / "access.log"
    port = free_port()
    print(f"Starting PostgreSQL and the service ({args.workers} workers) in {work}")
    pg = TempPostgres.create()
    env = {
        **os.environ,
        **pg.env(),
        "MLOPS_ENV": "development",
        "DJANGO_SETTINGS_MODULE": "mlops_site.settings",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "MLOPS_PROMETHEUS_MAX_BUSINESSES": str(max(500, args.businesses)),
        "MLOPS_PROMETHEUS_INTENTS": ",".join(intents),
        "MLOPS_PROMETHEUS_RESPONSE_TYPES": ",".join(RESPONSE_TYPES),
        "MLOPS_PROMETHEUS_MODELS": ",".join(models),
        "MLOPS_KEY_RATE_LIMIT_PER_MINUTE": "1000000",
        "LOG_LEVEL": "warning",
    }
    server = None
    try:
        migrate_env = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=migrate_env,
                       check=True)
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "mlops_site.wsgi", "--config", "gunicorn.conf.py",
             "--bind", f"127.0.0.1:{port}", "--workers", str(args.workers),
             "--access-logfile", str(access_log), "--access-logformat", "%(p)s %(m)s %(U)s"],
            cwd=ROOT, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the service did not start")
            time.sleep(0.2)

        # Every pair, several times over, in concurrent batches: each worker sees (nearly) every series.
        events = [e for _ in range(args.rounds) for e in events_for(businesses, intents, models)]
        for e in events:
            e["event_id"] = str(uuid.uuid4())
        batches = [json.dumps({"events": events[i:i + BATCH]}).encode() for i in range(0, len(events), BATCH)]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.workers * 2) as pool:
            statuses = list(pool.map(lambda body: request(port, "POST", "/track/batch", body)[0], batches))
        assert all(status == 200 for status in statuses), statuses
        print(f"Sent {len(events)} events in {len(batches)} batches in {time.perf_counter() - started:.1f} s")
        # The AI series are the folded totals: fold everything stored before timing the scrapes.
        subprocess.run([sys.executable, "manage.py", "rebuild_analytics", "--quiet-progress"], cwd=ROOT,
                       env=migrate_env, check=True, stdout=subprocess.DEVNULL)

        status, text = request(port, "GET", "/metrics")
        assert status == 200
        lines = text.decode().splitlines()
        ai_series = [line for line in lines if line and not line.startswith("#")]
        files = sorted(p.name for p in metrics_dir.glob("*.db"))
        worker_files = [name for name in files if name.startswith("histogram_")]
        requests_total = sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("ai_requests_total{"))
        assert requests_total == len(events), (requests_total, len(events))

        # The first scrape a worker serves learns the files' layout; time it apart from the steady state.
        access_log.write_text("")
        cold: list[float] = []
        served: dict[int, int] = {}
        while len(cold) < 200 and (len(served) < args.workers or min(served.values()) < 2):
            t0 = time.perf_counter()
            request(port, "GET", "/metrics")
            cold.append((time.perf_counter() - t0) * 1000)
            served = {}
            for line in access_log.read_text().splitlines():
                pid = int(line.split()[0].strip("<>"))
                served[pid] = served.get(pid, 0) + 1
        first_by: dict[int, float] = {}
        for line, ms in zip(access_log.read_text().splitlines(), cold, strict=False):
            first_by.setdefault(int(line.split()[0].strip("<>")), ms)

        access_log.write_text("")
        workers_before = {}
        for line in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split():
            workers_before[int(line)] = rss_kib(int(line))
        timings = []
        for _ in range(args.scrapes):
            t0 = time.perf_counter()
            status, body = request(port, "GET", "/metrics")
            timings.append((time.perf_counter() - t0) * 1000)
            assert status == 200
        log_lines = access_log.read_text().splitlines()
        served_by = {int(line.split()[0].strip("<>")) for line in log_lines if "/metrics" in line}
        workers_after = {pid: rss_kib(pid) for pid in workers_before}

        timings.sort()
        p95 = timings[int(len(timings) * 0.95) - 1]
        print()
        print(f"Live series: {args.businesses} businesses x {args.intents} intents x {args.models} models, "
              f"{args.workers} workers ({len(worker_files)} histogram files: {', '.join(worker_files)})")
        print(f"/metrics: {len(body)} bytes ({len(body) / 1024 / 1024:.2f} MiB), {len(ai_series)} samples, "
              f"ai_requests_total sums to {requests_total:.0f} = events sent")
        print(f"first scrape served by each worker (learns the layout): "
              f"{', '.join(f'{ms:.0f}' for ms in first_by.values())} ms")
        print(f"scrape time over {len(timings)} scrapes (client, loopback): "
              f"median {statistics.median(timings):.1f} ms, p95 {p95:.1f} ms, max {timings[-1]:.1f} ms")
        for pid in sorted(workers_before):
            mark = " (served scrapes)" if pid in served_by else ""
            print(f"worker {pid}: RSS {workers_before[pid] / 1024:.1f} MiB before the scrapes, "
                  f"{workers_after[pid] / 1024:.1f} MiB after{mark}")

        breakdown(metrics_dir)
        target_ok = p95 < 50 and len(body) < 1_000_000
        print()
        print(f"Target (scrape < 50 ms, < 1 MB): {'met' if target_ok else 'MISSED'} "
              f"(p95 {p95:.1f} ms, {len(body) / 1e6:.2f} MB)")
        return 0
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        pg.destroy()
        shutil.rmtree(work, ignore_errors=True)


def breakdown(metrics_dir: Path) -> None:
    """Where one scrape's time goes, measured on the service's own files in this process."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    files = sorted(str(p) for p in metrics_dir.glob("*.db"))
    runs = 20
    t0 = time.perf_counter()
    for _ in range(runs):
        metrics = MultiProcessCollector._read_metrics(files)
    t1 = time.perf_counter()
    for _ in range(runs):
        metrics = MultiProcessCollector._read_metrics(files)
        merged = list(MultiProcessCollector._accumulate_metrics(metrics, True))
    t2 = time.perf_counter()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    for _ in range(runs):
        text = generate_latest(registry)
    t3 = time.perf_counter()
    read = (t1 - t0) / runs * 1000
    merge = (t2 - t1) / runs * 1000 - read
    whole = (t3 - t2) / runs * 1000
    print(f"in-process, same files, prometheus_client's collector: read and parse {read:.1f} ms + merge "
          f"{merge:.1f} ms + text {whole - read - merge:.1f} ms = {whole:.1f} ms per scrape "
          f"({len(merged)} metrics, {len(text)} bytes)")

    from metrics_app.monitoring import exposition as fast

    exposition = fast.FastMultiProcessExposition(str(metrics_dir))
    t0 = time.perf_counter()
    exposition.render()
    t1 = time.perf_counter()
    for _ in range(runs):
        text = exposition.render()
    t2 = time.perf_counter()
    plan = exposition._plan
    totals = [1.0] * len(exposition._slot_of)
    for _ in range(runs):
        fast._render(plan, totals)
    t3 = time.perf_counter()
    warm = (t2 - t1) / runs * 1000
    lines = (t3 - t2) / runs * 1000
    print(f"in-process, same files, the service's exposition: first render {(t1 - t0) * 1000:.1f} ms; then "
          f"{warm:.1f} ms per scrape = read and add {warm - lines:.1f} ms + text {lines:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
