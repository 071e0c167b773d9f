"""Training a business's likely-bookings model: read its ended conversations, fit, evaluate on the newest, keep it.

- Window: the business's conversations that have ENDED (no event for its
  `conversation_idle_minutes` after the last one) and started in the last
  TRAINING_DAYS days, newest first, at most MAX_TRAINING_CONVERSATIONS. Their
  events come from one query over the business's events between the oldest
  start and the newest end, in time order and at most MAX_EVENTS_READ rows;
  a conversation whose events were not all read is left out.
- Samples: one per prefix (metrics_app/predictions/features.py) for turns
  1..min(turns, PREFIX_CAP), labelled with whether the conversation was
  eventually booked (its flag, which also holds bookings recorded later).
  Prefixes at or after the first booked event are left out: by then the
  answer is known. Each conversation's prefixes weigh 1 together, so long
  conversations do not outvote short ones.
- Held out: the newest HELD_OUT_SHARE of those conversations by first event
  (a split by time, as the model will be used: on conversations after the
  ones it learnt from). The vocabularies, the standardisation and the fit use
  the older ones only.
- Verdict: with fewer than MIN_CONVERSATIONS conversations, or fewer than
  MIN_BOOKED booked (or not booked) ones in the training part, or fewer than
  MIN_HELD_OUT_BOOKED booked held-out ones, no predictions ("not enough
  data"). Otherwise the model is usable only if its held-out Brier score beats
  the base rate's by a Brier skill of at least MIN_SKILL; else no predictions
  ("no better than the base rate").
- The model evaluated is the model used: it is not refitted on the held-out
  conversations, so the figures shown are the figures of the predictions
  made. The daily retraining brings the newest conversations in a quarter of
  the window later.
"""

from __future__ import annotations

import math
import zoneinfo
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from django.db import transaction
from django.utils import timezone

from metrics_app.models import AIMetric, BookingModel, BookingModelStatus, Business, Conversation
from metrics_app.predictions import model as regression
from metrics_app.predictions.features import (
    EVENT_COLUMNS,
    PREFIX_CAP,
    Event,
    Vocabulary,
    feature_names,
    prefix_features,
)

TRAINING_DAYS = 90
MAX_TRAINING_CONVERSATIONS = 5000
# Twice the most the chosen conversations can need (5,000 x 20): room for the events of conversations that are
# not chosen (still open) in the same period, and a bound on the read (about 100 MB of rows at worst).
MAX_EVENTS_READ = 2 * MAX_TRAINING_CONVERSATIONS * PREFIX_CAP
HELD_OUT_SHARE = 0.25
MIN_CONVERSATIONS = 200
MIN_BOOKED = 20
MIN_HELD_OUT_BOOKED = 5
# A Brier skill below 1% is within what the choice of held-out conversations moves it by.
MIN_SKILL = 0.01
KEEP_MODELS = 5


@dataclass
class TrainingConversation:
    conversation_id: str
    first_at: datetime
    booked: bool
    turns: int
    events: list[Event] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.events) == min(self.turns, PREFIX_CAP)

    @property
    def prefixes(self) -> int:
        """How many prefixes it gives: those before its first booked event."""
        for index, event in enumerate(self.events):
            if event.booked:
                return index
        return len(self.events)


@dataclass(frozen=True)
class Samples:
    x: regression.FloatArray
    y: regression.FloatArray
    weights: regression.FloatArray
    conversation_ids: list[str]
    turns: list[int]


@dataclass(frozen=True)
class TrainingResult:
    """The stored model, and the held-out predictions behind its figures (None when it was not fitted)."""

    model: BookingModel
    held_out: Samples | None = None
    held_out_probabilities: regression.FloatArray | None = None


