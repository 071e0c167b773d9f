"""The features of a conversation prefix: what was known after its k-th reply, and nothing later.

For a conversation's events in time order (then id), the prefix of turn k is
its first k events. Its features, in this order (`feature_names`):

- `turns`: k, counted up to PREFIX_CAP (training never sees more);
- `log_minutes`: log(1 + minutes from the first event to the k-th);
- `requested`, `handoff`: whether any event so far requested an appointment
  or a human (0/1);
- `log_latency_ms`: log(1 + the mean response time so far, ms); 0 without one;
- `hour_sin`, `hour_cos`: the local time of day of the k-th event in the
  business's time zone, on the unit circle (23:59 is next to 00:00);
- `weekend`: the k-th event is on a Saturday or Sunday there;
- `has_sentiment`, `sentiment_latest`, `sentiment_mean`: whether any event so
  far carries the customer's sentiment, the latest one and their mean (0 when
  none);
- `intent:<name>` for each of the business's most common intents and
  `intent:other`: whether an event so far had that intent (an event without
  one adds nothing);
- `prompt_version:<v>` / `kb_version:<v>` for the most common values (the
  empty value, no version sent, is one of them when common) and `...:other`:
  the k-th event's version.

The vocabularies come from the training conversations only, most events
first, ties by name.
"""

from __future__ import annotations

import math
import zoneinfo
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Longer conversations give their first PREFIX_CAP prefixes only: bounded work, and the 21st turn says little new.
PREFIX_CAP = 20
MAX_INTENTS = 8
MAX_VERSIONS = 5
OTHER = "other"

# The event columns the features read, in the order `Event.from_row` takes them (one values_list query).
EVENT_COLUMNS = (
    "conversation_id", "timestamp", "intent_detected", "appointment_requested", "appointment_booked",
    "human_handoff_requested", "response_time_ms", "user_sentiment", "prompt_version", "kb_version",
)

NUMERIC_FEATURES = (
    "turns", "log_minutes", "requested", "handoff", "log_latency_ms", "hour_sin", "hour_cos", "weekend",
    "has_sentiment", "sentiment_latest", "sentiment_mean",
)


@dataclass(frozen=True)
class Event:
    """One reply, as the features see it."""

    timestamp: datetime
    intent: str
    requested: bool
    booked: bool
    handoff: bool
    latency_ms: int | None
    sentiment: float | None
    prompt_version: str
    kb_version: str

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Event:
        """From a row of EVENT_COLUMNS (its first item, the conversation id, is the caller's)."""
        _, timestamp, intent, requested, booked, handoff, latency, sentiment, prompt, kb = row
        return cls(timestamp=timestamp, intent=intent or "", requested=bool(requested), booked=bool(booked),
                   handoff=bool(handoff), latency_ms=latency, sentiment=None if sentiment is None else float(sentiment),
                   prompt_version=prompt or "", kb_version=kb or "")


