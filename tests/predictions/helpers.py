"""Conversations with a known booking signal (or none), sent through the ingest and folded as the folder would."""

from __future__ import annotations

import math
import random
import uuid
from datetime import datetime, timedelta
from typing import Any

from tests.analytics.helpers import store as store_unfolded
from tests.helpers import fold_all

INTENTS = ("booking", "pricing", "hours", "complaint", "general")


def chat_events(business_id: str, count: int, seed: int, *, end: datetime, days: int = 60,
                signal: bool = True, prefix: str = "chat") -> list[dict[str, Any]]:
    """Events of `count` conversations that all started within `days` days before `end` (and ended by then).

    With `signal`, a conversation whose customer asks about booking or pricing, requests an appointment on the
    first reply and is in a good mood books far more often; without it, every conversation books with the same
    30% chance, whatever its events say. A booking is the conversation's last reply, a confirmation after the
    talk: every reply before it is a prefix, booked or not.
    """
    rng = random.Random(seed)
    events = []
    for n in range(count):
        first = end - timedelta(days=days) + timedelta(minutes=rng.randrange((days - 1) * 24 * 60))
        turns = rng.randint(1, 6)
        keen = rng.random() < 0.4
        intent = rng.choice(INTENTS[:2] if keen else INTENTS[2:])
        mood = rng.uniform(0.1, 0.9) if keen else rng.uniform(-0.9, 0.3)
        requested = keen and rng.random() < 0.7
        chance = (1 / (1 + math.exp(-(2.5 * keen + 1.5 * requested + 1.0 * mood - 2.5)))) if signal else 0.3
        booked = rng.random() < chance
        for turn in range(turns + booked):
            events.append({
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "business_id": business_id,
                "conversation_id": f"{prefix}-{seed}-{n}",
                "timestamp": (first + timedelta(minutes=2 * turn, seconds=rng.randrange(60))).isoformat(),
                "response_time_ms": rng.randint(300, 4000),
                "tokens_used": 200,
                "intent_detected": intent,
                "appointment_requested": requested and turn == 0,
                "appointment_booked": turn == turns,
                "user_sentiment": round(max(-1.0, min(1.0, mood + rng.uniform(-0.2, 0.2))), 4),
                "prompt_version": rng.choice(("v1", "v2")),
                "kb_version": "kb-3",
            })
    return events


def store(payloads: list[dict[str, Any]], chunk: int = 250) -> None:
    """Ingest through the service, in batches as /track/batch would, then fold."""
    store_unfolded(payloads, chunk)
    fold_all()