def ended_conversations(business: Business, now: datetime) -> list[TrainingConversation]:
    """The window's ended conversations with their first PREFIX_CAP events, oldest first; incomplete ones left out."""
    rows = list(
        Conversation.objects.filter(
            business=business, first_at__gte=now - timedelta(days=TRAINING_DAYS),
            last_at__lte=now - business.conversation_idle,
        )
        .order_by("-first_at", "-id")
        .values_list("conversation_id", "first_at", "last_at", "turns", "appointment_booked")[
            :MAX_TRAINING_CONVERSATIONS
        ]
    )
    if not rows:
        return []
    chosen = {
        cid: TrainingConversation(conversation_id=cid, first_at=first, booked=booked, turns=turns)
        for cid, first, _, turns, booked in rows
    }
    events = (
        AIMetric.objects.filter(
            business_id=business.id, conversation_id__isnull=False,
            timestamp__gte=min(row[1] for row in rows), timestamp__lte=max(row[2] for row in rows),
        )
        .order_by("timestamp", "id")
        .values_list(*EVENT_COLUMNS)[:MAX_EVENTS_READ]
    )
    for row in events.iterator(chunk_size=5000):
        conversation = chosen.get(row[0])
        if conversation is not None and len(conversation.events) < PREFIX_CAP:
            conversation.events.append(Event.from_row(row))
    found = [c for c in chosen.values() if c.complete]
    return sorted(found, key=lambda c: (c.first_at, c.conversation_id))


def samples(conversations: Sequence[TrainingConversation], vocabulary: Vocabulary, tz: zoneinfo.ZoneInfo) -> Samples:
    """One row per prefix before the booking; each conversation's rows weigh 1 together."""
    x: list[list[float]] = []
    y: list[float] = []
    weights: list[float] = []
    ids: list[str] = []
    turns: list[int] = []
    for conversation in conversations:
        n = conversation.prefixes
        for k, row in enumerate(prefix_features(conversation.events, vocabulary, tz, limit=n), start=1):
            x.append(row)
            y.append(float(conversation.booked))
            weights.append(1.0 / n)
            ids.append(conversation.conversation_id)
            turns.append(k)
    width = len(feature_names(vocabulary))
    return Samples(x=np.asarray(x, dtype=np.float64).reshape(-1, width), y=np.asarray(y), weights=np.asarray(weights),
                   conversation_ids=ids, turns=turns)


def split_by_time(
    conversations: Sequence[TrainingConversation],
) -> tuple[list[TrainingConversation], list[TrainingConversation]]:
    """The older conversations to train on, and the newest HELD_OUT_SHARE (rounded up) to evaluate on."""
    ordered = sorted(conversations, key=lambda c: (c.first_at, c.conversation_id))
    cut = len(ordered) - math.ceil(len(ordered) * HELD_OUT_SHARE)
    return ordered[:cut], ordered[cut:]


def _not_enough(train: Sequence[TrainingConversation], held_out: Sequence[TrainingConversation]) -> str | None:
    total = len(train) + len(held_out)
    if total < MIN_CONVERSATIONS:
        return (f"Only {total} ended conversations with a reply before any booking in the last {TRAINING_DAYS} "
                f"days; at least {MIN_CONVERSATIONS} are needed.")
    booked = sum(c.booked for c in train)
    if booked < MIN_BOOKED or len(train) - booked < MIN_BOOKED:
        return (f"The training conversations have {booked} booked and {len(train) - booked} not booked; at least "
                f"{MIN_BOOKED} of each are needed.")
    held_booked = sum(c.booked for c in held_out)
    if held_booked < MIN_HELD_OUT_BOOKED:
        return (f"The {len(held_out)} held-out conversations have {held_booked} booked; at least "
                f"{MIN_HELD_OUT_BOOKED} are needed to judge the model.")
    return None


def _counts(conversations: Sequence[TrainingConversation], rows: Samples | None = None) -> dict[str, int]:
    counts = {"conversations": len(conversations), "booked": sum(c.booked for c in conversations)}
    if rows is not None:
        counts["prefixes"] = len(rows.y)
    return counts


