"""The Python client against the real service, and its own suite (against a stand-in service)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
from mlops_tracking import MetricsTracker, calculate_token_usage  # clients/python is on sys.path (conftest.py)

from metrics_app.models import AIMetric, Business
from tests.clients.helpers import PY_DIR

pytestmark = pytest.mark.slow


def reply(business_id: str, **overrides):
    return {
        "business_id": business_id, "conversation_id": "py-live", "session_id": "py-session",
        "response_time_ms": 850, "tokens_used": 120, "input_tokens": 100, "output_tokens": 20,
        "api_cost_usd": 0.00002, "model_name": "gemini-1.5-flash", "intent_detected": "general",
        "response_type": "text", **overrides,
    }


def test_the_real_service_stores_each_event_once_and_a_resend_only_counts_duplicates(live_service, business, make_key):
    _, raw_key = make_key(business, can_ingest=True)
    service = live_service(workers=2)
    first = MetricsTracker(service.url, raw_key, batch_size=50, flush_at_exit=False)
    ids = [first.track(reply(business.id, response_time_ms=100 + i)) for i in range(120)]
    assert first.flush(20).complete
    assert first.stats().created == 120

    again = MetricsTracker(service.url, raw_key, batch_size=500, flush_at_exit=False)
    for event_id in ids:
        again.track(reply(business.id, event_id=event_id))
    assert again.flush(20).complete
    assert (again.stats().created, again.stats().duplicates) == (0, 120)

    stored = Counter(str(e) for e in AIMetric.objects.filter(business_id=business.id).values_list("event_id", flat=True))
    assert stored == Counter(ids)
    row = AIMetric.objects.get(event_id=ids[7])
    assert (row.response_time_ms, row.input_tokens, row.output_tokens) == (107, 100, 20)


# Each provider's usage object as its API returns it, and the event fields it must become.
USAGES = [
    ("gpt-4o-mini", {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                     "prompt_tokens_details": {"cached_tokens": 1024},
                     "completion_tokens_details": {"reasoning_tokens": 120}},
     (1200, 300, 1024, None, 120)),
    ("claude-3-5-haiku-20241022", {"input_tokens": 200, "output_tokens": 150, "cache_read_input_tokens": 3000,
                                   "cache_creation_input_tokens": 1000},
     (4200, 150, 3000, 1000, None)),
    ("gemini-2.5-flash", {"promptTokenCount": 900, "candidatesTokenCount": 100, "thoughtsTokenCount": 250,
                          "cachedContentTokenCount": 600, "totalTokenCount": 1250},
     (900, 350, 600, None, 250)),
]


def test_provider_usage_objects_are_stored_whole_with_their_cached_and_reasoning_parts(
    live_service, published_prices, business, make_key
):
    _, raw_key = make_key(business, can_ingest=True)
    service = live_service(workers=1)
    tracker = MetricsTracker(service.url, raw_key, flush_at_exit=False)
    ids = {}
    for model, usage, _ in USAGES:
        tokens = calculate_token_usage("system", "user", "reply", usage=usage)
        ids[model] = tracker.track(reply(business.id, model_name=model, api_cost_usd=None, **tokens.event_fields()))
    assert tracker.flush(20).complete

    for model, _, (tokens_in, tokens_out, read, write, reasoning) in USAGES:
        row = AIMetric.objects.get(event_id=ids[model])
        assert (row.input_tokens, row.output_tokens, row.tokens_used) == (tokens_in, tokens_out, tokens_in + tokens_out)
        assert (row.cache_read_input_tokens, row.cache_write_input_tokens, row.reasoning_output_tokens) == (
            read, write, reasoning)
        assert row.cost_basis == "tokens" and row.cache_savings_usd > 0


def test_an_unknown_key_or_another_business_loses_the_events_without_retrying(live_service, business, make_key):
    other = Business.objects.create(id="other-clinic", name="Other Clinic", time_zone="UTC")
    _, other_key = make_key(other, can_ingest=True)
    _, read_only = make_key(business, can_ingest=False, can_read=True)
    service = live_service(workers=2)
    for key, status in (("mlk_unknown_000000000000", 401), (other_key, 403), (read_only, 403)):
        metrics = MetricsTracker(service.url, key, flush_at_exit=False)
        metrics.track(reply(business.id))
        assert metrics.flush(10).complete
        stats = metrics.stats()
        assert (stats.refused, stats.retries, stats.created) == (1, 0, 0)
        assert stats.last_error.startswith(f"HTTP {status}")
    assert not AIMetric.objects.filter(business_id=business.id).exists()


def test_the_python_clients_own_suite_passes():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MLOPS_", "DATABASE_"))}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q"], cwd=PY_DIR, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout
