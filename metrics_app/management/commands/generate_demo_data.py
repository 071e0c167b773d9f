"""`manage.py generate_demo_data --events N`: realistic receptionist traffic for demos and benchmarks.

Every event is built as the chat app would send it, validated by the same
rules as `/track`, and stored by `services.record_events` in chunks, so every
table derived from events (prices, rollups, conversations) stays right.
"""

from __future__ import annotations

import math
import random
import sys
import time
import uuid
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from tqdm import tqdm

from metrics_app import horizon
from metrics_app.ingest import services
from metrics_app.ingest.validation import check_event
from metrics_app.models import Business, OpeningHours

CHUNK_SIZE = 500  # the batch endpoint's own limit: one INSERT per chunk
MAX_EVENTS = 50_000_000


@dataclass(frozen=True)
class DemoBusiness:
    id: str
    name: str
    time_zone: str
    weight: float  # share of the traffic


# Time zones include half- and quarter-hour offsets (Adelaide, Kolkata, Kathmandu),
# so that charts and analytics in local time can be checked on demo data too.
BUSINESSES = (
    DemoBusiness("bright-smile-dental", "Bright Smile Dental", "America/New_York", 3.0),
    DemoBusiness("techconsult-pro", "TechConsult Pro", "Europe/London", 2.0),
    DemoBusiness("glow-hair-studio", "Glow Hair Studio", "Europe/Berlin", 1.5),
    DemoBusiness("paws-vet-clinic", "Paws Veterinary Clinic", "Australia/Adelaide", 1.2),
    DemoBusiness("mountain-physio", "Mountain Physio", "Asia/Kathmandu", 0.8),
    DemoBusiness("city-law-partners", "City Law Partners", "Asia/Kolkata", 0.5),
)

# (model name, share of conversations, median latency in ms)
MODELS = (
    ("gemini-1.5-flash", 0.55, 850),
    ("gemini-2.0-flash", 0.25, 700),
    ("gpt-4o-mini", 0.15, 1300),
    ("claude-3-5-haiku", 0.05, 1600),
)
# The seed client's estimate: $0.1875 per million tokens, whatever the model.
CLIENT_COST_PER_MILLION = 0.1875

# What a customer opens a conversation with, and how often.
OPENING_INTENTS = (
    ("appointment_booking", 0.30),
    ("pricing", 0.15),
    ("opening_hours", 0.12),
    ("services", 0.12),
    ("general", 0.10),
    ("location", 0.07),
    ("reschedule", 0.06),
    ("cancellation", 0.04),
    ("insurance", 0.02),
    ("complaint", 0.02),
)
FOLLOW_UP_INTENTS = ("general", "pricing", "services", "opening_hours", "location")
# Local hours of the day, weighted: quiet at night, busy late morning and early evening.
HOUR_WEIGHTS = (1, 0.5, 0.3, 0.2, 0.2, 0.4, 1, 2.5, 4.5, 6, 6.5, 6, 5, 5, 5.5, 5, 4.5, 5, 5.5, 4.5, 3.5, 2.5, 2, 1.5)
WEEKDAY_WEIGHTS = (1.2, 1.15, 1.1, 1.1, 1.0, 0.7, 0.45)  # Monday first