def train(business: Business, now: datetime | None = None) -> TrainingResult:
    """Fit, evaluate and store one model for `business`; the result says whether it gives predictions and why."""
    now = now or timezone.now()
    tz = zoneinfo.ZoneInfo(business.time_zone)
    conversations = [c for c in ended_conversations(business, now) if c.prefixes > 0]
    train_part, held_part = split_by_time(conversations)
    metrics: dict[str, object] = {
        "window_start": (now - timedelta(days=TRAINING_DAYS)).isoformat(), "window_end": now.isoformat(),
        "train": _counts(train_part), "held_out": _counts(held_part),
    }
    shortage = _not_enough(train_part, held_part)
    if shortage is not None:
        return TrainingResult(model=_keep(business, now, BookingModelStatus.NOT_ENOUGH_DATA, shortage, {}, metrics, []))
    vocabulary = Vocabulary.of(c.events for c in train_part)
    training = samples(train_part, vocabulary, tz)
    held_out = samples(held_part, vocabulary, tz)
    fit = regression.fit_logistic(training.x, training.y, training.weights)
    base_rate = float(training.weights @ training.y / training.weights.sum())
    p = fit.probabilities(held_out.x)
    brier = regression.brier(p, held_out.y, held_out.weights)
    base_brier = regression.brier(np.full_like(p, base_rate), held_out.y, held_out.weights)
    skill = 1 - brier / base_brier if base_brier > 0 else 0.0
    metrics.update(
        brier=brier, base_brier=base_brier, base_rate=base_rate, skill=skill,
        held_out_from=held_part[0].first_at.isoformat(), train=_counts(train_part, training),
        held_out=_counts(held_part, held_out),
    )
    spec = {"features": feature_names(vocabulary), "vocabulary": vocabulary.as_json(), "prefix_cap": PREFIX_CAP,
            "l2": regression.DEFAULT_L2, **fit.as_json()}
    table = [row.as_json() for row in regression.reliability(p, held_out.y, held_out.weights)]
    if skill >= MIN_SKILL:
        status, reason = BookingModelStatus.USABLE, (
            f"Held-out Brier {brier:.4f} beats the base rate's {base_brier:.4f} (skill {skill:.1%}) on "
            f"{len(held_part)} conversations.")
    else:
        status, reason = BookingModelStatus.NO_BETTER, (
            f"Held-out Brier {brier:.4f} does not beat the base rate's {base_brier:.4f} by a skill of at least "
            f"{MIN_SKILL:.0%} (skill {skill:.1%}): what is known during these conversations does not tell the "
            "booked ones apart.")
    stored = _keep(business, now, status, reason, spec, metrics, table)
    return TrainingResult(model=stored, held_out=held_out, held_out_probabilities=p)


def _keep(business: Business, now: datetime, status: str, reason: str, spec: dict, metrics: dict,
          table: list) -> BookingModel:
    """Store the training and drop the business's trainings older than its last KEEP_MODELS."""
    with transaction.atomic():
        stored = BookingModel.objects.create(business=business, trained_at=now, status=status, reason=reason,
                                             spec=spec, metrics=metrics, reliability=table)
        trainings = BookingModel.objects.filter(business=business)
        keep = list(trainings.order_by("-trained_at", "-id").values_list("id", flat=True)[:KEEP_MODELS])
        trainings.exclude(id__in=keep).delete()
    return stored


def businesses_to_train(now: datetime | None = None) -> list[Business]:
    """Businesses with a conversation in the training window, by id."""
    now = now or timezone.now()
    recent = Conversation.objects.filter(first_at__gte=now - timedelta(days=TRAINING_DAYS)).values("business_id")
    return list(Business.objects.filter(id__in=recent).order_by("id"))


def train_all(
    businesses: Iterable[Business] | None = None,
    progress: Callable[[list[Business]], Iterable[Business]] | None = None,
    now: datetime | None = None,
) -> list[TrainingResult]:
    """Train every business that had conversations in the window (or those given); the worker's daily task."""
    now = now or timezone.now()
    chosen = list(businesses) if businesses is not None else businesses_to_train(now)
    return [train(business, now) for business in (progress(chosen) if progress else chosen)]


def scheduled_training() -> str:
    """The daily task: a one-line summary for the worker's task log."""
    results = train_all()
    usable = sum(result.model.usable for result in results)
    return f"trained {len(results)} businesses: {usable} usable, {len(results) - usable} without predictions"
