"""Writes to conversations: kept by ingest, outcomes recorded after the fact, rebuilt from events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from metrics_app.models import AIMetric, Conversation

_FLAGS = ("appointment_requested", "appointment_booked", "human_handoff_requested")


def _upsert_sql(count: int) -> str:
    table = connection.ops.quote_name(Conversation._meta.db_table)
    least, greatest = ("LEAST", "GREATEST") if connection.vendor == "postgresql" else ("MIN", "MAX")
    columns = ("business_id", "conversation_id", "first_at", "last_at", "turns", *_FLAGS, "outcome_note")
    values = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * count)
    flags = ", ".join(f"{f} = {table}.{f} OR excluded.{f}" for f in _FLAGS)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values} "
        f"ON CONFLICT (business_id, conversation_id) DO UPDATE SET "
        f"first_at = {least}({table}.first_at, excluded.first_at), "
        f"last_at = {greatest}({table}.last_at, excluded.last_at), "
        f"turns = {table}.turns + excluded.turns, {flags}"
    )


def apply_events(events: list[dict[str, Any]]) -> None:
    """Fold newly stored events into their conversations, in the caller's transaction.

    Call it only with events that were just inserted: each one adds a turn.
    First/last times take the min/max, so late and out-of-order events land
    right. Rows are written in key order so that concurrent batches lock them
    in the same order and cannot deadlock.
    """
    folded: dict[tuple[str, str], list[Any]] = {}
    for event in events:
        conversation_id = event.get("conversation_id")
        if not conversation_id:
            continue
        moment = event["timestamp"]
        state = folded.get((event["business_id"], conversation_id))
        if state is None:
            folded[(event["business_id"], conversation_id)] = [
                moment, moment, 1, *(bool(event.get(f)) for f in _FLAGS)
            ]
        else:
            state[0] = min(state[0], moment)
            state[1] = max(state[1], moment)
            state[2] += 1
            for i, f in enumerate(_FLAGS, start=3):
                state[i] = state[i] or bool(event.get(f))
    if not folded:
        return
    field = Conversation._meta.get_field("first_at")
    params: list[Any] = []
    for (business_id, conversation_id), state in sorted(folded.items()):
        first, last, turns, *flags = state
        params.extend(
            [business_id, conversation_id, field.get_db_prep_save(first, connection),
             field.get_db_prep_save(last, connection), turns, *flags, ""]
        )
    with connection.cursor() as cursor:
        cursor.execute(_upsert_sql(len(folded)), params)


@dataclass(frozen=True)
class OutcomeResult:
    conversation: Conversation
    changed: list[str]


def record_outcome(
    conversation: Conversation, *, flags: dict[str, bool], note: str = "", at: datetime | None = None
) -> OutcomeResult:
    """Record that a conversation requested, booked or was handed off, after the fact.

    Outcomes only ever turn a flag on. The conversation's latest event takes the
    flag when no event of it has it yet, so event-level and conversation-level
    figures agree; a booking newly recorded is announced to the listeners
    (the Prometheus counter) once the transaction commits.
    """
    from metrics_app import services  # services imports this module for ingest

    changed: list[str] = []
    with transaction.atomic():
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        events = AIMetric.objects.filter(business_id=locked.business_id, conversation_id=locked.conversation_id)
        latest = events.order_by("-timestamp", "-id").first()
        booked_models: list[tuple[str, str | None]] = []
        for name, wanted in flags.items():
            if not wanted or getattr(locked, name):
                continue
            setattr(locked, name, True)
            changed.append(name)
            if latest is not None and not events.filter(**{name: True}).exists():
                AIMetric.objects.filter(pk=latest.pk).update(**{name: True})
                if name == "appointment_booked":
                    booked_models.append((locked.business_id, latest.model_name))
        locked.outcome_recorded_at = at or timezone.now()
        if note:
            locked.outcome_note = note[:300]
        locked.save(update_fields=[*changed, "outcome_recorded_at", "outcome_note"])
        services.notify_bookings_recorded(booked_models)
    return OutcomeResult(locked, changed)


def rebuild_conversations(business_id: str | None = None) -> int:
    """Recompute conversations from the events (after an import or a repair); returns how many.

    Outcomes recorded after the fact were written to the events too, so they survive.
    """
    events = AIMetric.objects.exclude(conversation_id__isnull=True).exclude(conversation_id="")
    if business_id is not None:
        events = events.filter(business_id=business_id)
    grouped = (
        events.values("business_id", "conversation_id")
        .annotate(
            first=Min("timestamp"),
            last=Max("timestamp"),
            turns=Count("id"),
            requested=Count("id", filter=Q(appointment_requested=True)),
            booked=Count("id", filter=Q(appointment_booked=True)),
            handoff=Count("id", filter=Q(human_handoff_requested=True)),
        )
        .order_by()
    )
    made = 0
    with transaction.atomic():
        existing = Conversation.objects.all()
        if business_id is not None:
            existing = existing.filter(business_id=business_id)
        notes = {
            (b, c): (at, note)
            for b, c, at, note in existing.values_list(
                "business_id", "conversation_id", "outcome_recorded_at", "outcome_note"
            )
        }
        existing.delete()
        batch: list[Conversation] = []
        for row in grouped.iterator(chunk_size=5000):
            at, note = notes.get((row["business_id"], row["conversation_id"]), (None, ""))
            batch.append(
                Conversation(
                    business_id=row["business_id"], conversation_id=row["conversation_id"],
                    first_at=row["first"], last_at=row["last"], turns=row["turns"],
                    appointment_requested=row["requested"] > 0, appointment_booked=row["booked"] > 0,
                    human_handoff_requested=row["handoff"] > 0, outcome_recorded_at=at, outcome_note=note,
                )
            )
            if len(batch) >= 5000:
                Conversation.objects.bulk_create(batch)
                made += len(batch)
                batch = []
        Conversation.objects.bulk_create(batch)
        made += len(batch)
    return made
