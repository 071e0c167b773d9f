"""Client benchmark: what tracking adds to a chat reply, and how fast each client delivers events.

    .venv/bin/python bench/bench_client.py [--calls 20000] [--events 20000] [--workers 2]

Starts a temporary PostgreSQL server and the service (gunicorn), makes an
ingest key with manage.py, then for the TypeScript client (clients/typescript,
built with npm if needed) and the Python client (clients/python) measures:
  - the time one `trackMetrics` / `track_metrics` call takes, as the chat
    route pays it, with the background sender delivering to the service
    meanwhile (the loop yields between calls, as a server between requests);
    p50, p99 and max in microseconds;
  - events/s delivered: that many events tracked as fast as they come, from
    the first call until `flush()` reports the service answered for all, with
    the default batch (100) and the largest (500); and the service's count of
    stored events, checked against what was sent.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "clients" / "python"))

from bench.processes import serve, service_command  # noqa: E402
from tests.pgserver import TempPostgres, free_port  # noqa: E402

TS_DIR = ROOT / "clients" / "typescript"

NODE_BENCH = r"""
import { MetricsTracker, configureTracking, flush, trackMetrics } from "mlops-chat-tracking";

const [calls, events] = process.argv.slice(-2).map(Number);
const event = (i) => ({
  business_id: "bench-business", conversation_id: `c-${i % 500}`, session_id: `s-${i % 500}`,
  response_time_ms: 900 + (i % 400), success_rate: 1, tokens_used: 180, api_cost_usd: 0.000034,
  model_name: "gemini-1.5-flash", intent_detected: "general", appointment_requested: false,
  human_handoff_requested: false, user_message_length: 42, ai_response_length: 130, response_type: "text",
});
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

// 1. Time per call, with the sender working in the background.
// A queue that holds every call, so that timing a burst drops nothing.
configureTracking({ logger: null, maxQueueSize: calls + 2000 });
for (let i = 0; i < 2000; i += 1) trackMetrics(event(i)); // warm-up
await flush(60_000);
const took = [];
for (let i = 0; i < calls; i += 1) {
  const started = process.hrtime.bigint();
  trackMetrics(event(i));
  took.push(Number(process.hrtime.bigint() - started) / 1000);
  await new Promise((resolve) => setImmediate(resolve));
}
const latencyFlush = await flush(60_000);
took.sort((a, b) => a - b);
const latency = {
  calls, p50_us: pct(took, 50), p99_us: pct(took, 99), max_us: took[took.length - 1],
  delivered: latencyFlush.complete,
};

// 2. Delivery rate.
const rates = {};
for (const batchSize of [100, 500]) {
  const tracker = new MetricsTracker({ batchSize, logger: null, maxQueueSize: events });
  const started = performance.now();
  for (let i = 0; i < events; i += 1) {
    tracker.track(event(i));
    if (i % 1000 === 999) await new Promise((resolve) => setImmediate(resolve));
  }
  const done = await tracker.flush(300_000);
  const seconds = (performance.now() - started) / 1000;
  const s = tracker.stats();
  rates[`batch_${batchSize}`] = {
    events, events_per_s: events / seconds, complete: done.complete, created: s.created, dropped: s.dropped,
  };
}
console.log(JSON.stringify({ latency, rates }));
"""


def python_bench(calls: int, events: int) -> dict:
    import mlops_tracking
    from mlops_tracking import MetricsTracker

    def event(i: int) -> dict:
        return {
            "business_id": "bench-business", "conversation_id": f"c-{i % 500}", "session_id": f"s-{i % 500}",
            "response_time_ms": 900 + i % 400, "success_rate": 1.0, "tokens_used": 180, "api_cost_usd": 0.000034,
            "model_name": "gemini-1.5-flash", "intent_detected": "general", "appointment_requested": False,
            "human_handoff_requested": False, "user_message_length": 42, "ai_response_length": 130,
            "response_type": "text",
        }

    # A queue that holds every call, so that timing a burst drops nothing.
    mlops_tracking.configure(flush_at_exit=False, max_queue_size=calls + 2000)
    for i in range(2000):
        mlops_tracking.track_metrics(event(i))
    mlops_tracking.flush(60)
    took: list[float] = []
    for i in range(calls):
        started = time.perf_counter_ns()
        mlops_tracking.track_metrics(event(i))
        took.append((time.perf_counter_ns() - started) / 1000)
        time.sleep(0)  # let the sender thread run between "requests"
    delivered = mlops_tracking.flush(60).complete
    took.sort()

    def pct(p: float) -> float:
        return took[min(len(took) - 1, int(p / 100 * len(took)))]

    latency = {"calls": calls, "p50_us": pct(50), "p99_us": pct(99), "max_us": took[-1], "delivered": delivered}
    rates = {}
    for batch_size in (100, 500):
        tracker = MetricsTracker(batch_size=batch_size, max_queue_size=events, flush_at_exit=False)
        started = time.perf_counter()
        for i in range(events):
            tracker.track(event(i))
        done = tracker.flush(300)
        seconds = time.perf_counter() - started
        stats = tracker.stats()
        rates[f"batch_{batch_size}"] = {"events": events, "events_per_s": events / seconds, "complete": done.complete,
                                        "created": stats.created, "dropped": stats.dropped}
    return {"latency": latency, "rates": rates}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000, help="trackMetrics calls timed one by one")
    parser.add_argument("--events", type=int, default=20_000, help="events per delivery-rate run")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of the service")
    args = parser.parse_args()

    if not (TS_DIR / "dist" / "index.js").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=TS_DIR, check=True)

    server = TempPostgres.create()
    try:
        env = {**os.environ, "DATABASE_URL": server.url, "MLOPS_ENV": "development", "LOG_LEVEL": "WARNING",
               "WEB_CONCURRENCY": str(args.workers)}
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        key = subprocess.run(
            [sys.executable, "manage.py", "create_api_key", "bench-business", "--name", "bench", "--create-business",
             "--rate-limit", "1000000"],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True,
        ).stdout.strip()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        results: dict = {"workers": args.workers}
        with serve(service_command(port), env, url, ROOT):
            client_env = {**os.environ, "MLOPS_SERVICE_URL": url, "MLOPS_API_KEY": key}
            node = subprocess.run(
                ["node", "--input-type=module", "-e", NODE_BENCH, "--", str(args.calls), str(args.events)],
                cwd=TS_DIR, env=client_env, check=True, capture_output=True, text=True,
            )
            results["typescript"] = json.loads(node.stdout.strip().splitlines()[-1])
            os.environ.update({"MLOPS_SERVICE_URL": url, "MLOPS_API_KEY": key})
            results["python"] = python_bench(args.calls, args.events)
        sent = 2 * (2000 + args.calls + 2 * args.events)
        stored = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from metrics_app.models import AIMetric; print(AIMetric.objects.count())"],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True,
        ).stdout.strip()
        results["events_sent"] = sent
        results["events_stored"] = int(stored.splitlines()[-1])
    finally:
        server.destroy()
    print(json.dumps(results, indent=2))
    return 0 if results["events_stored"] == results["events_sent"] else 1


if __name__ == "__main__":
    sys.exit(main())
