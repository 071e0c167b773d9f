"""Answers read while events arrive and the folder folds them equal the raw rows of the answer's own snapshot."""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.db import connection
from django.db.models import Max

from metrics_app import database
from metrics_app.analytics import rollups, selectors
from metrics_app.models import AIMetric

TZ = ZoneInfo("Asia/Kathmandu")  # +05:45: its hours start at a quarter past
BUSINESSES = ["river-clinic", "hill-salon", "lake-law"]


def live_events(now: datetime, seed: int = 11) -> list[dict[str, Any]]:
    """Conversations over the last six and a half hours, shuffled so that late and out-of-order events abound."""
    rng = random.Random(seed)
    events = []
    for n in range(140):
        business = rng.choice(BUSINESSES)
        start = now - timedelta(minutes=rng.randrange(2, 390))
        for turn in range(rng.randint(1, 7)):
            events.append({
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "business_id": business,
                "conversation_id": f"c-{n}",
                "timestamp": (start + timedelta(seconds=40 * turn + rng.randrange(30))).isoformat(),
                "response_time_ms": rng.randint(120, 8000),
                "tokens_used": rng.randint(20, 900),
                "appointment_requested": rng.random() < 0.25,
                "appointment_booked": rng.random() < 0.1,
                "human_handoff_requested": rng.random() < 0.05,
                "response_type": rng.choice(["text", "text", "error"]),
                "intent_detected": rng.choice(["booking", "pricing", "hours", None]),
            })
    rng.shuffle(events)
    return events


def expected(rows: list[dict[str, Any]], start: datetime, end: datetime, businesses: set[str] | None,
             intent: str | None) -> dict:
    """The figures from raw rows, in plain Python; with `intent`, of its events and of conversations with one."""
    rows = [r for r in rows if businesses is None or r["business_id"] in businesses]
    conversations: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if not r["conversation_id"]:
            continue
        c = conversations.setdefault((r["business_id"], r["conversation_id"]),
                                     {"first": r["timestamp"], "requested": False, "booked": False, "intents": set()})
        c["first"] = min(c["first"], r["timestamp"])
        c["requested"] |= r["appointment_requested"]
        c["booked"] |= r["appointment_booked"]
        c["intents"].add(r["intent_detected"])
    chosen = [r for r in rows if start <= r["timestamp"] < end and (intent is None or r["intent_detected"] == intent)]
    started = [c for c in conversations.values()
               if start <= c["first"] < end and (intent is None or intent in c["intents"])]
    every = [c for c in conversations.values() if start <= c["first"] < end]
    by_intent = Counter(r["intent_detected"] for r in rows if start <= r["timestamp"] < end)

    def hour(moment: datetime) -> str:
        return moment.astimezone(TZ).replace(minute=0, second=0, microsecond=0).isoformat()

    return {
        "events": len(chosen),
        "tokens": sum(r["tokens_used"] for r in chosen),
        "appointments_booked": sum(r["appointment_booked"] for r in chosen),
        "conversations": len(started),
        "conversations_booked": sum(c["booked"] for c in started),
        "conversations_with_request": sum(c["requested"] for c in started),
        "events_by_hour": dict(Counter(hour(r["timestamp"]) for r in chosen)),
        "conversations_by_hour": dict(Counter(hour(c["first"]) for c in started)),
        "events_by_hour_of_week": dict(Counter(
            (r["timestamp"].astimezone(TZ).isoweekday(), r["timestamp"].astimezone(TZ).hour) for r in chosen
        )),
        "events_by_intent": dict(by_intent) if intent is None else None,
        "conversations_by_intent": dict(Counter(i for c in every for i in c["intents"])) if intent is None else None,
    }


def answered(filters: selectors.Filters) -> dict:
    summary = selectors.summary(filters)
    intents = None if filters.intent else selectors.breakdown(filters, "intent", 100)
    series = selectors.timeseries(filters, "hour")
    peaks = selectors.peak_hours(filters)
    funnel = selectors.funnel(filters)
    assert funnel["steps"][0]["conversations"] == summary["conversations"]
    assert funnel["steps"][2]["conversations"] == summary["conversations_booked"]
    return {
        **{name: summary[name] for name in ("events", "tokens", "appointments_booked", "conversations",
                                            "conversations_booked", "conversations_with_request")},
        "events_by_hour": {p["start"]: p["events"] for p in series if p["events"]},
        "conversations_by_hour": {p["start"]: p["conversations"] for p in series if p["conversations"]},
        "events_by_hour_of_week": {(c["weekday"], c["hour"]): c["events"] for c in peaks if c["events"]},
        "events_by_intent": None if intents is None else {row["key"]: row["events"] for row in intents},
        "conversations_by_intent": None if intents is None else {
            row["key"]: row["conversations"] for row in intents if row["conversations"]
        },
    }


def test_every_answer_read_during_ingest_and_folding_equals_the_raw_rows_of_its_snapshot(live_service):
    service = live_service(workers=2, folder=True, extra_env={"MLOPS_FOLDER_BATCH": "40"})
    now = datetime.now(UTC).replace(microsecond=0)
    events = live_events(now)
    errors: list[str] = []

    def send() -> None:
        rng = random.Random(3)
        for i in range(0, len(events), 15):
            batch = events[i:i + 15]
            if rng.random() < 0.3:  # a retry of earlier events along with the new ones
                batch = batch + rng.sample(events[:i + 1], min(5, i + 1))
            status, _, body = service.request("POST", "/track/batch", {"events": batch})
            if status != 200:
                errors.append(f"{status} {body}")

    sender = threading.Thread(target=send)
    sender.start()
    start, end = now - timedelta(hours=6, minutes=7, seconds=13), now - timedelta(minutes=3, seconds=31)
    periods = [
        selectors.Filters(businesses=None, start=start, end=end, tz=TZ),
        selectors.Filters(businesses=frozenset({"hill-salon"}), start=start, end=end, tz=TZ),
        selectors.Filters(businesses=None, start=start, end=end, tz=TZ, intent="booking"),
    ]
    checks = with_tail = with_folded = 0
    try:
        while sender.is_alive() or checks < 12:
            for filters in periods:
                with database.snapshot(connection):
                    folded_through = rollups.folded_through()
                    highest = AIMetric.objects.aggregate(m=Max("id"))["m"] or 0
                    answer = answered(filters)
                    rows = list(AIMetric.objects.values(
                        "business_id", "conversation_id", "timestamp", "tokens_used",
                        "appointment_requested", "appointment_booked", "intent_detected",
                    ))
                businesses = set(filters.businesses) if filters.businesses else None
                assert answer == expected(rows, filters.start, filters.end, businesses, filters.intent), (
                    f"check {checks}: folded through {folded_through} of {highest}"
                )
                checks += 1
                with_tail += folded_through < highest
                with_folded += folded_through > 0
    finally:
        sender.join()
    assert not errors, errors[:3]
    assert AIMetric.objects.count() == len(events)
    # The answers above were read with a tail to add and with folded rollups, not only one or the other.
    assert with_tail and with_folded, (checks, with_tail, with_folded)
