"""Writes to conversations: folded from the stored events, outcomes recorded after the fact, rebuilt from events."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from django.db import connection, transaction
from django.db.models import DateTimeField
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from metrics_app import database, listeners
from metrics_app.analytics import rollups, totals
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


_FLAGS = Flags._fields


@dataclass(slots=True)
class _State:
    """A conversation as far as the folded events make it: times, turns, flags and the values of its events."""

    first_at: datetime
    last_at: datetime
    turns: int
    flags: Flags
    values: dict[str, set[str]]
    # The latest scored event's sentiment and time. Events fold in id order, so on a tie in time the later
    # fold (the higher id) wins, as the rebuild's "latest by time, then id" does.
    sentiment: Decimal | None = None
    sentiment_at: datetime | None = None

    def merged(self, other: _State) -> _State:
        later = other if other.sentiment_at is not None and (
            self.sentiment_at is None or other.sentiment_at >= self.sentiment_at
        ) else self
        return _State(
            min(self.first_at, other.first_at), max(self.last_at, other.last_at), self.turns + other.turns,
            self.flags.merged(other.flags),
            {d: self.values.get(d, set()) | other.values.get(d, set()) for d in rollups.DIMENSIONS},
            later.sentiment, later.sentiment_at,
        )

    def scored(self, score: Any, moment: datetime) -> None:
        """Take an event's score when it is at least as late as the one held."""
        if score is not None and (self.sentiment_at is None or moment >= self.sentiment_at):
            self.sentiment, self.sentiment_at = Decimal(score), moment

    def contributions(self, business_id: str, sign: int = 1) -> rollups.ConversationDeltas:
        listed = {d: sorted(v) for d, v in self.values.items()}
        return rollups.conversation_contributions(business_id, self.first_at, tuple(self.flags), listed, sign)

    def values_json(self) -> str:
        return json.dumps({d: sorted(self.values.get(d, ())) for d in rollups.DIMENSIONS}, sort_keys=True)


_COLUMNS = ("business_id", "conversation_id", "first_at", "last_at", "turns", *_FLAGS, "outcome_note",
            "dimension_values", "last_sentiment", "last_sentiment_at")
_SET_BY_FOLDER = ("first_at", "last_at", "turns", *_FLAGS, "dimension_values", "last_sentiment",
                  "last_sentiment_at")


def _upsert_sql(count: int) -> str:
    table = connection.ops.quote_name(Conversation._meta.db_table)
    values = ", ".join(["(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"] * count)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _SET_BY_FOLDER)
    return (
        f"INSERT INTO {table} ({', '.join(_COLUMNS)}) VALUES {values} "
        f"ON CONFLICT (business_id, conversation_id) DO UPDATE SET {updates}"
    )


