"""OTLP ingest against /track/batch: the same model calls, 500 a request, on one PostgreSQL and one service.

    .venv/bin/python bench/bench_otlp.py [--duration 10] [--workers 4] [--threads 4] [--senders 4]

Builds, before any clock starts, N lists of 500 receptionist model calls
(gpt-4o-mini, input, output and cache-read tokens, conversation and session
ids, the receptionist's `mlops.` attributes, a few failed calls), with N of
--duration x 40, and from them, for each phase on fresh event ids:
  - N /track/batch bodies of 500 events;
  - N OTLP exports of 500 GenAI spans, made by the OpenTelemetry SDK (each span
    a child of its request's span, as under an HTTP server span) and encoded
    by the SDK's own encoder: as protobuf, as gzip-compressed protobuf, and as
    OTLP/JSON.
Then, on a temporary PostgreSQL server and this service as production runs it
(gunicorn with --workers workers of --threads threads, an ingest key whose
rate limit is out of reach), sends each phase's bodies from --senders
concurrent senders for at most --duration seconds: /track/batch, the three
OTLP encodings, and /track/batch again, each after a few warm-up requests, a
VACUUM of the event table and a CHECKPOINT. It prints events/s, p50 and p99
request latency, and each OTLP rate over the batch rate (the mean of the two
batch runs, so the table's growth between phases does not favour either door)
beside the target (>= 1.0). When a target is missed, it profiles (cProfile) the missed
encodings' requests in this process, through the Django test client on the same
database, and prints the top functions by cumulative time.

No span carries message content: the GenAI instrumentations capture none
unless told to, and 500 spans of OTLP/JSON with content would pass the 1 MiB
body limit. The folder (`manage.py fold_events`) is not run: bench_ingest
measures it. Every process started here is stopped by its process group at the
end, also on Ctrl-C or SIGTERM. Needs the PostgreSQL server binaries.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import shutil
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from google.protobuf import json_format  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator  # noqa: E402
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags  # noqa: E402

from bench.bench_ingest import batch_created, connect  # noqa: E402
from bench.processes import (  # noqa: E402
    create_ingest_key,
    manage,
    production_env,
    serve,
    service_command,
    stop_on_sigterm,
)
from bench.senders import Answer, Sent, send_bodies  # noqa: E402
from tests.ingest.otlp_helpers import gzipped, json_body, protobuf_body  # noqa: E402
from tests.pgserver import TempPostgres, free_port  # noqa: E402

BUSINESS_ID = "bench-otlp"
MODEL = "gpt-4o-mini"
CALLS_PER_REQUEST = 500
# Bodies made per second of --duration, for each phase: 20,000 events/s before a phase runs out
# (bench_ingest's batches reach about 18,000 on 2 cores); a phase that runs out is timed until it did.
BODIES_PER_SECOND = 40
WARMUP_BODIES = 8  # per phase, sent before its clock starts, so every worker has served that door once
KEY_RATE_LIMIT = 2_000_000_000  # requests a minute: out of reach, so no request is throttled
FAILED_SHARE = 0.02
TARGET_RATIO = 1.0  # the issue's: OTLP events/s at least /track/batch's
PROFILE_REQUESTS = 10
PROFILE_LINES = 15
WRAPPER_SHARE = 0.97  # a frame with this share of a profile's time or more wraps the request

BATCH = "/track/batch, JSON"
PROTOBUF = "OTLP protobuf"
GZIP = "OTLP protobuf + gzip"
OTLP_JSON = "OTLP/JSON"
BATCH_AGAIN = "/track/batch, again"


# --- The calls, and the bodies made of them


@dataclass(frozen=True)
class Call:
    """One model call of a receptionist's chat reply."""

    conversation_id: str
    session_id: str
    end_ns: int
    latency_ms: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    intent: str
    appointment_requested: bool
    appointment_booked: bool
    human_handoff_requested: bool
    user_message_length: int
    ai_response_length: int
    failed: bool

    @property
    def timestamp(self) -> str:
        return datetime.fromtimestamp(self.end_ns / 1e9, UTC).isoformat()


