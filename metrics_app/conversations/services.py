"""Writes to conversations: folded from the stored events, outcomes recorded after the fact, rebuilt from events."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from django.db import connection, transaction
from django.db.models import DateTimeField
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from metrics_app import listeners
from metrics_app.analytics import rollups
from metrics_app.analytics.rollups import ConversationSums
from metrics_app.models import AIMetric, Conversation


class Flags(NamedTuple):
    """A conversation's outcome flags, named as its columns (and its events' columns) are."""

    appointment_requested: bool
    appointment_booked: bool
    human_handoff_requested: bool

    @classmethod
    def of_event(cls, event: dict[str, Any]) -> Flags:
        return cls(
            bool(event.get("appointment_requested")),
            bool(event.get("appointment_booked")),
            bool(event.get("human_handoff_requested")),
        )

    def merged(self, other: Flags) -> Flags:
        """A flag, once on, stays on."""
        return Flags(
            self.appointment_requested or other.appointment_requested,
            self.appointment_booked or other.appointment_booked,
            self.human_handoff_requested or other.human_handoff_requested,
        )

    def turned_on_since(self, before: Flags) -> Flags:
        return Flags(
            self.appointment_requested and not before.appointment_requested,
            self.appointment_booked and not before.appointment_booked,
            self.human_handoff_requested and not before.human_handoff_requested,
        )

    def counted(self, started: int = 0) -> ConversationSums:
        """These flags as conversation rollup sums, with `started` conversations."""
        return ConversationSums(
            started=started,
            requested=int(self.appointment_requested),
            booked=int(self.appointment_booked),
            handoffs=int(self.human_handoff_requested),
        )


_FLAGS = Flags._fields


@dataclass(slots=True)
class _Folded:
    """What one batch adds to one conversation."""

    first_at: datetime
    last_at: datetime
    turns: int
    flags: Flags


class _Stored(NamedTuple):
    """The part of a stored conversation that its rollup deltas depend on."""

    first_at: datetime
    flags: Flags


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


def _locked_states(keys: list[tuple[str, str]]) -> dict[tuple[str, str], _Stored]:
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
    return {(b, c): _Stored(_as_datetime(first), Flags(*(bool(v) for v in flags))) for b, c, first, *flags in rows}


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite hands back text
        value = parse_datetime(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def apply_events(events: list[dict[str, Any]]) -> None:
    """Fold stored events into their conversations and the conversation rollups, in the caller's transaction.

    The folder calls it once per event, in id order: each one adds a turn.
    First/last times take the min/max, so late and out-of-order events land
    right. New conversations are inserted first (the insert tells which are
    new); existing ones are locked and read before they are merged, so the
    rollup deltas are exact under concurrent batches. Keys go in sorted order,
    so concurrent batches lock in one order and cannot deadlock.
    """
    folded = _fold(events)
    if not folded:
        return
    keys = sorted(folded)
    deltas: dict[tuple[str, datetime], ConversationSums] = defaultdict(ConversationSums)
    created = _insert_new(keys, folded)
    for key in created:
        deltas[(key[0], rollups.quarter_of(folded[key].first_at))].add(folded[key].flags.counted(started=1))
    existing = [key for key in keys if key not in created]
    if existing:
        _merge_existing(existing, folded, deltas)
    rollups.add_conversation_deltas(deltas)


def _fold(events: list[dict[str, Any]]) -> dict[tuple[str, str], _Folded]:
    """The batch's events per (business, conversation); events without a conversation are left out."""
    folded: dict[tuple[str, str], _Folded] = {}
    for event in events:
        conversation_id = event.get("conversation_id")
        if not conversation_id:
            continue
        moment = event["timestamp"]
        key = (event["business_id"], conversation_id)
        state = folded.get(key)
        if state is None:
            folded[key] = _Folded(moment, moment, 1, Flags.of_event(event))
        else:
            if moment < state.first_at:
                state.first_at = moment
            elif moment > state.last_at:
                state.last_at = moment
            state.turns += 1
            # Most replies raise no flag: build and merge flags only for those that do.
            if event.get("appointment_requested") or event.get("appointment_booked") or event.get(
                "human_handoff_requested"
            ):
                state.flags = state.flags.merged(Flags.of_event(event))
    return folded


