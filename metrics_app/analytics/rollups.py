"""Pre-aggregated analytics: 15-minute rollups, kept by the folder (metrics_app/folding) from the stored events.

The folder adds each stored event once, in id order, and records the highest
id it folded (`folded_through`) in the same transaction, so a duplicate never
counts and the reads know exactly which events the rollups hold; a late or
out-of-order event lands in its own bucket. Conversation counts move by deltas
that conversations.apply_events computes from the locked rows.
Every row is kept for all events (dimension "") and per value of each of
DIMENSIONS, for its business and for "*".
`rebuild` recomputes everything from the raw rows (after a bulk load, a
restore or a repair): on SQLite with the same accumulator as the folder, on
PostgreSQL in SQL whose sums are named after the same EventSums fields; tests
compare both with the rollups the folder keeps.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, transaction

from metrics_app import database
from metrics_app.analytics import sketches
from metrics_app.analytics.sketches import LOG_GAMMA, latency_bin
from metrics_app.models import (
    ALL_BUSINESSES,
    ALL_EVENTS,
    FOLDER_NAME,
    AIMetric,
    Conversation,
    ConversationRollup,
    EventRollup,
    FolderState,
    LatencySketch,
)
from metrics_app.rules import (
    ESTIMATED_SQL,
    FAILED_REPLY_SQL,
    UNPRICED_BASES,
    UNPRICED_SQL,
    CostBasis,
    is_failed_reply,
)

QUARTER = 15
DAY = 1440

# The dimensions that rollups are kept per value of: API name -> event column.
DIMENSIONS = {
    "intent": "intent_detected",
    "model": "model_name",
    "response_type": "response_type",
    "prompt_version": "prompt_version",
    "kb_version": "kb_version",
}
DIMENSION_COLUMNS = tuple(DIMENSIONS.values())
# The event columns of cached and reasoning tokens, which the rollups sum.
CACHE_COLUMNS = ("cache_read_input_tokens", "cache_write_input_tokens", "reasoning_output_tokens")
Slice = tuple[str, str]  # (dimension, value): ("", "") is every event; value "" is an event without one
EVERY_EVENT: Slice = (ALL_EVENTS, "")


def slices_of(values: tuple[str, ...]) -> list[Slice]:
    """The slices an event with these dimension values (in DIMENSIONS order, "" when missing) counts in."""
    return [EVERY_EVENT, *zip(DIMENSIONS, values, strict=True)]


def dimension_values(event: dict[str, Any]) -> tuple[str, ...]:
    return tuple(event.get(column) or "" for column in DIMENSION_COLUMNS)


@dataclass(slots=True)
class EventSums:
    """The sums of one event rollup row (per business and quarter); each field is a column of EventRollup."""

    events: int = 0
    errors: int = 0
    success_sum: Decimal = Decimal(0)
    latency_sum: int = 0
    latency_n: int = 0
    tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = Decimal(0)
    cache_savings: Decimal = Decimal(0)
    client_cost: Decimal = Decimal(0)
    unpriced: int = 0
    estimated: int = 0
    requested: int = 0
    booked: int = 0
    handoffs: int = 0
    sentiment_sum: Decimal = Decimal(0)
    sentiment_n: int = 0

    def negated(self) -> EventSums:
        return EventSums(**{f.name: -getattr(self, f.name) for f in fields(self)})

    @classmethod
    def of_event(cls, event: dict[str, Any]) -> EventSums:
        latency = event.get("response_time_ms")
        basis = event.get("cost_basis")
        rate = event.get("success_rate")
        score = event.get("user_sentiment")
        return cls(
            events=1,
            errors=1 if is_failed_reply(rate, event.get("response_type")) else 0,
            success_sum=Decimal(rate if rate is not None else 1),
            latency_sum=latency or 0,
            latency_n=0 if latency is None else 1,
            tokens=event.get("tokens_used") or 0,
            input_tokens=event.get("input_tokens") or 0,
            output_tokens=event.get("output_tokens") or 0,
            cache_read_tokens=event.get("cache_read_input_tokens") or 0,
            cache_write_tokens=event.get("cache_write_input_tokens") or 0,
            reasoning_tokens=event.get("reasoning_output_tokens") or 0,
            cost=Decimal(event.get("cost_usd") or 0),
            cache_savings=Decimal(event.get("cache_savings_usd") or 0),
            client_cost=Decimal(event.get("api_cost_usd") or 0),
            unpriced=1 if basis in UNPRICED_BASES else 0,
            estimated=1 if basis == CostBasis.ESTIMATED else 0,
            requested=1 if event.get("appointment_requested") else 0,
            booked=1 if event.get("appointment_booked") else 0,
            handoffs=1 if event.get("human_handoff_requested") else 0,
            sentiment_sum=Decimal(score if score is not None else 0),
            sentiment_n=0 if score is None else 1,
        )

    def add(self, other: EventSums) -> None:
        # Field by field, not a loop over fields(): this runs twice per ingested event.
        self.events += other.events
        self.errors += other.errors
        self.success_sum += other.success_sum
        self.latency_sum += other.latency_sum
        self.latency_n += other.latency_n
        self.tokens += other.tokens
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.cost += other.cost
        self.cache_savings += other.cache_savings
        self.client_cost += other.client_cost
        self.unpriced += other.unpriced
        self.estimated += other.estimated
        self.requested += other.requested
        self.booked += other.booked
        self.handoffs += other.handoffs
        self.sentiment_sum += other.sentiment_sum
        self.sentiment_n += other.sentiment_n

    def row(self) -> tuple[Any, ...]:
        """The values in EVENT_SUMS order."""
        return tuple(getattr(self, name) for name in EVENT_SUMS)


@dataclass(slots=True)
class ConversationSums:
    """The sums (or deltas) of one conversation rollup row; each field is a column of ConversationRollup."""

    started: int = 0
    requested: int = 0
    booked: int = 0
    handoffs: int = 0

    def add(self, other: ConversationSums) -> None:
        self.started += other.started
        self.requested += other.requested
        self.booked += other.booked
        self.handoffs += other.handoffs

    def negated(self) -> ConversationSums:
        return ConversationSums(-self.started, -self.requested, -self.booked, -self.handoffs)

    def row(self) -> tuple[int, ...]:
        """The values in CONVERSATION_SUMS order."""
        return tuple(getattr(self, name) for name in CONVERSATION_SUMS)


# The rollup columns, in the order the upserts write them: the dataclasses' own field order.
EVENT_SUMS = tuple(f.name for f in fields(EventSums))
CONVERSATION_SUMS = tuple(f.name for f in fields(ConversationSums))


def quarter_of(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(minute=moment.minute - moment.minute % QUARTER, second=0, microsecond=0)


def day_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


class Accumulator:
    """Sums of folded events per (business, quarter, dimension values), written out per slice and owner.

    Events are first summed per their whole combination of dimension values,
    so a batch touches each combination once; `write` then adds each sum to
    every slice the combination counts in, for the business and for "*".
    """

    def __init__(self) -> None:
        self.events: dict[tuple[str, tuple[str, ...], datetime], EventSums] = {}
        self.latency: dict[tuple[str, tuple[str, ...], datetime], dict[int, int]] = {}

    def add(self, event: dict[str, Any]) -> None:
        bucket = quarter_of(event["timestamp"])
        key = (event["business_id"], dimension_values(event), bucket)
        one = EventSums.of_event(event)
        sums = self.events.get(key)
        if sums is None:
            self.events[key] = one  # made for this event: the combination may keep it and add to it
        else:
            sums.add(one)
        latency = event.get("response_time_ms")
        if latency is not None:
            bins = self.latency.setdefault(key, {})
            index = latency_bin(latency)
            bins[index] = bins.get(index, 0) + 1

    def __len__(self) -> int:
        return len(self.events)

    def negate(self) -> None:
        """Turn the sums into their opposites: writing them then takes these events out of the rollups."""
        self.events = {key: sums.negated() for key, sums in self.events.items()}
        self.latency = {key: {index: -count for index, count in bins.items()} for key, bins in self.latency.items()}

    def write(self) -> None:
        if self.events:
            rows: dict[tuple[str, str, str, datetime], EventSums] = defaultdict(EventSums)
            for (business_id, values, bucket), sums in self.events.items():
                for dimension, value in slices_of(values):
                    for owner in (business_id, ALL_BUSINESSES):
                        rows[(owner, dimension, value, bucket)].add(sums)
            _upsert(EventRollup._meta.db_table, ("business_id", "dimension", "value", "bucket"), EVENT_SUMS,
                    [(*key, *sums.row()) for key, sums in sorted(rows.items())])
        if self.latency:
            add_sketches(self._sketch_additions())

    def _sketch_additions(self) -> dict[tuple[str, str, str, int, datetime], dict[int, int]]:
        """The bins to add to each sketch: every slice, owner, and both spans (quarter, day) of each combination."""
        merged: dict[tuple[str, str, str, int, datetime], dict[int, int]] = defaultdict(dict)
        for (business_id, values, bucket), bins in self.latency.items():
            targets = [
                merged[(owner, dimension, value, span, start)]
                for dimension, value in slices_of(values)
                for owner in (business_id, ALL_BUSINESSES)
                for span, start in ((QUARTER, bucket), (DAY, day_of(bucket)))
            ]
            for target in targets:
                for index, count in bins.items():
                    target[index] = target.get(index, 0) + count
        return merged


_SKETCH_KEY = ("business_id", "dimension", "value", "span_minutes", "bucket")


def add_sketches(additions: dict[tuple[str, str, str, int, datetime], dict[int, int]], chunk: int = 500) -> None:
    """Merge bins into the stored sketches: read the ones that exist, add, write back (the folder's row is held)."""
    table = connection.ops.quote_name(LatencySketch._meta.db_table)
    keys = sorted(additions)
    adapt = _adapter()
    with connection.cursor() as cursor:
        for start in range(0, len(keys), chunk):
            part = keys[start:start + chunk]
            cursor.execute(
                database.rows_by_key_sql(connection, LatencySketch._meta.db_table, _SKETCH_KEY,
                                         (*_SKETCH_KEY, "bins"), len(part)),
                [adapt(value) for key in part for value in key],
            )
            stored = {
                (b, d, v, int(span), _as_datetime(bucket)): blob for b, d, v, span, bucket, blob in cursor.fetchall()
            }
            rows = []
            for key in part:
                bins = dict(additions[key])
                if key in stored:
                    for index, count in sketches.as_dict(stored[key]).items():
                        bins[index] = bins.get(index, 0) + count
                rows.append((*key, sketches.pack(bins)))
            columns = (*_SKETCH_KEY, "bins")
            placeholder = "(" + ", ".join(["%s"] * len(columns)) + ")"
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([placeholder] * len(rows))} "
                f"ON CONFLICT ({', '.join(_SKETCH_KEY)}) DO UPDATE SET bins = excluded.bins",
                [adapt(value) for row in rows for value in row],
            )


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite hands back text
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def subtract_events(events: list[dict[str, Any]]) -> None:
    """Take folded events out of the event rollups and sketches, for their business and "*" (an erasure).

    The rows left holding no event are deleted, so nothing says an erased event was ever there.
    """
    accumulator = Accumulator()
    for event in events:
        accumulator.add(event)
    if not len(accumulator):
        return
    accumulator.negate()
    accumulator.write()
    touched = {(business_id, bucket) for business_id, _, bucket in accumulator.events}
    for business_id, bucket in touched:
        owners = [business_id, ALL_BUSINESSES]
        EventRollup.objects.filter(business_id__in=owners, bucket=bucket, events=0).delete()
        LatencySketch.objects.filter(business_id__in=owners, bucket__in=[bucket, day_of(bucket)],
                                     bins=b"").delete()


