"""Writes to conversations: kept by ingest, outcomes recorded after the fact, rebuilt from events."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from metrics_app import listeners
from metrics_app.analytics import rollups
from metrics_app.models import AIMetric, Conversation

_FLAGS = ("appointment_requested", "appointment_booked", "human_handoff_requested")


_COLUMNS = ("business_id", "conversation_id", "first_at", "last_at", "turns", *_FLAGS, "outcome_note")


def _insert_sql(count: int, merge: bool) -> str:
    table = connection.ops.quote_name(Conversation._meta.db_table)
    values = ", ".join(["(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"] * count)
    sql = f"INSERT INTO {table} ({', '.join(_COLUMNS)}) VALUES {values} ON CONFLICT (business_id, conversation_id) "
    if not merge:
        return sql + "DO NOTHING RETURNING business_id, conversation_id"
    least, greatest = ("LEAST", "GREATEST") if connection.vendor == "postgresql" else ("MIN", "MAX")
    flags = ", ".join(f"{f} = {table}.{f} OR excluded.{f}" for f in _FLAGS)
    return (
        sql + f"DO UPDATE SET first_at = {least}({table}.first_at, excluded.first_at), "
        f"last_at = {greatest}({table}.last_at, excluded.last_at), turns = {table}.turns + excluded.turns, {flags}"
    )


def _locked_states(keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[datetime, list[bool]]]:
    """First time and flags of existing conversations, locked until the transaction ends (PostgreSQL)."""
    table = connection.ops.quote_name(Conversation._meta.db_table)
    pairs = ", ".join(["(%s, %s)"] * len(keys))
    lock = " FOR UPDATE" if connection.vendor == "postgresql" else ""  # SQLite: the write lock is already held
    sql = (
        f"SELECT business_id, conversation_id, first_at, {', '.join(_FLAGS)} FROM {table} "
        f"WHERE (business_id, conversation_id) IN (VALUES {pairs}) ORDER BY business_id, conversation_id{lock}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for key in keys for value in key])
        rows = cursor.fetchall()
    return {(b, c): (_as_datetime(first), [bool(v) for v in flags]) for b, c, first, *flags in rows}


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite hands back text
        value = parse_datetime(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def apply_events(events: list[dict[str, Any]]) -> None:
    """Fold newly stored events into their conversations and the conversation rollups, in the caller's transaction.

    Call it only with events that were just inserted: each one adds a turn.
    First/last times take the min/max, so late and out-of-order events land
    right. New conversations are inserted first (the insert tells which are
    new); existing ones are locked and read before they are merged, so the
    rollup deltas are exact under concurrent batches. Keys go in sorted order,
    so concurrent batches lock in one order and cannot deadlock.
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
    keys = sorted(folded)
    field = Conversation._meta.get_field("first_at")

    def params(chosen: list[tuple[str, str]]) -> list[Any]:
        values: list[Any] = []
        for key in chosen:
            first, last, turns, *flags = folded[key]
            values.extend([*key, field.get_db_prep_save(first, connection),
                           field.get_db_prep_save(last, connection), turns, *flags, ""])
        return values

    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(len(keys), merge=False), params(keys))
        created = {tuple(row) for row in cursor.fetchall()}
    deltas: dict[tuple[str, datetime], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for key in created:
        first, _, _, *flags = folded[key]
        sums = deltas[(key[0], rollups.quarter_of(first))]
        sums[0] += 1
        for i, flag in enumerate(flags, start=1):
            sums[i] += flag
    existing = [key for key in keys if key not in created]
    if existing:
        before = _locked_states(existing)
        with connection.cursor() as cursor:
            cursor.execute(_insert_sql(len(existing), merge=True), params(existing))
        for key in existing:
            old_first, old_flags = before[key]
            first, _, _, *flags = folded[key]
            new_first = min(old_first, first)
            new_flags = [a or b for a, b in zip(old_flags, flags)]
            old_bucket, new_bucket = rollups.quarter_of(old_first), rollups.quarter_of(new_first)
            if old_bucket != new_bucket:
                moved_out = deltas[(key[0], old_bucket)]
                moved_out[0] -= 1
                moved_in = deltas[(key[0], new_bucket)]
                moved_in[0] += 1
                for i, (was, now) in enumerate(zip(old_flags, new_flags), start=1):
                    moved_out[i] -= was
                    moved_in[i] += now
            else:
                sums = deltas[(key[0], new_bucket)]
                for i, (was, now) in enumerate(zip(old_flags, new_flags), start=1):
                    sums[i] += now and not was
    rollups.add_conversation_deltas(deltas)


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
    changed: list[str] = []
    with transaction.atomic():
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        events = AIMetric.objects.filter(business_id=locked.business_id, conversation_id=locked.conversation_id)
        latest = events.order_by("-timestamp", "-id").first()
        booked_models: list[tuple[str, str | None]] = []
        event_flags: list[str] = []
        for name, wanted in flags.items():
            if not wanted or getattr(locked, name):
                continue
            setattr(locked, name, True)
            changed.append(name)
            if latest is not None and not events.filter(**{name: True}).exists():
                AIMetric.objects.filter(pk=latest.pk).update(**{name: True})
                event_flags.append(name)
                if name == "appointment_booked":
                    booked_models.append((locked.business_id, latest.model_name))
        if latest is not None:
            rollups.add_event_flags(locked.business_id, latest.timestamp, event_flags)
        delta = [0, *(1 if name in changed else 0 for name in _FLAGS)]
        rollups.add_conversation_deltas({(locked.business_id, rollups.quarter_of(locked.first_at)): delta})
        locked.outcome_recorded_at = at or timezone.now()
        if note:
            locked.outcome_note = note[:300]
        locked.save(update_fields=[*changed, "outcome_recorded_at", "outcome_note"])
        listeners.bookings_recorded(booked_models)
    return OutcomeResult(locked, changed)


def rebuild_conversations() -> int:
    """Recompute every conversation from the events (after a bulk load or a repair); returns how many.

    Outcomes recorded after the fact were written to the events too, so the
    flags survive; the outcome times and notes are carried over.
    """
    table = connection.ops.quote_name(Conversation._meta.db_table)
    events = connection.ops.quote_name(AIMetric._meta.db_table)
    any_of = "bool_or({})" if connection.vendor == "postgresql" else "MAX({})"
    flags = ", ".join(any_of.format(f) for f in _FLAGS)
    with transaction.atomic():
        kept = list(
            Conversation.objects.exclude(outcome_recorded_at__isnull=True, outcome_note="")
            .values_list("business_id", "conversation_id", "outcome_recorded_at", "outcome_note")
        )
        Conversation.objects.all().delete()
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(_COLUMNS)}) "
                f"SELECT business_id, conversation_id, MIN(timestamp), MAX(timestamp), COUNT(*), {flags}, '' "
                f"FROM {events} WHERE conversation_id IS NOT NULL AND conversation_id <> '' "
                f"GROUP BY business_id, conversation_id"
            )
        for business_id, conversation_id, at, note in kept:
            Conversation.objects.filter(business_id=business_id, conversation_id=conversation_id).update(
                outcome_recorded_at=at, outcome_note=note
            )
        return Conversation.objects.count()