def make_calls(requests: int, rng: random.Random) -> list[list[Call]]:
    """`requests` lists of CALLS_PER_REQUEST calls, the turns of conversations of 1 to 8 turns, over the last hour."""
    now = time.time_ns()
    intents = ["booking", "hours", "pricing", "general", "cancellation"]
    lists = []
    for _ in range(requests):
        calls: list[Call] = []
        while len(calls) < CALLS_PER_REQUEST:
            conversation = f"conv-{uuid.uuid4().hex[:16]}"
            session = f"sess-{uuid.uuid4().hex[:12]}"
            turns = rng.randint(1, 8)
            booking = rng.random() < 0.3
            for turn in range(min(turns, CALLS_PER_REQUEST - len(calls))):
                prompt = rng.randint(900, 4000)  # instructions + knowledge base + the conversation so far
                failed = rng.random() < FAILED_SHARE
                calls.append(Call(
                    conversation_id=conversation,
                    session_id=session,
                    end_ns=now - rng.randint(1, 3600) * 1_000_000_000,
                    latency_ms=rng.randint(400, 3500),
                    input_tokens=0 if failed else prompt,
                    output_tokens=0 if failed else rng.randint(20, 300),
                    cache_read_tokens=0 if failed else (prompt // 1024) * 1024,  # OpenAI caches 1,024-token steps
                    intent="booking" if booking else rng.choice(intents),
                    appointment_requested=booking,
                    appointment_booked=booking and turn == turns - 1 and rng.random() < 0.7,
                    human_handoff_requested=rng.random() < 0.03,
                    user_message_length=rng.randint(5, 400),
                    ai_response_length=0 if failed else rng.randint(40, 900),
                    failed=failed,
                ))
        lists.append(calls)
    return lists


def batch_event(call: Call) -> dict[str, Any]:
    """The call as the chat app's client sends it to /track/batch."""
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "business_id": BUSINESS_ID,
        "conversation_id": call.conversation_id,
        "session_id": call.session_id,
        "response_time_ms": call.latency_ms,
        "tokens_used": call.input_tokens + call.output_tokens,
        "model_name": MODEL,
        "intent_detected": call.intent,
        "response_type": "text",
        "appointment_requested": call.appointment_requested,
        "appointment_booked": call.appointment_booked,
        "human_handoff_requested": call.human_handoff_requested,
        "user_message_length": call.user_message_length,
        "ai_response_length": call.ai_response_length,
        "prompt_version": "v12",
        "kb_version": "kb-2026-11",
        "timestamp": call.timestamp,
    }
    if call.failed:
        event["success_rate"] = 0
    else:
        event.update(input_tokens=call.input_tokens, output_tokens=call.output_tokens,
                     cache_read_input_tokens=call.cache_read_tokens)
    return event


def batch_body(calls: list[Call]) -> bytes:
    return json.dumps({"events": [batch_event(call) for call in calls]}).encode()


def span_attributes(call: Call) -> dict[str, Any]:
    """The call's attributes as an OpenTelemetry GenAI instrumentation and the receptionist set them."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": MODEL,
        "gen_ai.response.model": MODEL,
        "gen_ai.conversation.id": call.conversation_id,
        "gen_ai.request.temperature": 0.3,
        "gen_ai.request.max_tokens": 512,
        "server.address": "api.openai.com",
        "mlops.session_id": call.session_id,
        "mlops.intent": call.intent,
        "mlops.response_type": "text",
        "mlops.appointment_requested": call.appointment_requested,
        "mlops.appointment_booked": call.appointment_booked,
        "mlops.human_handoff_requested": call.human_handoff_requested,
        "mlops.user_message_length": call.user_message_length,
        "mlops.ai_response_length": call.ai_response_length,
        "mlops.prompt_version": "v12",
        "mlops.kb_version": "kb-2026-11",
    }
    if call.failed:
        attributes["error.type"] = "RateLimitError"
    else:
        attributes.update({
            "gen_ai.response.id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "gen_ai.response.finish_reasons": ["stop"],
            "gen_ai.usage.input_tokens": call.input_tokens,
            "gen_ai.usage.output_tokens": call.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": call.cache_read_tokens,
        })
    return attributes


class SpanMaker:
    """The SDK's spans of calls: one chat span per call, each under a span of its own chat request."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource.create({
            "service.name": "receptionist", "service.version": "2.4.1", "deployment.environment.name": "production",
            "mlops.business_id": BUSINESS_ID,
        }))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("opentelemetry.instrumentation.openai_v2", "2.1b0")
        self.ids = RandomIdGenerator()

    def spans(self, calls: list[Call]) -> list[ReadableSpan]:
        for call in calls:
            request = SpanContext(self.ids.generate_trace_id(), self.ids.generate_span_id(), is_remote=False,
                                  trace_flags=TraceFlags(TraceFlags.SAMPLED))
            span = self.tracer.start_span(
                f"chat {MODEL}", context=trace.set_span_in_context(NonRecordingSpan(request)),
                kind=trace.SpanKind.CLIENT, attributes=span_attributes(call),
                start_time=call.end_ns - call.latency_ms * 1_000_000,
            )
            if call.failed:
                span.set_status(Status(StatusCode.ERROR, "Rate limit reached"))
            span.end(end_time=call.end_ns)
        spans = list(self.exporter.get_finished_spans())
        self.exporter.clear()
        return spans

    def close(self) -> None:
        self.provider.shutdown()