def _params(chosen: list[tuple[str, str]], folded: dict[tuple[str, str], _Folded]) -> list[Any]:
    """The INSERT's values for these conversations, in _COLUMNS order."""
    field = Conversation._meta.get_field("first_at")
    assert isinstance(field, DateTimeField)
    values: list[Any] = []
    for key in chosen:
        state = folded[key]
        values.extend([
            *key,
            field.get_db_prep_save(state.first_at, connection),
            field.get_db_prep_save(state.last_at, connection),
            state.turns,
            *state.flags,
            "",
        ])
    return values


def _insert_new(keys: list[tuple[str, str]], folded: dict[tuple[str, str], _Folded]) -> set[tuple[str, str]]:
    """Insert the conversations that do not exist yet; returns their keys."""
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(len(keys), merge=False), _params(keys, folded))
        return {(business_id, conversation_id) for business_id, conversation_id in cursor.fetchall()}


def _merge_existing(
    existing: list[tuple[str, str]],
    folded: dict[tuple[str, str], _Folded],
    deltas: dict[tuple[str, datetime], ConversationSums],
) -> None:
    """Merge the batch into stored conversations and add what changed to `deltas`: a conversation whose first
    event moved to an earlier quarter moves there with its flags."""
    before = _locked_states(existing)
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(len(existing), merge=True), _params(existing, folded))
    for key in existing:
        old = before[key]
        new_first = min(old.first_at, folded[key].first_at)
        new_flags = old.flags.merged(folded[key].flags)
        old_bucket, new_bucket = rollups.quarter_of(old.first_at), rollups.quarter_of(new_first)
        if old_bucket != new_bucket:
            deltas[(key[0], old_bucket)].add(old.flags.counted(started=1).negated())
            deltas[(key[0], new_bucket)].add(new_flags.counted(started=1))
        else:
            deltas[(key[0], new_bucket)].add(new_flags.turned_on_since(old.flags).counted())


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
        # No fold commits until this does: the event rollups take the flag now only when they hold the event.
        # Held before the conversation is locked, in the folder's order (its row, then conversations).
        folded_through = rollups.folded_through(hold=True)
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
        if latest is not None and latest.id <= folded_through:
            rollups.add_event_flags(locked.business_id, latest.timestamp, event_flags)
        delta = Flags(**{name: name in changed for name in _FLAGS}).counted()
        rollups.add_conversation_deltas({(locked.business_id, rollups.quarter_of(locked.first_at)): delta})
        new_note = bool(note) and note[:300] != locked.outcome_note
        if changed or new_note:  # a repeat changes nothing, not even the time it was recorded
            locked.outcome_recorded_at = at or timezone.now()
            if new_note:
                locked.outcome_note = note[:300]
            locked.save(update_fields=[*changed, "outcome_recorded_at", "outcome_note"])
        listeners.bookings_recorded(booked_models)
    return OutcomeResult(locked, changed)


def rebuild_conversations(through: int | None = None) -> int:
    """Recompute every conversation from the events (with id <= `through`); returns how many.

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
        upto = "" if through is None else f" AND id <= {int(through)}"
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(_COLUMNS)}) "
                f"SELECT business_id, conversation_id, MIN(timestamp), MAX(timestamp), COUNT(*), {flags}, '' "
                f"FROM {events} WHERE conversation_id IS NOT NULL AND conversation_id <> ''{upto} "
                f"GROUP BY business_id, conversation_id"
            )
        for business_id, conversation_id, at, note in kept:
            Conversation.objects.filter(business_id=business_id, conversation_id=conversation_id).update(
                outcome_recorded_at=at, outcome_note=note
            )
        return Conversation.objects.count()