def subtract_business(business_id: str, chunk: int = 2000) -> dict[str, int]:
    """Take a whole business out of the "*" rows and delete its own rows (a business erasure); its rows counted.

    Every "*" row is the sum of the rows of the same slice and bucket of every
    business: the folder, repricing, outcomes and `rebuild` add to both alike,
    the sums are integers and four- or ten-place decimals (exact in any order),
    and a sketch's bins are counts. So subtracting the business's own rows,
    key by key, leaves exactly what the other businesses' events make, whether
    or not all of them are folded: rows the folder has not written yet are in
    neither. The folder's row must be held. "*" rows left holding no event (no
    conversation, no latency) are deleted, as `rebuild` would not make them.
    """
    key = ("dimension", "value", "bucket")
    removed = {"event_rollups": 0, "conversation_rollups": 0, "latency_sketches": 0}
    for model, sums, name in ((EventRollup, EVENT_SUMS, "event_rollups"),
                              (ConversationRollup, CONVERSATION_SUMS, "conversation_rollups")):
        own = model.objects.filter(business_id=business_id).order_by(*key).values_list(*key, *sums)
        rows = list(own.iterator(chunk_size=chunk))
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            _upsert(model._meta.db_table, ("business_id", *key), sums,
                    [(ALL_BUSINESSES, *row[:3], *(-value for value in row[3:])) for row in part])
        buckets = sorted({row[2] for row in rows})
        empty = {"events": 0} if model is EventRollup else dict.fromkeys(CONVERSATION_SUMS, 0)
        for start in range(0, len(buckets), chunk):
            model.objects.filter(business_id=ALL_BUSINESSES, bucket__in=buckets[start:start + chunk],
                                 **empty).delete()
        removed[name], _ = model.objects.filter(business_id=business_id).delete()
    sketch_key = ("dimension", "value", "span_minutes", "bucket")
    own_sketches = LatencySketch.objects.filter(business_id=business_id).order_by(*sketch_key)
    additions = {
        (ALL_BUSINESSES, d, v, int(span), bucket): {index: -count for index, count in sketches.as_dict(bins).items()}
        for d, v, span, bucket, bins in own_sketches.values_list(*sketch_key, "bins").iterator(chunk_size=chunk)
    }
    if additions:
        add_sketches(additions)
        buckets = sorted({key[4] for key in additions})
        for start in range(0, len(buckets), chunk):
            LatencySketch.objects.filter(business_id=ALL_BUSINESSES, bucket__in=buckets[start:start + chunk],
                                         bins=b"").delete()
    removed["latency_sketches"], _ = LatencySketch.objects.filter(business_id=business_id).delete()
    return removed


