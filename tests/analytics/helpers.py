"""Events for the analytics tests, and the figures computed independently from the raw rows.

The expected values here are plain Python over `AIMetric` rows (no ORM
aggregates, no selectors), so a wrong query in the service cannot agree with
them by sharing code.
"""

from __future__ import annotations

import random
import statistics
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from metrics_app.ingest import services
from metrics_app.ingest.validation import check_event
from metrics_app.models import AIMetric

# A fixed "now" for the data: every event lies in the ten days before it.
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
BUSINESSES = {
    "kolkata-clinic": "Asia/Kolkata",
    "kathmandu-salon": "Asia/Kathmandu",
    "eucla-motel": "Australia/Eucla",
    "london-dental": "Europe/London",
}
MODELS = ["gemini-1.5-flash", "gemini-1.5-flash-002", "gpt-4o-mini", "in-house-llm", None]
INTENTS = ["booking", "pricing", "hours", "general", None]
# Customers' messages sent for scoring; the service stores VADER's score of each, never the text.
MESSAGES = [
    "Thanks so much, that is perfect!",
    "This is the third time I ask and nobody answers. Terrible.",
    "Can I book a cleaning on Tuesday?",
    "I'm not happy with the price, but the staff were lovely :)",
]


def make_events(seed: int = 7, conversations: int = 60) -> list[dict[str, Any]]:
    """Raw payloads, as a chat app would send them, in a shuffled (late, out-of-order) order."""
    rng = random.Random(seed)
    cache_rng = random.Random(seed + 1)  # its own stream: the cached tokens leave the other figures as they were
    mood_rng = random.Random(seed + 2)  # and the sentiment its own
    payloads = []
    for n in range(conversations):
        business = rng.choice(list(BUSINESSES))
        start = NOW - timedelta(days=10) + timedelta(minutes=rng.randrange(0, 10 * 24 * 60))
        model = rng.choice(MODELS)
        prompt = rng.choice(["v1", "v2"])
        turns = rng.randint(1, 6)
        for turn in range(turns):
            moment = start + timedelta(minutes=3 * turn, seconds=rng.randrange(60))
            tokens_in = rng.randint(50, 900)
            tokens_out = rng.randint(10, 300)
            event: dict[str, Any] = {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "business_id": business,
                "conversation_id": f"conv-{n}",
                "response_time_ms": rng.randint(150, 9000),
                "tokens_used": tokens_in + tokens_out,
                "timestamp": moment.isoformat(),
                "model_name": model,
                "intent_detected": rng.choice(INTENTS),
                "response_type": rng.choice(["text", "text", "text", "error", "appointment"]),
                "success_rate": rng.choice([1, 1, 1, 0.5, 0]),
                "appointment_requested": rng.random() < 0.3,
                "appointment_booked": rng.random() < 0.1,
                "human_handoff_requested": rng.random() < 0.05,
                "prompt_version": prompt,
                "kb_version": rng.choice(["kb-1", "kb-2", None]),
            }
            shape = rng.random()
            if shape < 0.6:
                event["input_tokens"], event["output_tokens"] = tokens_in, tokens_out
                if cache_rng.random() < 0.5:  # a prompt cache served part of the prompt, and wrote some of it
                    event["cache_read_input_tokens"] = cache_rng.randint(0, tokens_in // 2)
                    event["cache_write_input_tokens"] = cache_rng.choice([None, 0, tokens_in // 4])
                if cache_rng.random() < 0.3:
                    event["reasoning_output_tokens"] = cache_rng.randint(0, tokens_out)
            elif shape < 0.7:
                event["input_tokens"] = tokens_in
            if rng.random() < 0.7:
                event["api_cost_usd"] = round(rng.uniform(0, 0.01), 6)
            event.update(_mood(mood_rng))
            payloads.append(event)
    # A few events outside any conversation, with only tokens_used (an estimated cost).
    for _ in range(8):
        payloads.append({
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "business_id": rng.choice(list(BUSINESSES)),
            "response_time_ms": rng.randint(100, 2000),
            "tokens_used": rng.randint(10, 500),
            "timestamp": (NOW - timedelta(hours=rng.randint(1, 200))).isoformat(),
            "model_name": "gpt-4o-mini",
        })
    rng.shuffle(payloads)
    return payloads


def _mood(rng: random.Random) -> dict[str, Any]:
    """A message for the service to score, a score of the client's own, or neither."""
    mood = rng.random()
    if mood < 0.3:
        return {"user_message": rng.choice(MESSAGES)}
    if mood < 0.5:
        return {"user_sentiment": round(rng.uniform(-1, 1), 4)}
    return {}


def store(payloads: Iterable[dict[str, Any]], chunk: int = 37) -> None:
    """Ingest through the service, in odd-sized batches, as /track/batch would."""
    values = []
    for payload in payloads:
        checked = check_event(payload)
        assert checked.ok, checked.errors
        values.append(checked.values)
    for i in range(0, len(values), chunk):
        services.record_events(values[i:i + chunk])


# --- Independent figures.


def rows() -> list[dict[str, Any]]:
    return list(AIMetric.objects.values())


def failed(row: dict[str, Any]) -> bool:
    return row["success_rate"] == 0 or row["response_type"] == "error"


def quantile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(fraction * 100) - 1]


def select(all_rows: list[dict[str, Any]], start: datetime, end: datetime, businesses: set[str] | None = None,
           **filters: str) -> list[dict[str, Any]]:
    return [
        r for r in all_rows
        if start <= r["timestamp"] < end
        and (businesses is None or r["business_id"] in businesses)
        and all(r[field] == value for field, value in filters.items())
    ]


def expected_event_figures(chosen: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [r["response_time_ms"] for r in chosen if r["response_time_ms"] is not None]
    n = len(chosen)
    cost = sum((r["cost_usd"] or Decimal(0) for r in chosen), Decimal(0))
    cache_read = sum(r["cache_read_input_tokens"] or 0 for r in chosen)
    input_tokens = sum(r["input_tokens"] or 0 for r in chosen)
    scores = [float(r["user_sentiment"]) for r in chosen if r["user_sentiment"] is not None]
    return {
        "events": n,
        "errors": sum(failed(r) for r in chosen),
        "success_rate": float(sum(r["success_rate"] for r in chosen) / n) if n else None,
        "latency_mean_ms": sum(latencies) / len(latencies) if latencies else None,
        "latency_p50_ms": quantile(latencies, 0.5),
        "latency_p95_ms": quantile(latencies, 0.95),
        "latency_p99_ms": quantile(latencies, 0.99),
        "tokens": sum(r["tokens_used"] or 0 for r in chosen),
        "input_tokens": sum(r["input_tokens"] or 0 for r in chosen),
        "cache_read_input_tokens": cache_read,
        "cache_write_input_tokens": sum(r["cache_write_input_tokens"] or 0 for r in chosen),
        "reasoning_output_tokens": sum(r["reasoning_output_tokens"] or 0 for r in chosen),
        "cached_input_share": cache_read / input_tokens if input_tokens else None,
        "cost_usd": float(cost),
        "cache_savings_usd": float(sum((r["cache_savings_usd"] or Decimal(0) for r in chosen), Decimal(0))),
        "client_cost_usd": float(sum((r["api_cost_usd"] or Decimal(0) for r in chosen), Decimal(0))),
        "unpriced_events": sum(r["cost_basis"] in ("client", "none") for r in chosen),
        "estimated_cost_events": sum(r["cost_basis"] == "estimated" for r in chosen),
        "appointments_booked": sum(r["appointment_booked"] for r in chosen),
        "human_handoffs": sum(r["human_handoff_requested"] for r in chosen),
        "sentiment_mean": sum(scores) / len(scores) if scores else None,
        "sentiment_scored_events": len(scores),
    }


def expected_conversations(all_rows: list[dict[str, Any]], start: datetime, end: datetime,
                           businesses: set[str] | None = None, **filters: str) -> list[dict[str, Any]]:
    """Conversations that started in [start, end), each with its flags over all its events."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in all_rows:
        if r["conversation_id"]:
            grouped[(r["business_id"], r["conversation_id"])].append(r)
    result = []
    for (business_id, _), events in grouped.items():
        first = min(e["timestamp"] for e in events)
        if not start <= first < end or (businesses is not None and business_id not in businesses):
            continue
        if filters and not any(all(e[f] == v for f, v in filters.items()) for e in events):
            continue
        result.append({
            "first": first,
            "requested": any(e["appointment_requested"] for e in events),
            "booked": any(e["appointment_booked"] for e in events),
            "handoff": any(e["human_handoff_requested"] for e in events),
        })
    return result


def local_hour(moment: datetime, tz: str) -> datetime:
    return moment.astimezone(ZoneInfo(tz)).replace(minute=0, second=0, microsecond=0, tzinfo=None)


def rollup_tables() -> tuple[list, ...]:
    """Every rollup row (the sketches unpacked), in a comparable form."""
    from metrics_app.analytics import rollups, sketches
    from metrics_app.models import ConversationRollup, EventRollup, LatencySketch

    def table(model, fields):
        return sorted(model.objects.values_list(*fields))

    return (
        table(EventRollup, ["business_id", "dimension", "value", "bucket", *rollups.EVENT_SUMS]),
        sorted((*key, sketches.as_dict(blob)) for *key, blob in LatencySketch.objects.values_list(
            "business_id", "dimension", "value", "span_minutes", "bucket", "bins")),
        [r for r in table(ConversationRollup, ["business_id", "dimension", "value", "bucket",
                                               *rollups.CONVERSATION_SUMS]) if any(r[4:])],
    )

