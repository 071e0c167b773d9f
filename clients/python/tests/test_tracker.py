"""The Python client against a stand-in service that can be slow, failing or absent.

The real service is exercised from the project's tests/clients/test_client_python.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlops_tracking import MetricsTracker, calculate_token_usage, estimate_api_cost, parse_retry_after  # noqa: E402

Reply = tuple[int, dict[str, str], Any, float]  # status, headers, body, delay in seconds


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    events: list[dict[str, Any]]


@dataclass
class FakeService:
    port: int
    responder: Callable[[Received, int], Reply | None]
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    # The knowledge-base version answered per business (GET /api/knowledge-base/); others get 404.
    kb_versions: dict[str, str] = field(default_factory=dict)
    kb_lookups: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ids(self) -> list[str]:
        return [event["event_id"] for received in self.requests for event in received.events]

    def start(self) -> FakeService:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                business = parse_qs(urlsplit(self.path).query).get("business_id", [""])[0]
                service.kb_lookups.append(business)
                version = service.kb_versions.get(business)
                data = json.dumps({"version": version} if version else {"error": "Not found", "errors": {}}).encode()
                self.send_response(200 if version else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received = Received(time.monotonic(), dict(self.headers), json.loads(raw).get("events", []))
                service.requests.append(received)
                status, headers, body, delay = service.responder(received, len(service.requests) - 1) or stored(
                    received.events
                )
                time.sleep(delay)  # the slow service under test, not a wait for the test itself
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def stored(events: list[dict[str, Any]]) -> Reply:
    results = [{"index": i, "event_id": e.get("event_id"), "status": "created", "errors": {}} for i, e in enumerate(events)]
    return 200, {}, {"created": len(events), "duplicates": 0, "rejected": 0, "results": results}, 0.0


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fake() -> Iterator[Callable[..., FakeService]]:
    started: list[FakeService] = []

    def start(responder: Callable[[Received, int], Reply | None] = lambda r, i: None, port: int = 0) -> FakeService:
        service = FakeService(port, responder).start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def tracker(url: str, **options: Any) -> MetricsTracker:
    options = {"initial_backoff": 0.02, "max_backoff": 0.2, "flush_at_exit": False, **options}
    return MetricsTracker(url, **options)


def reply(**overrides: Any) -> dict[str, Any]:
    return {
        "business_id": "test-business",
        "conversation_id": "conv-1",
        "session_id": "session-1",
        "response_time_ms": 1200,
        "success_rate": 1.0,
        "tokens_used": 150,
        "api_cost_usd": 0.00003,
        "model_name": "gemini-1.5-flash",
        "intent_detected": "general",
        "response_type": "text",
        **overrides,
    }


def test_it_sends_full_batches_and_every_event_once(fake):
    service = fake()
    metrics = tracker(service.url, batch_size=100, flush_interval=60)
    ids = [metrics.track(reply(response_time_ms=i)) for i in range(250)]
    assert metrics.flush(5).complete
    assert [len(r.events) for r in service.requests] == [100, 100, 50]
    assert service.ids() == ids
    assert metrics.stats().created == 250


def test_it_sends_a_part_filled_batch_after_the_interval_without_a_flush(fake):
    service = fake()
    metrics = tracker(service.url, flush_interval=0.03)
    metrics.track(reply())
    metrics.track(reply())
    deadline = time.monotonic() + 5
    while not service.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [len(r.events) for r in service.requests] == [2]


def test_each_event_gets_a_uuid_and_a_reply_time_and_keeps_the_callers_own(fake):
    service = fake()
    metrics = tracker(service.url, api_key="mlk_abc_secret")
    mine = "0b5b2a9e-5a55-4e1c-9d3b-3f2f7a1f2c11"
    metrics.track(reply(event_id=mine, timestamp="2026-01-02T03:04:05+00:00", response_time_ms=12.6, tokens_used=-1))
    made = metrics.track(reply())
    metrics.flush(5)
    first, second = service.requests[0].events
    assert (first["event_id"], first["timestamp"]) == (mine, "2026-01-02T03:04:05+00:00")
    assert (first["response_time_ms"], first["tokens_used"]) == (13, 0)
    assert second["event_id"] == made and len(made) == 36
    assert second["timestamp"].endswith("+00:00")
    assert service.requests[0].headers["Authorization"] == "Bearer mlk_abc_secret"


def test_it_sends_the_cache_and_reasoning_counts_of_the_providers_usage_as_whole_numbers(fake):
    service = fake()
    metrics = tracker(service.url)
    usage = {"input_tokens": 12, "cache_read_input_tokens": 2890, "cache_creation_input_tokens": 1104, "output_tokens": 356}
    metrics.track(reply(**calculate_token_usage("system", "hello", "hi", usage).event_fields()))
    metrics.track(reply(input_tokens=100, cache_read_input_tokens=40.4, output_tokens=20, reasoning_output_tokens=-2))
    assert metrics.flush(5).complete
    anthropic, rounded = service.requests[0].events
    assert {name: anthropic[name] for name in ("tokens_used", "input_tokens", "output_tokens")} == {
        "tokens_used": 4362, "input_tokens": 4006, "output_tokens": 356,
    }
    assert (anthropic["cache_read_input_tokens"], anthropic["cache_write_input_tokens"]) == (2890, 1104)
    assert "reasoning_output_tokens" not in anthropic
    assert (rounded["cache_read_input_tokens"], rounded["reasoning_output_tokens"]) == (40, 0)


def test_it_sends_a_score_or_a_message_to_score_cutting_a_message_longer_than_the_service_takes(fake):
    service = fake()
    metrics = tracker(service.url)
    metrics.track(reply(user_sentiment=-0.4))
    metrics.track(reply(user_message="Thanks, that was quick!"))
    metrics.track(reply(user_message="a" * 12_000))
    assert metrics.flush(5).complete
    scored, short, long = service.requests[0].events
    assert scored["user_sentiment"] == -0.4
    assert short["user_message"] == "Thanks, that was quick!"
    assert long["user_message"] == "a" * 10_000


def test_a_503_with_retry_after_is_retried_after_that_wait_with_the_same_event_ids(fake):
    service = fake(lambda r, i: (503, {"Retry-After": "1"}, {"error": "down"}, 0.0) if i == 0 else None)
    metrics = tracker(service.url)
    ids = [metrics.track(reply()), metrics.track(reply())]
    assert metrics.flush(10).complete
    assert service.ids() == ids + ids
    # Retry-After is a floor: the condition wait never returns early on its own.
    assert service.requests[1].at - service.requests[0].at >= 0.99
    assert metrics.stats().retries == 1


def test_429_and_5xx_are_retried_until_the_service_takes_the_events(fake):
    statuses = [429, 500, 502]
    service = fake(lambda r, i: (statuses[i], {}, {"error": "x"}, 0.0) if i < len(statuses) else None)
    metrics = tracker(service.url)
    event_id = metrics.track(reply())
    assert metrics.flush(10).complete
    assert service.ids() == [event_id] * 4
    assert (metrics.stats().created, metrics.stats().retries) == (1, 3)


@pytest.mark.parametrize("status", [400, 401, 403, 413, 415])
def test_other_4xx_answers_are_not_retried_and_count_as_refused(fake, status):
    service = fake(lambda r, i: (status, {}, {"error": "no", "errors": {}}, 0.0))
    metrics = tracker(service.url)
    metrics.track(reply())
    metrics.track(reply())
    assert metrics.flush(2).complete
    assert len(service.requests) == 1
    assert (metrics.stats().refused, metrics.stats().retries) == (2, 0)


def test_events_rejected_in_a_207_are_counted_apart_from_the_created(fake):
    body = {"created": 1, "duplicates": 0, "rejected": 1,
            "results": [{"index": 0, "status": "rejected", "errors": {"tokens_used": ["must be a JSON number"]}}]}
    service = fake(lambda r, i: (207, {}, body, 0.0))
    metrics = tracker(service.url)
    metrics.track(reply(tokens_used="lots"))
    metrics.track(reply())
    metrics.flush(5)
    stats = metrics.stats()
    assert (stats.created, stats.rejected, len(service.requests)) == (1, 1, 1)
    assert "tokens_used" in stats.last_error


def test_a_service_that_is_down_keeps_events_queued_until_it_is_back(fake):
    port = dead_port()
    metrics = tracker(f"http://127.0.0.1:{port}", flush_interval=0.01)
    ids = [metrics.track(reply()) for _ in range(3)]
    early = metrics.flush(0.3)
    assert (early.complete, early.pending) == (False, 3)
    for _ in range(100):
        if metrics.stats().retries:
            break
        metrics.flush(0.05)
    assert metrics.stats().retries >= 1
    service = fake(port=port)
    assert metrics.flush(5).complete
    assert service.ids() == ids


def test_a_slow_service_times_out_and_the_retry_reuses_the_event_ids(fake):
    service = fake(lambda r, i: (*stored(r.events)[:3], 1.5) if i == 0 else None)
    metrics = tracker(service.url, request_timeout=0.2)
    event_id = metrics.track(reply())
    assert metrics.flush(5).complete
    assert service.ids() == [event_id, event_id]
    assert "timed out" in metrics.stats().last_error.lower()


def test_when_the_service_stays_away_only_the_newest_events_are_kept(fake):
    port = dead_port()
    metrics = tracker(f"http://127.0.0.1:{port}", max_queue_size=50, batch_size=10, flush_interval=0.005)
    ids = [metrics.track(reply(response_time_ms=i)) for i in range(200)]
    assert not metrics.flush(0.1).complete
    service = fake(port=port)
    assert metrics.flush(5).complete
    assert sorted(service.ids()) == sorted(ids[150:])
    assert (metrics.stats().created, metrics.stats().dropped) == (50, 150)


def test_track_never_raises_whatever_it_is_given_or_however_sending_fails():
    def exploding(*args: Any) -> Any:
        raise RuntimeError("transport exploded")

    metrics = tracker("http://127.0.0.1:9", sender=exploding)
    circular: dict[str, Any] = reply()
    circular["self"] = circular
    assert metrics.track(circular) is None
    assert metrics.track(None) is None  # type: ignore[arg-type]
    assert metrics.track(reply(response_time_ms=float("nan"))) is None
    assert isinstance(metrics.track(reply()), str)
    assert not metrics.flush(0.2).complete
    assert "transport exploded" in metrics.stats().last_error


def test_a_shutdown_that_cannot_reach_the_service_gives_up_and_counts_the_abandoned():
    def refused(*args: Any) -> Any:
        raise ConnectionRefusedError("refused")  # at once, so no request is in flight at the deadline

    metrics = tracker("http://127.0.0.1:9", sender=refused)
    metrics.track(reply())
    metrics.track(reply())
    assert not metrics.shutdown(0.3).complete
    assert (metrics.stats().abandoned, metrics.stats().pending) == (2, 0)


def test_a_script_that_ends_without_flushing_still_delivers_its_events_at_exit(fake):
    service = fake()
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import mlops_tracking as m;"
        "[m.track_metrics({'business_id': 'b', 'response_time_ms': 5, 'tokens_used': 1}) for _ in range(5)]"
    )
    env = {"MLOPS_SERVICE_URL": service.url, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script, str(Path(__file__).resolve().parent.parent)],
                          env=env, timeout=30, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(service.ids()) == 5


def test_track_reply_times_the_block_and_reports_a_failure_without_swallowing_it(fake):
    import mlops_tracking

    service = fake()
    mlops_tracking.configure(service_url=service.url, flush_at_exit=False)
    with mlops_tracking.track_reply(business_id="acme", conversation_id="c1") as event:
        event.update(tokens_used=42, intent_detected="general")
    with pytest.raises(KeyError, match="model down"):
        with mlops_tracking.track_reply(business_id="acme", conversation_id="c1"):
            raise KeyError("model down")
    assert mlops_tracking.flush(5).complete
    ok, failed = service.requests[0].events
    assert (ok["tokens_used"], ok["success_rate"] if "success_rate" in ok else 1, ok["intent_detected"]) == (42, 1, "general")
    assert (failed["success_rate"], failed["response_type"]) == (0, "error")
    assert all(isinstance(e["response_time_ms"], int) for e in (ok, failed))


def test_token_usage_prefers_the_providers_counts_and_estimates_only_without_them():
    estimated = calculate_token_usage("s" * 40, "u" * 8, "r" * 9)
    assert (estimated.total_tokens, estimated.estimated) == (15, True)
    assert estimated.event_fields() == {"tokens_used": 15}
    openai = calculate_token_usage("s" * 40, "u" * 8, "r" * 9, {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37})
    assert openai.event_fields() == {"tokens_used": 37, "input_tokens": 30, "output_tokens": 7}
    gemini = calculate_token_usage("", "", "", {"promptTokenCount": 11, "candidatesTokenCount": 4})
    assert (gemini.input_tokens, gemini.output_tokens, gemini.total_tokens) == (11, 4, 15)
    assert estimate_api_cost(1_000_000) == 0.1875
    assert estimate_api_cost(150) == 0.000028
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


def test_an_event_without_kb_version_gets_its_businesss_own_version_read_once_a_while(fake):
    service = fake()
    service.kb_versions.update({"clinic": "kb-aaaaaaaaaaaa", "salon": "kb-bbbbbbbbbbbb"})
    metrics = tracker(service.url)
    metrics.track(reply(business_id="clinic"))
    metrics.track(reply(business_id="salon"))
    metrics.track(reply(business_id="salon", kb_version="kb-mine"))
    assert metrics.flush(5).complete
    metrics.track(reply(business_id="clinic"))
    assert metrics.flush(5).complete
    sent = [(e["business_id"], e.get("kb_version")) for r in service.requests for e in r.events]
    assert sent == [
        ("clinic", "kb-aaaaaaaaaaaa"), ("salon", "kb-bbbbbbbbbbbb"), ("salon", "kb-mine"), ("clinic", "kb-aaaaaaaaaaaa")
    ]
    assert service.kb_lookups == ["clinic", "salon"]


def test_a_business_with_no_knowledge_base_version_or_kb_version_off_sends_events_without_one(fake):
    service = fake()
    metrics = tracker(service.url)
    metrics.track(reply(business_id="nobody"))
    assert metrics.flush(5).complete
    service.kb_versions["clinic"] = "kb-aaaaaaaaaaaa"
    off = tracker(service.url, kb_version=False)
    off.track(reply(business_id="clinic"))
    assert off.flush(5).complete
    assert ["kb_version" in e for r in service.requests for e in r.events] == [False, False]
    assert service.kb_lookups == ["nobody"]