def add_events(events: list[dict[str, Any]]) -> None:
    """Add events being folded to the rollups (the folder's transaction)."""
    accumulator = Accumulator()
    for event in events:
        accumulator.add(event)
    accumulator.write()


def _slice_rows(event: dict[str, Any], sums: EventSums) -> list[tuple[Any, ...]]:
    bucket = quarter_of(event["timestamp"])
    return [
        (owner, dimension, value, bucket, *sums.row())
        for dimension, value in slices_of(dimension_values(event))
        for owner in (event["business_id"], ALL_BUSINESSES)
    ]


def replace_costs(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> None:
    """Repricing changed these folded events' cost and cost basis: move the rollups' cost figures to match."""
    deltas: dict[tuple[Any, ...], EventSums] = defaultdict(EventSums)
    for old, new in zip(before, after, strict=True):
        change = EventSums(
            cost=Decimal(new["cost_usd"] or 0) - Decimal(old["cost_usd"] or 0),
            cache_savings=Decimal(new["cache_savings_usd"] or 0) - Decimal(old["cache_savings_usd"] or 0),
            unpriced=(new["cost_basis"] in UNPRICED_BASES) - (old["cost_basis"] in UNPRICED_BASES),
            estimated=(new["cost_basis"] == CostBasis.ESTIMATED) - (old["cost_basis"] == CostBasis.ESTIMATED),
        )
        for row in _slice_rows(old, change):
            deltas[row[:4]].add(change)
    rows = [(*key, *sums.row()) for key, sums in sorted(deltas.items())]
    _upsert(EventRollup._meta.db_table, ("business_id", "dimension", "value", "bucket"), EVENT_SUMS, rows)


ConversationDeltas = dict[tuple[str, str, str, datetime], ConversationSums]  # (business, dimension, value, bucket)


def add_conversation_deltas(deltas: ConversationDeltas) -> None:
    """Add conversation deltas per (business, dimension, value, quarter); "*" rows too."""
    both: ConversationDeltas = defaultdict(ConversationSums)
    for (business_id, dimension, value, bucket), delta in deltas.items():
        for owner in (business_id, ALL_BUSINESSES):
            both[(owner, dimension, value, bucket)].add(delta)
    rows = [(*key, *row) for key, sums in sorted(both.items()) if any(row := sums.row())]
    if rows:
        _upsert(ConversationRollup._meta.db_table, ("business_id", "dimension", "value", "bucket"),
                CONVERSATION_SUMS, rows)


def add_event_flags(event: dict[str, Any], flags: Iterable[str]) -> None:
    """An outcome recorded later turned these flags on for one folded event (its columns, as a dict)."""
    turned_on = set(flags)
    if not turned_on:
        return
    sums = EventSums(
        requested=int("appointment_requested" in turned_on),
        booked=int("appointment_booked" in turned_on),
        handoffs=int("human_handoff_requested" in turned_on),
    )
    _upsert(EventRollup._meta.db_table, ("business_id", "dimension", "value", "bucket"), EVENT_SUMS,
            sorted(_slice_rows(event, sums)))


def _upsert(table: str, keys: tuple[str, ...], sums: tuple[str, ...], rows: list[tuple[Any, ...]],
            chunk: int = 1000) -> None:
    """INSERT rows, adding their sums to rows that exist. Rows come sorted, so concurrent writers lock in one order."""
    quoted = connection.ops.quote_name(table)
    columns = (*keys, *sums)
    placeholder = "(" + ", ".join(["%s"] * len(columns)) + ")"
    updates = ", ".join(f"{c} = {quoted}.{c} + excluded.{c}" for c in sums)
    adapt = _adapter()
    with connection.cursor() as cursor:
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            sql = (
                f"INSERT INTO {quoted} ({', '.join(columns)}) VALUES {', '.join([placeholder] * len(part))} "
                f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
            )
            cursor.execute(sql, [adapt(value) for row in part for value in row])


def _adapter() -> Any:
    if connection.vendor == "postgresql":
        return lambda value: value
    # SQLite keeps datetimes as UTC text and decimals as text or real; Django's own adapters agree.
    def adapt(value: Any) -> Any:
        if isinstance(value, datetime):
            return connection.ops.adapt_datetimefield_value(value)
        if isinstance(value, Decimal):
            return str(value)
        return value
    return adapt


def rebuild(progress: Any = None, chunk: int = 20_000, through: int | None = None,
            took: dict[str, float] | None = None, since: datetime | None = None) -> dict[str, int]:
    """Recompute every rollup from the raw events (those with id <= `through`) and conversations; returns row counts.

    metrics_app.folding.rebuild calls it with the folder's row held, so the
    rollups and folded_through change together. With `since` (the retention
    horizon, a UTC midnight: no raw event before it is left), the rows of the
    buckets before it are kept and only the later ones are recomputed, from
    the events and conversations from `since` on.
    """
    with transaction.atomic():
        for model in (EventRollup, LatencySketch, ConversationRollup):
            table = connection.ops.quote_name(model._meta.db_table)
            with connection.cursor() as cursor:
                if since is None:
                    cursor.execute(f"DELETE FROM {table}")
                else:
                    cursor.execute(f"DELETE FROM {table} WHERE bucket >= %s",
                                   [connection.ops.adapt_datetimefield_value(since)])
        if connection.vendor == "postgresql":
            # The same sums and bins in SQL: several times faster on millions of rows. PostgreSQL's ln()
            # and Python's math.log are the same C function, so each latency lands in the same bin.
            _rebuild_in_sql(AIMetric._meta.db_table, Conversation._meta.db_table, through, took, since)
            return _counts()
        _rebuild_events(progress, chunk, through, since)
        _rebuild_conversations(chunk, since)
    return _counts()


# What the rollups, the Prometheus totals and the conversations read of an event (the folder reads these and
# the ids and times it needs itself).
EVENT_COLUMNS = (
    "business_id", "timestamp", "response_time_ms", "success_rate", "response_type", "tokens_used",
    "input_tokens", "output_tokens", *CACHE_COLUMNS, "cost_usd", "cache_savings_usd", "api_cost_usd", "cost_basis",
    "appointment_requested", "appointment_booked", "human_handoff_requested", "user_sentiment", *DIMENSION_COLUMNS,
)


def _rebuild_events(progress: Any, chunk: int, through: int | None, since: datetime | None) -> None:
    """Event rollups and sketches through the accumulator that the folder uses, written every 50,000 combinations."""
    accumulator = Accumulator()
    events = AIMetric.objects.order_by()
    if through is not None:
        events = events.filter(id__lte=through)
    if since is not None:
        events = events.filter(timestamp__gte=since)
    columns = tuple(dict.fromkeys(EVENT_COLUMNS))
    rows = events.values_list(*columns).iterator(chunk_size=chunk)
    for n, values in enumerate(rows, 1):
        accumulator.add(dict(zip(columns, values, strict=True)))
        if n % chunk == 0:
            if progress is not None:
                progress(chunk)
            if len(accumulator) > 50_000:
                accumulator.write()
                accumulator = Accumulator()
    accumulator.write()


def conversation_contributions(business_id: str, first_at: datetime, flags: tuple[bool, ...],
                               values: dict[str, list[str]], sign: int = 1) -> ConversationDeltas:
    """What one conversation adds to the conversation rollups: once in "", once under each of its values."""
    sums = ConversationSums(started=sign, requested=sign * flags[0], booked=sign * flags[1],
                            handoffs=sign * flags[2])
    bucket = quarter_of(first_at)
    found: ConversationDeltas = {(business_id, ALL_EVENTS, "", bucket): sums}
    for dimension in DIMENSIONS:
        for value in values.get(dimension, ()):
            found[(business_id, dimension, value, bucket)] = sums
    return found


def _rebuild_conversations(chunk: int, since: datetime | None) -> None:
    deltas: ConversationDeltas = defaultdict(ConversationSums)
    conversations = Conversation.objects.order_by()
    if since is not None:
        conversations = conversations.filter(first_at__gte=since)
    for business_id, first, requested, booked, handoff, values in conversations.values_list(
        "business_id", "first_at", "appointment_requested", "appointment_booked", "human_handoff_requested",
        "dimension_values",
    ).iterator(chunk_size=chunk):
        for key, sums in conversation_contributions(business_id, first, (requested, booked, handoff),
                                                    values or {}).items():
            deltas[key].add(sums)
    add_conversation_deltas(deltas)


def _counts() -> dict[str, int]:
    return {
        "event_rollups": EventRollup.objects.count(),
        "latency_sketches": LatencySketch.objects.count(),
        "conversation_rollups": ConversationRollup.objects.count(),
    }


_QUARTER_SQL = "date_bin('15 minutes', {}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
_LATENCY_BIN_SQL = (
    "CASE WHEN response_time_ms <= 0 THEN 0 ELSE CEIL(LN(response_time_ms::float8) / %s::float8)::int + 1 END"
)


def _slices_sql() -> str:
    """A LATERAL list of the slices of one event row: ("", "") and each dimension's value."""
    rows = ["('', '')"] + [f"('{name}', COALESCE({column}, ''))" for name, column in DIMENSIONS.items()]
    return f"CROSS JOIN LATERAL (VALUES {', '.join(rows)}) s (dimension, value)"


def _rebuild_in_sql(events_table: str, conversations_table: str, through: int | None,
                    took: dict[str, float] | None = None, since: datetime | None = None) -> None:
    """PostgreSQL: every rollup from the raw tables, with GROUPING SETS for the business and "*"."""
    q = connection.ops.quote_name
    conversations = q(conversations_table)
    events = q(events_table)
    conditions = [] if through is None else [f"id <= {int(through)}"]
    if since is not None:
        # A UTC midnight, written as a literal so the statements below keep their own parameters.
        since_sql = f"TIMESTAMPTZ '{since.astimezone(UTC).isoformat()}'"
        conditions.append(f"timestamp >= {since_sql}")
        conversations = f"(SELECT * FROM {conversations} WHERE first_at >= {since_sql})"
    if conditions:
        events = f"(SELECT * FROM {events} WHERE {' AND '.join(conditions)})"
    quarter = _QUARTER_SQL.format("timestamp")
    # Each rollup column with the SQL that sums it, by name: the column list and the select list come
    # from this one mapping, so they cannot fall out of order with EventSums.
    sql_of = {
        "events": "COUNT(*)",
        "errors": f"COUNT(*) FILTER (WHERE {FAILED_REPLY_SQL})",
        "success_sum": "SUM(success_rate)",
        "latency_sum": "COALESCE(SUM(response_time_ms), 0)",
        "latency_n": "COUNT(response_time_ms)",
        "tokens": "COALESCE(SUM(tokens_used), 0)",
        "input_tokens": "COALESCE(SUM(input_tokens), 0)",
        "output_tokens": "COALESCE(SUM(output_tokens), 0)",
        "cache_read_tokens": "COALESCE(SUM(cache_read_input_tokens), 0)",
        "cache_write_tokens": "COALESCE(SUM(cache_write_input_tokens), 0)",
        "reasoning_tokens": "COALESCE(SUM(reasoning_output_tokens), 0)",
        "cost": "COALESCE(SUM(cost_usd), 0)",
        "cache_savings": "COALESCE(SUM(cache_savings_usd), 0)",
        "client_cost": "COALESCE(SUM(api_cost_usd), 0)",
        "unpriced": f"COUNT(*) FILTER (WHERE {UNPRICED_SQL})",
        "estimated": f"COUNT(*) FILTER (WHERE {ESTIMATED_SQL})",
        "requested": "COUNT(*) FILTER (WHERE appointment_requested)",
        "booked": "COUNT(*) FILTER (WHERE appointment_booked)",
        "handoffs": "COUNT(*) FILTER (WHERE human_handoff_requested)",
        "sentiment_sum": "COALESCE(SUM(user_sentiment), 0)",
        "sentiment_n": "COUNT(user_sentiment)",
    }
    sums = ", ".join(sql_of[column] for column in EVENT_SUMS)
    owner = f"COALESCE(business_id, '{ALL_BUSINESSES}')"
    slice_key = "dimension, value, bucket"
    took = {} if took is None else took
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {q(EventRollup._meta.db_table)} (business_id, {slice_key}, {', '.join(EVENT_SUMS)}) "
            f"SELECT {owner}, {slice_key}, {sums} FROM (SELECT e.*, s.dimension, s.value, {quarter} AS bucket "
            f"FROM {events} e {_slices_sql()}) e "
            f"GROUP BY GROUPING SETS ((business_id, {slice_key}), ({slice_key}))"
        )
        took["event rollups"] = time.perf_counter() - started
        started = time.perf_counter()
        _rebuild_sketches_in_sql(cursor, events, owner)
        took["latency sketches"] = time.perf_counter() - started
        started = time.perf_counter()
        conversation_sql_of = {
            "started": "COUNT(*)",
            "requested": "COUNT(*) FILTER (WHERE appointment_requested)",
            "booked": "COUNT(*) FILTER (WHERE appointment_booked)",
            "handoffs": "COUNT(*) FILTER (WHERE human_handoff_requested)",
        }
        conversation_sums = ", ".join(conversation_sql_of[column] for column in CONVERSATION_SUMS)
        flags = "appointment_requested, appointment_booked, human_handoff_requested"
        bucket = _QUARTER_SQL.format("first_at")
        cursor.execute(
            f"INSERT INTO {q(ConversationRollup._meta.db_table)} (business_id, {slice_key}, "
            f"{', '.join(CONVERSATION_SUMS)}) "
            f"SELECT {owner}, {slice_key}, {conversation_sums} FROM ("
            f"SELECT business_id, '' AS dimension, '' AS value, {bucket} AS bucket, {flags} FROM {conversations} c0 "
            f"UNION ALL SELECT c.business_id, d.key, v.value, {bucket}, {flags} FROM {conversations} c "
            f"CROSS JOIN LATERAL jsonb_each(c.dimension_values) d "
            f"CROSS JOIN LATERAL jsonb_array_elements_text(d.value) v (value)) c "
            f"GROUP BY GROUPING SETS ((business_id, {slice_key}), ({slice_key}))"
        )
        took["conversation rollups"] = time.perf_counter() - started