class DemoTraffic:
    """Conversations of plausible events, as the chat app would send them.

    Each conversation draws from its own random stream, seeded from the master
    one, and its start time from yet another: the time-of-day sampling draws a
    number of values that depends on the clock, and must not shift anything
    else. So a seed always gives the same conversations with the same event
    ids, and a rerun stores only duplicates.
    """

    def __init__(self, *, rng: random.Random, businesses: tuple[DemoBusiness, ...], days: int, end: datetime) -> None:
        self.rng = rng
        self.businesses = businesses
        self.start = end - timedelta(days=days)
        self.end = end
        self.days = days
        # The prompt changed two thirds of the way through the period; the KB is rebuilt weekly.
        self.prompt_switch = self.start + timedelta(days=days * 2 / 3)

    @staticmethod
    def _pick(rng: random.Random, weighted: tuple[tuple[Any, float], ...]) -> Any:
        return rng.choices([item for item, _ in weighted], weights=[w for _, w in weighted])[0]

    def _conversation_start(self, rng: random.Random, business: DemoBusiness, duration: float) -> datetime:
        """A start time that leaves room for the whole conversation, following local hours and weekdays."""
        zone = zoneinfo.ZoneInfo(business.time_zone)
        span = max(1.0, self.days * 86400 - duration)
        while True:
            moment = self.start + timedelta(seconds=rng.uniform(0, span))
            local = moment.astimezone(zone)
            weight = HOUR_WEIGHTS[local.hour] * WEEKDAY_WEIGHTS[local.weekday()]
            if rng.uniform(0, 6.5 * 1.2) <= weight:
                return moment

    @staticmethod
    def _latency_ms(rng: random.Random, median_ms: int, turn: int) -> int:
        # Log-normal with a long tail; longer histories take a little longer.
        value = median_ms * (1 + 0.04 * turn) * math.exp(rng.gauss(0, 0.45))
        if rng.random() < 0.01:  # a slow provider moment
            value *= rng.uniform(4, 12)
        return max(80, min(int(value), 120_000))

    def conversations(self) -> Iterator[list[dict[str, Any]]]:
        while True:
            yield self._conversation(random.Random(self.rng.getrandbits(64)))

    def _conversation(self, rng: random.Random) -> list[dict[str, Any]]:
        business = rng.choices(self.businesses, weights=[b.weight for b in self.businesses])[0]
        model, _, median_ms = rng.choices(MODELS, weights=[m[1] for m in MODELS])[0]
        conversation_id = f"conv-{uuid.UUID(int=rng.getrandbits(128)).hex[:16]}"
        session_id = f"sess-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
        opening = self._pick(rng, OPENING_INTENTS)
        wants_booking = opening in ("appointment_booking", "reschedule") or rng.random() < 0.12
        turns = rng.choices((1, 2, 3, 4, 5, 6, 7, 8), weights=(14, 20, 20, 16, 12, 8, 6, 4))[0]
        if wants_booking:
            turns = max(turns, 3)
        handoff_turn = turns - 1 if (opening == "complaint" and rng.random() < 0.6) or rng.random() < 0.04 else None
        books = wants_booking and handoff_turn is None and rng.random() < 0.62
        gaps = [0.0] + [rng.uniform(15, 120) for _ in range(turns - 1)]  # seconds the customer takes to answer
        started = self._conversation_start(random.Random(rng.getrandbits(64)), business, sum(gaps))
        prompt_version = "receptionist-v2" if started >= self.prompt_switch else "receptionist-v1"
        kb_week = (started - self.start).days // 7
        kb_version = f"kb-{(self.start + timedelta(days=7 * kb_week)):%Y%m%d}"

        events = []
        moment = started
        history_tokens = 0
        for turn in range(turns):
            moment += timedelta(seconds=gaps[turn])
            intent = opening if turn == 0 else (
                "appointment_booking" if wants_booking and turn >= turns - 2 else rng.choice(FOLLOW_UP_INTENTS)
            )
            response_type = "text"
            requested = booked = handoff = False
            if wants_booking and turn == turns - 2:
                response_type, requested = "appointment_booking", True
            if wants_booking and turn == turns - 1:
                response_type, requested, booked = "appointment_booking", True, books
            if handoff_turn == turn:
                response_type, handoff = "human_handoff", True
            user_length = int(rng.uniform(12, 220))
            failed = rng.random() < 0.015
            if failed:
                # As the seed's chat app reports a failure: no tokens, intent "error".
                event = {
                    "response_time_ms": self._latency_ms(rng, median_ms, turn) * 3,
                    "success_rate": 0.0, "tokens_used": 0, "input_tokens": 0, "output_tokens": 0,
                    "api_cost_usd": 0.0, "intent_detected": "error", "response_type": "error",
                    "appointment_requested": False, "appointment_booked": False,
                    "human_handoff_requested": True, "ai_response_length": 0,
                }
            else:
                ai_length = int(rng.uniform(60, 600))
                input_tokens = 420 + history_tokens + user_length // 4  # system prompt + history + message
                # From the second turn on the provider's prompt cache holds the system prompt and the history.
                cached = 420 + history_tokens if turn else None
                output_tokens = max(12, ai_length // 4 + rng.randint(-5, 20))
                history_tokens += user_length // 4 + output_tokens
                tokens = input_tokens + output_tokens
                event = {
                    "response_time_ms": self._latency_ms(rng, median_ms, turn),
                    "success_rate": 1.0, "tokens_used": tokens, "input_tokens": input_tokens,
                    "output_tokens": output_tokens, "cache_read_input_tokens": cached,
                    "api_cost_usd": round(tokens / 1_000_000 * CLIENT_COST_PER_MILLION, 6),
                    "intent_detected": intent, "response_type": response_type,
                    "appointment_requested": requested, "appointment_booked": booked,
                    "human_handoff_requested": handoff, "ai_response_length": ai_length,
                }
            score = _demo_sentiment(conversation_id, turn, opening, booked=books, handed_off=handoff_turn is not None)
            if score is not None and not failed:
                event["user_sentiment"] = score
            event.update(
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                business_id=business.id, conversation_id=conversation_id, session_id=session_id,
                model_name=model, user_message_length=user_length, prompt_version=prompt_version,
                kb_version=kb_version, timestamp=moment.isoformat(),
            )
            events.append(event)
            if failed or handoff:
                break
        return events


def _demo_sentiment(conversation_id: str, turn: int, opening: str, *, booked: bool, handed_off: bool) -> float | None:
    """A client's score of the customer's message, from its own random stream (the traffic stays as it was).

    Four messages in five are scored; complaints and conversations handed to a human lean negative, bookings
    positive, the rest sit around neutral.
    """
    mood = random.Random(f"{conversation_id}:{turn}")
    if mood.random() < 0.2:
        return None
    lean = -0.45 if opening == "complaint" or handed_off else 0.35 if booked else 0.05
    return round(max(-1.0, min(1.0, mood.gauss(lean, 0.35))), 4)


def demo_events(
    count: int, *, days: int, seed: int | None, businesses: int, end: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """`count` demo events (whole conversations, the last one cut short), as payloads for /track."""
    traffic = DemoTraffic(
        rng=random.Random(seed), businesses=BUSINESSES[:businesses], days=days, end=end or datetime.now(UTC)
    )
    produced = 0
    for conversation in traffic.conversations():
        for event in conversation:
            if produced == count:
                return
            produced += 1
            yield event


def _demo_businesses(chosen: tuple[DemoBusiness, ...]) -> None:
    """The demo businesses; one made now opens weekdays 09:00-17:30 and Saturday mornings, in its own zone."""
    days = [(weekday, dt_time(9), dt_time(17, 30)) for weekday in range(1, 6)] + [(6, dt_time(9), dt_time(12))]
    for demo in chosen:
        business, made = Business.objects.get_or_create(
            id=demo.id, defaults={"name": demo.name, "time_zone": demo.time_zone}
        )
        if made:
            OpeningHours.objects.bulk_create(
                OpeningHours(business=business, weekday=weekday, opens=opens, closes=closes)
                for weekday, opens, closes in days
            )


class Command(BaseCommand):
    help = (
        "Generate realistic demo traffic: businesses, conversations with plausible intents, latencies, "
        "bookings, handoffs and failures, stored through the same path as /track."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--events", type=int, default=5000, help="How many events to store (default 5000).")
        parser.add_argument("--days", type=int, default=30, help="Spread over the last N days (default 30).")
        parser.add_argument(
            "--businesses", type=int, default=len(BUSINESSES),
            help=f"How many demo businesses, 1 to {len(BUSINESSES)} (default all).",
        )
        parser.add_argument(
            "--seed", type=int, default=None,
            help="Random seed; the same seed gives the same event ids, so a rerun stores only duplicates.",
        )
        parser.add_argument("--no-progress", action="store_true", help="Do not show the progress bar.")

    def handle(self, *args: Any, events: int, days: int, businesses: int, seed: int | None,
               no_progress: bool, **options: Any) -> None:
        if not 1 <= events <= MAX_EVENTS:
            raise CommandError(f"--events must be between 1 and {MAX_EVENTS}")
        if not 1 <= days <= 3650:
            raise CommandError("--days must be between 1 and 3650")
        kept = horizon.retention_days()
        if kept is not None and days > kept:
            raise CommandError(
                f"--days must be at most {kept}: raw events are kept {kept} days (MLOPS_RAW_RETENTION_DAYS), "
                "and older ones are refused"
            )
        if not 1 <= businesses <= len(BUSINESSES):
            raise CommandError(f"--businesses must be between 1 and {len(BUSINESSES)}")

        chosen = BUSINESSES[:businesses]
        began = time.monotonic()
        created = duplicates = 0
        conversations: set[tuple[str, str]] = set()
        try:
            _demo_businesses(chosen)
            progress = tqdm(
                total=events, unit="event", unit_scale=True, desc="Demo events",
                file=sys.stderr, disable=True if no_progress else None,
            )
            with progress:
                chunk: list[dict[str, Any]] = []
                for payload in demo_events(events, days=days, seed=seed, businesses=businesses):
                    checked = check_event(payload)
                    if not checked.ok:  # a generator bug, not bad luck: stop loudly
                        raise CommandError(f"a generated event failed validation: {checked.errors}")
                    chunk.append(checked.values)
                    conversations.add((payload["business_id"], payload["conversation_id"]))
                    if len(chunk) == CHUNK_SIZE:
                        created, duplicates = self._store(chunk, created, duplicates)
                        progress.update(len(chunk))
                        chunk = []
                if chunk:
                    created, duplicates = self._store(chunk, created, duplicates)
                    progress.update(len(chunk))
        except DatabaseError as exc:
            raise CommandError(f"the database refused the demo data: {exc}") from exc

        elapsed = time.monotonic() - began
        self.stdout.write(self.style.SUCCESS(
            f"Stored {created} new events ({duplicates} duplicates) in {len(conversations)} conversations "
            f"for {len(chosen)} businesses over the last {days} days in {elapsed:.1f} s."
        ))

    @staticmethod
    def _store(chunk: list[dict[str, Any]], created: int, duplicates: int) -> tuple[int, int]:
        outcomes = services.record_events(chunk)
        new = sum(1 for outcome in outcomes if outcome.created)
        return created + new, duplicates + len(outcomes) - new