@dataclass(frozen=True)
class Vocabulary:
    """The values that get a column of their own; every other value is `other`."""

    intents: tuple[str, ...]
    prompt_versions: tuple[str, ...]
    kb_versions: tuple[str, ...]

    @classmethod
    def of(cls, conversations: Iterable[Sequence[Event]]) -> Vocabulary:
        intents: Counter[str] = Counter()
        prompts: Counter[str] = Counter()
        kbs: Counter[str] = Counter()
        for events in conversations:
            for event in events[:PREFIX_CAP]:
                if event.intent:
                    intents[event.intent] += 1
                prompts[event.prompt_version] += 1
                kbs[event.kb_version] += 1
        return cls(intents=_most_common(intents, MAX_INTENTS), prompt_versions=_most_common(prompts, MAX_VERSIONS),
                   kb_versions=_most_common(kbs, MAX_VERSIONS))

    def as_json(self) -> dict[str, list[str]]:
        return {"intents": list(self.intents), "prompt_versions": list(self.prompt_versions),
                "kb_versions": list(self.kb_versions)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        return cls(intents=tuple(data["intents"]), prompt_versions=tuple(data["prompt_versions"]),
                   kb_versions=tuple(data["kb_versions"]))


def _most_common(counts: Counter[str], limit: int) -> tuple[str, ...]:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple(value for value, _ in ranked[:limit])


def feature_names(vocabulary: Vocabulary) -> list[str]:
    return [
        *NUMERIC_FEATURES,
        *(f"intent:{value}" for value in vocabulary.intents), f"intent:{OTHER}",
        *(f"prompt_version:{value}" for value in vocabulary.prompt_versions), f"prompt_version:{OTHER}",
        *(f"kb_version:{value}" for value in vocabulary.kb_versions), f"kb_version:{OTHER}",
    ]


def _one_hot(value: str, values: tuple[str, ...]) -> list[float]:
    return [*(float(value == v) for v in values), float(value not in values)]


class _SoFar:
    """What the events up to the current one add up to."""

    def __init__(self) -> None:
        self.turns = 0
        self.first: datetime | None = None
        self.requested = False
        self.handoff = False
        self.latency_sum = 0.0
        self.latency_n = 0
        self.sentiment_sum = 0.0
        self.sentiment_n = 0
        self.sentiment_latest = 0.0
        self.intents: set[str] = set()

    def add(self, event: Event) -> None:
        self.turns += 1
        self.first = self.first or event.timestamp
        self.requested |= event.requested
        self.handoff |= event.handoff
        if event.latency_ms is not None:
            self.latency_sum += event.latency_ms
            self.latency_n += 1
        if event.sentiment is not None:
            self.sentiment_sum += event.sentiment
            self.sentiment_n += 1
            self.sentiment_latest = event.sentiment
        if event.intent:
            self.intents.add(event.intent)


def _numeric(so_far: _SoFar, latest: Event, tz: zoneinfo.ZoneInfo) -> list[float]:
    assert so_far.first is not None
    minutes = max((latest.timestamp - so_far.first).total_seconds() / 60, 0.0)
    local = latest.timestamp.astimezone(tz)
    angle = 2 * math.pi * (local.hour + local.minute / 60) / 24
    latency = so_far.latency_sum / so_far.latency_n if so_far.latency_n else None
    has_sentiment = so_far.sentiment_n > 0
    return [
        float(min(so_far.turns, PREFIX_CAP)),
        math.log1p(minutes),
        float(so_far.requested),
        float(so_far.handoff),
        math.log1p(latency) if latency is not None else 0.0,
        math.sin(angle),
        math.cos(angle),
        float(local.isoweekday() >= 6),
        float(has_sentiment),
        so_far.sentiment_latest if has_sentiment else 0.0,
        so_far.sentiment_sum / so_far.sentiment_n if has_sentiment else 0.0,
    ]


def prefix_features(
    events: Sequence[Event], vocabulary: Vocabulary, tz: zoneinfo.ZoneInfo, limit: int | None = None
) -> Iterator[list[float]]:
    """The feature vector of each prefix in turn: after the first event, the first two, ... (at most `limit`)."""
    so_far = _SoFar()
    for k, event in enumerate(events, start=1):
        if limit is not None and k > limit:
            return
        so_far.add(event)
        intents = [*(float(v in so_far.intents) for v in vocabulary.intents),
                   float(any(v not in vocabulary.intents for v in so_far.intents))]
        yield [
            *_numeric(so_far, event, tz), *intents,
            *_one_hot(event.prompt_version, vocabulary.prompt_versions),
            *_one_hot(event.kb_version, vocabulary.kb_versions),
        ]


def current_features(events: Sequence[Event], vocabulary: Vocabulary, tz: zoneinfo.ZoneInfo) -> list[float] | None:
    """The features after the last of `events` (turns still counted up to PREFIX_CAP); None without events."""
    last = None
    for last in prefix_features(events, vocabulary, tz):  # noqa: B007  (the last one is the answer)
        pass
    return last