def _rebuild_sketches_in_sql(cursor: Any, events: str, owner: str) -> None:
    """Quarter sketches counted in SQL one UTC day at a time (bounded memory); each day's sketch is their sum."""
    cursor.execute(f"SELECT MIN(timestamp), MAX(timestamp) FROM {events} e")
    first, last = cursor.fetchone()
    if first is None:
        return
    day = day_of(first)
    quarter = _QUARTER_SQL.format("timestamp")
    while day <= last:
        cursor.execute(
            f"SELECT owner, dimension, value, bucket, array_agg(bin ORDER BY bin), array_agg(n ORDER BY bin) "
            f"FROM (SELECT {owner} AS owner, dimension, value, bucket, bin, COUNT(*) AS n FROM ("
            f"SELECT e.business_id, s.dimension, s.value, {quarter} AS bucket, {_LATENCY_BIN_SQL} AS bin "
            f"FROM {events} e {_slices_sql()} WHERE response_time_ms IS NOT NULL "
            f"AND timestamp >= %s AND timestamp < %s) e "
            f"GROUP BY GROUPING SETS ((business_id, dimension, value, bucket, bin), "
            f"(dimension, value, bucket, bin))) g GROUP BY owner, dimension, value, bucket",
            [LOG_GAMMA, day, day + timedelta(days=1)],
        )
        rows = []
        days: dict[tuple[str, str, str], dict[int, int]] = defaultdict(dict)
        for b, d, v, bucket, bins, counts in cursor.fetchall():
            quarter_bins = dict(zip(bins, counts, strict=True))
            rows.append((b, d, v, QUARTER, bucket, sketches.pack(quarter_bins)))
            whole_day = days[(b, d, v)]
            for index, count in quarter_bins.items():
                whole_day[index] = whole_day.get(index, 0) + count
        rows.extend((b, d, v, DAY, day, sketches.pack(bins)) for (b, d, v), bins in days.items())
        _write_sketches(rows)
        day += timedelta(days=1)


