"""Conversations of an A/B experiment, as a chat app that assigns them with the clients' hash sends them."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from typing import Any

from metrics_app.experiments.assignment import assign_variant


def experiment_conversations(business_id: str, count: int, seed: int, *, start: datetime, days: int, name: str,
                             booking: dict[str, float], split: float = 0.5) -> list[dict[str, Any]]:
    """Events of `count` conversations over `days` days from `start`, each in the v6 or v7 arm the hash gives it.

    Each conversation books with its arm's rate in `booking`; v7's replies are 400 ms slower; now and then a
    first turn carries no prompt version (the conversation still belongs to its arm).
    """
    rng = random.Random(seed)
    events = []
    for n in range(count):
        conversation = f"{business_id}-chat-{seed}-{n}"
        version = assign_variant(name, conversation, ("v6", "v7"), split)
        first = start + timedelta(minutes=rng.randrange(days * 24 * 60))
        turns = rng.randint(1, 4)
        booked_at = rng.randrange(turns) if rng.random() < booking[version] else None
        for turn in range(turns):
            failed = rng.random() < 0.05
            events.append({
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "business_id": business_id,
                "conversation_id": conversation,
                "timestamp": (first + timedelta(minutes=2 * turn)).isoformat(),
                "response_time_ms": rng.randint(300, 4000) + (400 if version == "v7" else 0),
                "tokens_used": 300,
                "model_name": "in-house-llm",  # unpriced: the client's cost is the analytics cost
                "api_cost_usd": round(rng.uniform(0.0005, 0.004), 6),
                "prompt_version": version if turn or rng.random() > 0.1 else None,
                "appointment_requested": booked_at == turn or rng.random() < 0.1,
                "appointment_booked": booked_at == turn,
                "human_handoff_requested": rng.random() < 0.03,
                "success_rate": 0 if failed else 1,
                "response_type": "error" if failed else "text",
            })
    return events