def _locked_states(keys: list[tuple[str, str]]) -> dict[tuple[str, str], _State]:
    """The stored conversations among `keys`, locked until the transaction ends (PostgreSQL)."""
    found: dict[tuple[str, str], _State] = {}
    lock = connection.vendor == "postgresql"  # SQLite: the write lock is already held
    columns = ("business_id", "conversation_id", "first_at", "last_at", "turns", *_FLAGS, "dimension_values",
               "last_sentiment", "last_sentiment_at")
    keys = sorted(keys)  # one lock order for every fold
    for start in range(0, len(keys), 500):
        part = keys[start:start + 500]
        sql = database.rows_by_key_sql(connection, Conversation._meta.db_table, ("business_id", "conversation_id"),
                                       columns, len(part), lock=lock)
        with connection.cursor() as cursor:
            cursor.execute(sql, [value for key in part for value in key])
            rows = cursor.fetchall()
        for b, c, first, last, turns, *flags, values, score, scored_at in rows:
            if isinstance(values, str):
                values = json.loads(values)
            found[(b, c)] = _State(_as_datetime(first), _as_datetime(last), int(turns),
                                   Flags(*(bool(v) for v in flags)),
                                   {d: set(v) for d, v in (values or {}).items()},
                                   None if score is None else Decimal(str(score)),
                                   None if scored_at is None else _as_datetime(scored_at))
    return found


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite hands back text
        value = parse_datetime(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def apply_events(events: list[dict[str, Any]]) -> None:
    """Fold stored events into their conversations and the conversation rollups, in the caller's transaction.

    The folder calls it once per event, in id order: each one adds a turn.
    First/last times take the min/max, so late and out-of-order events land
    right. The stored conversations are locked and read first; each one's
    old contribution to the rollups (its bucket, flags and values) is taken
    away and its new one added, so a conversation whose first event moved to
    an earlier quarter moves there, and one that gained a flag or a value
    counts it. Keys go in sorted order, so concurrent writers lock in one order.
    """
    folded = _fold(events)
    if not folded:
        return
    keys = sorted(folded)
    stored = _locked_states(keys)
    deltas: rollups.ConversationDeltas = defaultdict(ConversationSums)
    params: list[Any] = []
    field = Conversation._meta.get_field("first_at")
    assert isinstance(field, DateTimeField)
    for key in keys:
        old = stored.get(key)
        new = folded[key] if old is None else old.merged(folded[key])
        if old is not None:
            for slice_key, sums in old.contributions(key[0], sign=-1).items():
                deltas[slice_key].add(sums)
        for slice_key, sums in new.contributions(key[0]).items():
            deltas[slice_key].add(sums)
        params.extend([*key, field.get_db_prep_save(new.first_at, connection),
                       field.get_db_prep_save(new.last_at, connection), new.turns, *new.flags, "",
                       new.values_json(), new.sentiment, field.get_db_prep_save(new.sentiment_at, connection)])
    for start in range(0, len(keys), 500):
        width = len(_COLUMNS)
        part = params[start * width:(start + 500) * width]
        with connection.cursor() as cursor:
            cursor.execute(_upsert_sql(len(part) // width), part)
    rollups.add_conversation_deltas(deltas)


def _fold(events: list[dict[str, Any]]) -> dict[tuple[str, str], _State]:
    """The batch's events per (business, conversation); events without a conversation are left out."""
    folded: dict[tuple[str, str], _State] = {}
    for event in events:
        conversation_id = event.get("conversation_id")
        if not conversation_id:
            continue
        moment = event["timestamp"]
        key = (event["business_id"], conversation_id)
        values = rollups.dimension_values(event)
        state = folded.get(key)
        if state is None:
            state = folded[key] = _State(moment, moment, 1, Flags.of_event(event),
                                         {d: {v} for d, v in zip(rollups.DIMENSIONS, values, strict=True)})
            state.scored(event.get("user_sentiment"), moment)
            continue
        if moment < state.first_at:
            state.first_at = moment
        elif moment > state.last_at:
            state.last_at = moment
        state.turns += 1
        state.scored(event.get("user_sentiment"), moment)
        for dimension, value in zip(rollups.DIMENSIONS, values, strict=True):
            state.values[dimension].add(value)
        # Most replies raise no flag: build and merge flags only for those that do.
        if event.get("appointment_requested") or event.get("appointment_booked") or event.get(
            "human_handoff_requested"
        ):
            state.flags = state.flags.merged(Flags.of_event(event))
    return folded


# How long an outcome waits for a fold (or a rebuild) holding the folder's row before answering 503 busy.
OUTCOME_WAIT_SECONDS = 5.0


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
    figures agree, and /metrics' counters move with the event's totals; a
    booking newly recorded is announced to the listeners once the transaction
    commits.
    """
    changed: list[str] = []
    with transaction.atomic():
        # No fold commits until this does: the event rollups take the flag now only when they hold the event.
        # Held before the conversation is locked, in the folder's order (its row, then conversations).
        folded_through = rollups.folded_through(hold=True, wait_seconds=OUTCOME_WAIT_SECONDS)
        # By its key: a rebuild that ran while this waited made the row again, under a new id.
        locked = Conversation.objects.select_for_update().get(
            business_id=conversation.business_id, conversation_id=conversation.conversation_id
        )
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
        if latest is not None and latest.id <= folded_through and event_flags:
            # Folded already: the rollups and /metrics' totals take the flags now. An unfolded event
            # carries them into both when the folder reads its row.
            labels = {"business_id": latest.business_id, "timestamp": latest.timestamp,
                      **{column: getattr(latest, column) for column in rollups.DIMENSION_COLUMNS}}
            rollups.add_event_flags(labels, event_flags)
            counted = totals.TotalsAccumulator()
            counted.add_flags(labels, event_flags)
            counted.write()
        if changed:
            rollups.add_conversation_deltas(_flag_deltas(locked, changed))
        new_note = bool(note) and note[:300] != locked.outcome_note
        if changed or new_note:  # a repeat changes nothing, not even the time it was recorded
            locked.outcome_recorded_at = at or timezone.now()
            if new_note:
                locked.outcome_note = note[:300]
            locked.save(update_fields=[*changed, "outcome_recorded_at", "outcome_note"])
        listeners.bookings_recorded(booked_models)
    return OutcomeResult(locked, changed)


def _flag_deltas(conversation: Conversation, turned_on: list[str]) -> rollups.ConversationDeltas:
    """What turning these flags on changes in the conversation rollups: in "" and under each of its values."""
    now = Flags(*(bool(getattr(conversation, name)) for name in _FLAGS))
    before = Flags(*(flag and name not in turned_on for name, flag in zip(_FLAGS, now, strict=True)))
    values = conversation.dimension_values or {}
    deltas: rollups.ConversationDeltas = defaultdict(ConversationSums)
    for flags, sign in ((before, -1), (now, 1)):
        for key, sums in rollups.conversation_contributions(
            conversation.business_id, conversation.first_at, tuple(flags), values, sign
        ).items():
            deltas[key].add(sums)
    return deltas


def _latest_sentiment_sql(table: str, events: str, upto: str) -> str:
    """Each conversation's latest scored event (by time, then id): its score and time."""
    upto = upto.replace(" id ", " e.id ")
    latest = (
        f"SELECT {{}} FROM {events} e WHERE e.business_id = {table}.business_id "
        f"AND e.conversation_id = {table}.conversation_id AND e.user_sentiment IS NOT NULL{upto} "
        f"ORDER BY e.timestamp DESC, e.id DESC LIMIT 1"
    )
    return (
        f"UPDATE {table} SET last_sentiment = ({latest.format('e.user_sentiment')}), "
        f"last_sentiment_at = ({latest.format('e.timestamp')})"
    )


def rebuild_conversations(through: int | None = None, since: datetime | None = None) -> int:
    """Recompute every conversation from the events (with id <= `through`); returns how many.

    Outcomes recorded after the fact were written to the events too, so the
    flags survive; the outcome times and notes are carried over. With `since`
    (the retention horizon: no raw event before it is left), the
    conversations that started before it are kept as the folder left them,
    and only the others are recomputed.
    """
    table = connection.ops.quote_name(Conversation._meta.db_table)
    events = connection.ops.quote_name(AIMetric._meta.db_table)
    if connection.vendor == "postgresql":
        any_of, values_of, object_of = "bool_or({})", "jsonb_agg(DISTINCT COALESCE({}, ''))", "jsonb_build_object"
    else:
        any_of, values_of, object_of = "MAX({})", "json_group_array(DISTINCT COALESCE({}, ''))", "json_object"
    flags = ", ".join(any_of.format(f) for f in _FLAGS)
    values = object_of + "(" + ", ".join(
        f"'{name}', {values_of.format(column)}" for name, column in rollups.DIMENSIONS.items()
    ) + ")"
    with transaction.atomic():
        kept = list(
            Conversation.objects.exclude(outcome_recorded_at__isnull=True, outcome_note="")
            .values_list("business_id", "conversation_id", "outcome_recorded_at", "outcome_note")
        )
        recomputed = Conversation.objects.all() if since is None else Conversation.objects.filter(first_at__gte=since)
        recomputed.delete()
        upto = "" if through is None else f" AND id <= {int(through)}"
        params: list[Any] = []
        only_new = ""
        if since is not None:
            only_new = (f" AND timestamp >= %s AND NOT EXISTS (SELECT 1 FROM {table} c WHERE c.business_id = "
                    f"{events}.business_id AND c.conversation_id = {events}.conversation_id)")
            params = [connection.ops.adapt_datetimefield_value(since)]
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(_COLUMNS[:-2])}) "
                f"SELECT business_id, conversation_id, MIN(timestamp), MAX(timestamp), COUNT(*), {flags}, '', {values} "
                f"FROM {events} WHERE conversation_id IS NOT NULL AND conversation_id <> ''{upto}{only_new} "
                f"GROUP BY business_id, conversation_id",
                params,
            )
            recomputed_only = "" if since is None else " WHERE first_at >= %s"
            cursor.execute(_latest_sentiment_sql(table, events, upto) + recomputed_only, params)
        for business_id, conversation_id, at, note in kept:
            Conversation.objects.filter(business_id=business_id, conversation_id=conversation_id).update(
                outcome_recorded_at=at, outcome_note=note
            )
        return Conversation.objects.count()