def _write_sketches(rows: list[tuple[Any, ...]], chunk: int = 2000) -> None:
    table = connection.ops.quote_name(LatencySketch._meta.db_table)
    columns = (*_SKETCH_KEY, "bins")
    placeholder = "(" + ", ".join(["%s"] * len(columns)) + ")"
    with connection.cursor() as cursor:
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([placeholder] * len(part))}",
                [value for row in part for value in row],
            )


def whole_quarters(start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
    """The whole 15-minute buckets inside [start, end), or None when there is none."""
    first = quarter_of(start)
    if first < start:
        first += timedelta(minutes=QUARTER)
    last = quarter_of(end)
    return (first, last) if first < last else None


class RebuildPending(Exception):
    """A migration changed what the rollups hold and rebuild_analytics has not run: their figures are incomplete."""


def rebuild_pending() -> bool:
    return FolderState.objects.filter(name=FOLDER_NAME, rebuild_needed=True).exists()


def folded_through(*, hold: bool = False, wait_seconds: float | None = None) -> int:
    """The highest event id folded into the rollups and conversations: every lower id is folded too.

    With `hold`, no fold commits until the caller's transaction ends (a share
    lock on the folder's row on PostgreSQL; SQLite's write lock, which an
    immediate transaction already holds, does the same there). A writer that
    changes stored events (an outcome, a repricing) holds it, so it knows
    which of them the rollups already count.
    """
    table = connection.ops.quote_name(FolderState._meta.db_table)
    lock = " FOR SHARE" if hold and connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        if lock and wait_seconds is not None:
            # A lock not granted in time (a rebuild holds the row for minutes) is "busy": 503, retry later.
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{int(wait_seconds * 1000)}ms"])
        cursor.execute(f"SELECT folded_through FROM {table} WHERE name = %s{lock}", [FOLDER_NAME])
        row = cursor.fetchone()
    return int(row[0]) if row else 0