@dataclass
class Phase:
    """One door, its bodies (those for the warm-up apart), and what its answers stored."""

    name: str
    path: str
    headers: dict[str, str]
    stored: Callable[[Answer], int]
    warmup: list[bytes]
    bodies: list[bytes]


def otlp_accepted(answer: Answer) -> int:
    """The spans an OTLP answer accepted: all of the export's, or RuntimeError (a refused span is a bench bug)."""
    if answer.status != 200:
        raise RuntimeError(f"OTLP answered {answer.status}: {answer.body[:500].decode(errors='replace')}")
    response = ExportTraceServiceResponse()
    if answer.body.startswith(b"{"):
        json_format.Parse(answer.body, response)
    else:
        response.ParseFromString(answer.body)
    if response.partial_success.rejected_spans:
        raise RuntimeError(f"OTLP refused {response.partial_success.rejected_spans} spans: "
                           f"{response.partial_success.error_message[:500]}")
    return CALLS_PER_REQUEST


def build_phases(call_lists: list[list[Call]], warmup: list[list[Call]], key: str) -> list[Phase]:
    """The phases' bodies, every one on event ids of its own: /track/batch, the three OTLP encodings, and
    /track/batch again, so that the OTLP rates are set against batches timed before and after them."""
    bearer = {"Authorization": f"Bearer {key}"}
    maker = SpanMaker()
    encodings: dict[str, tuple[dict[str, str], Callable[[list[ReadableSpan]], bytes]]] = {
        PROTOBUF: ({"Content-Type": "application/x-protobuf"}, protobuf_body),
        GZIP: ({"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
               lambda spans: gzipped(protobuf_body(spans))),
        OTLP_JSON: ({"Content-Type": "application/json"}, json_body),
    }
    try:
        phases = [Phase(BATCH, "/track/batch", {"Content-Type": "application/json", **bearer}, batch_created,
                        [batch_body(calls) for calls in warmup], [batch_body(calls) for calls in call_lists])]
        for name, (headers, encode) in encodings.items():
            phases.append(Phase(name, "/v1/traces", {**headers, **bearer}, otlp_accepted,
                                [encode(maker.spans(calls)) for calls in warmup],
                                [encode(maker.spans(calls)) for calls in call_lists]))
        phases.append(Phase(BATCH_AGAIN, "/track/batch", phases[0].headers, batch_created,
                            [batch_body(calls) for calls in warmup], [batch_body(calls) for calls in call_lists]))
    finally:
        maker.close()
    return phases


# --- The runs


@dataclass
class Result:
    phase: Phase
    sent: Sent
    rows: int  # ai_metrics rows the phase added, counted in the database

    @property
    def mean_body_kb(self) -> float:
        return sum(map(len, self.phase.bodies)) / len(self.phase.bodies) / 1024


def stored_rows(server: TempPostgres) -> int:
    conn = connect(server)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM ai_metrics")
            return cursor.fetchone()[0]
    finally:
        conn.close()


def settle(server: TempPostgres) -> None:
    """Vacuum the event table and write a checkpoint, so no phase pays for the autovacuum or the dirty pages
    that the one before it left."""
    conn = connect(server)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("VACUUM (ANALYZE) ai_metrics")
            cursor.execute("CHECKPOINT")
    finally:
        conn.close()


def run_phases(server: TempPostgres, url: str, phases: list[Phase], args: argparse.Namespace) -> list[Result]:
    results = []
    for phase in phases:
        send_bodies(url, phase.path, phase.warmup, phase.headers, phase.stored, duration=120, senders=args.senders)
        settle(server)
        before = stored_rows(server)
        print(f"timing {phase.name} ({args.duration} s at most)", flush=True)
        sent = send_bodies(url, phase.path, phase.bodies, phase.headers, phase.stored, args.duration, args.senders)
        results.append(Result(phase, sent, stored_rows(server) - before))
    return results


def setup_django(env: dict[str, str]) -> None:
    """Django in this process with the service's own environment, so its test client reaches the same database."""
    os.environ.update(env)
    import django

    django.setup()


def profile_otlp(missed: list[Phase], batch: Phase, call_lists: list[list[Call]], key: str) -> None:
    """In-process time per request of each door, then the missed encodings' requests under cProfile.

    The test client runs the service's whole request stack (middleware, the key,
    the view, the INSERT) without gunicorn and the network, one request at a time.
    """
    import warnings

    from django.test import Client

    # The static files are not collected here, and the service never serves them on this path.
    warnings.filterwarnings("ignore", message="No directory at")

    client = Client(SERVER_NAME="127.0.0.1")
    fresh = build_phases(call_lists, call_lists[:1], key)[:-1]  # new event ids: nothing here is a duplicate

    def post(phase: Phase, body: bytes) -> None:
        headers = {name: value for name, value in phase.headers.items() if name != "Content-Type"}
        response = client.post(phase.path, body, content_type=phase.headers["Content-Type"], headers=headers)
        phase.stored(Answer(response.status_code, response.content))

    print(f"\nin-process time per request ({PROFILE_REQUESTS} requests of {CALLS_PER_REQUEST} calls each, "
          "Django test client, same database):")
    by_name = {phase.name: phase for phase in fresh}
    for phase in [by_name[batch.name], *(by_name[name] for name in (PROTOBUF, GZIP, OTLP_JSON))]:
        post(phase, phase.warmup[0])
        started = time.perf_counter()
        for body in phase.bodies[:PROFILE_REQUESTS]:
            post(phase, body)
        took = (time.perf_counter() - started) / PROFILE_REQUESTS
        print(f"  {phase.name:22s} {took * 1000:7.1f} ms  ({took / CALLS_PER_REQUEST * 1e6:5.1f} us an event)")
    for missed_phase in missed:
        phase = by_name[missed_phase.name]
        profiler = cProfile.Profile()
        profiler.enable()
        for body in phase.bodies[PROFILE_REQUESTS:2 * PROFILE_REQUESTS]:
            post(phase, body)
        profiler.disable()
        print_profile(f"{PROFILE_REQUESTS} {phase.name} requests", pstats.Stats(profiler))


@dataclass(frozen=True)
class Function:
    name: str
    calls: int
    own_s: float
    cumulative_s: float


def _where(file: str, line: int, function: str) -> str:
    for prefix in (sysconfig.get_paths()["purelib"] + "/", f"{ROOT}/", sys.base_prefix + "/lib/"):
        file = file.removeprefix(prefix)
    return f"{file}:{line}({function})" if line else function


def print_profile(what: str, stats: pstats.Stats) -> None:
    """The top PROFILE_LINES functions by cumulative time below the request stack, then the top 10 by own time.

    The frames that wrap the whole request (the test client, the middleware, the
    view's decorators) each take nearly all of it and say nothing: they are left out.
    """
    total = stats.total_tt  # type: ignore[attr-defined]  # pstats.Stats sets it, typeshed does not declare it
    functions = [
        Function(_where(*where), calls, own, cumulative)
        for where, (_, calls, own, cumulative, _) in stats.stats.items()  # type: ignore[attr-defined]
    ]
    below = [f for f in functions if f.cumulative_s < WRAPPER_SHARE * total]
    print(f"\nprofile of {what}: {total:.2f} s in all; top {PROFILE_LINES} by cumulative time, "
          f"leaving out the {len(functions) - len(below)} frames that wrap the whole request:")
    print(f"  {'calls':>8s} {'own s':>7s} {'cum s':>7s} {'cum %':>6s}  function")
    for f in sorted(below, key=lambda f: f.cumulative_s, reverse=True)[:PROFILE_LINES]:
        print(f"  {f.calls:8d} {f.own_s:7.3f} {f.cumulative_s:7.3f} {f.cumulative_s / total:6.1%}  {f.name}")
    print("  top 10 by own time:")
    for f in sorted(functions, key=lambda f: f.own_s, reverse=True)[:10]:
        print(f"  {f.calls:8d} {f.own_s:7.3f} {f.cumulative_s:7.3f} {f.own_s / total:6.1%}  {f.name}")


# --- The report


def report(results: list[Result], args: argparse.Namespace) -> list[Phase]:
    """Print the figures and the ratios beside the target; the OTLP phases that missed it."""
    print(f"\n{CALLS_PER_REQUEST} events a request, {args.senders} senders, gunicorn {args.workers} workers x "
          f"{args.threads} threads, at most {args.duration} s a phase:\n")
    print(f"{'':22s} {'events/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'requests':>9s} {'seconds':>8s} "
          f"{'body KiB':>9s} {'rows stored':>12s}")
    for result in results:
        sent = result.sent
        print(f"{result.phase.name:22s} {sent.events_per_s:9,.0f} {sent.percentile_ms(50):8.1f} "
              f"{sent.percentile_ms(99):8.1f} {len(sent.latencies_ms):9d} {sent.seconds:8.1f} "
              f"{result.mean_body_kb:9.1f} {result.rows:12,d}")
        if result.rows != sent.events:
            print(f"  WARNING: the answers counted {sent.events:,} events but {result.rows:,} rows were stored")
    first, last = results[0].sent.events_per_s, results[-1].sent.events_per_s
    batch = (first + last) / 2
    print(f"\n/track/batch: {batch:,.0f} events/s, the mean of the runs before and after OTLP "
          f"(the second at {last / first:.0%} of the first)")
    missed = []
    for result in results[1:-1]:
        ratio = result.sent.events_per_s / batch
        met = ratio >= TARGET_RATIO
        if not met:
            missed.append(result.phase)
        print(f"{result.phase.name} / batch: {ratio:.2f}x  (target >= {TARGET_RATIO:.1f}x: "
              f"{'MET' if met else 'MISSED'})")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per phase at most (default 10)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers of the service (default 4)")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (default 4)")
    parser.add_argument("--senders", type=int, default=4, help="concurrent senders for every phase (default 4)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile even when a target is missed")
    args = parser.parse_args()
    stop_on_sigterm()

    rng = random.Random(20261201)
    count = max(WARMUP_BODIES, args.duration * BODIES_PER_SECOND)
    started = time.monotonic()
    call_lists = make_calls(count, rng)
    warmup = make_calls(WARMUP_BODIES, rng)
    print(f"made {count} lists of {CALLS_PER_REQUEST} calls; building the bodies of five phases", flush=True)

    server = TempPostgres.create()
    metrics_dir = tempfile.mkdtemp(prefix="bench-otlp-prometheus-")
    try:
        env = production_env(server.url)
        env.update(WEB_CONCURRENCY=str(args.workers), GUNICORN_THREADS=str(args.threads))
        manage(env, "migrate", "-v0")
        key = create_ingest_key(env, BUSINESS_ID, "bench_otlp", KEY_RATE_LIMIT)
        phases = build_phases(call_lists, warmup, key)
        built = sum(len(phase.warmup) + len(phase.bodies) for phase in phases)
        print(f"built {built} bodies in {time.monotonic() - started:.0f} s", flush=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with serve(service_command(port), env, url, ROOT):
            results = run_phases(server, url, phases, args)
        missed = report(results, args)
        if missed and not args.no_profile:
            # The service's metrics are in multiprocess mode under gunicorn; the same here.
            setup_django({**env, "PROMETHEUS_MULTIPROC_DIR": metrics_dir})
            profile_otlp(missed, results[0].phase, call_lists[:2 * PROFILE_REQUESTS], key)
    except RuntimeError as exc:
        print(f"bench_otlp: {exc}", file=sys.stderr)
        return 1
    finally:
        server.destroy()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
