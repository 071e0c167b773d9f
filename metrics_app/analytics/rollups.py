"""Pre-aggregated analytics: 15-minute rollups, kept by the folder (metrics_app/folding) from the stored events.

The folder adds each stored event once, in id order, and records the highest
id it folded (`folded_through`) in the same transaction, so a duplicate never
counts and the reads know exactly which events the rollups hold; a late or
out-of-order event lands in its own bucket. Conversation counts move by deltas
that conversations.apply_events computes from the locked rows.
`rebuild` recomputes everything from the raw rows (after a bulk load, a
repair, or a repricing): on SQLite with the same accumulator as ingest, on
PostgreSQL in one SQL statement per table whose sums are named after the same
EventSums fields; tests compare both with rollups kept by ingest.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, transaction

from metrics_app.models import (
    ALL_BUSINESSES,
    FOLDER_NAME,
    AIMetric,
    Conversation,
    ConversationRollup,
    EventRollup,
    FolderState,
    LatencyRollup,
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
SKETCH_RELATIVE_ERROR = 0.01
GAMMA = (1 + SKETCH_RELATIVE_ERROR) / (1 - SKETCH_RELATIVE_ERROR)
LOG_GAMMA = math.log(GAMMA)


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
    cost: Decimal = Decimal(0)
    client_cost: Decimal = Decimal(0)
    unpriced: int = 0
    estimated: int = 0
    requested: int = 0
    booked: int = 0
    handoffs: int = 0

    @classmethod
    def of_event(cls, event: dict[str, Any]) -> EventSums:
        latency = event.get("response_time_ms")
        basis = event.get("cost_basis")
        rate = event.get("success_rate")
        return cls(
            events=1,
            errors=1 if is_failed_reply(rate, event.get("response_type")) else 0,
            success_sum=Decimal(rate if rate is not None else 1),
            latency_sum=latency or 0,
            latency_n=0 if latency is None else 1,
            tokens=event.get("tokens_used") or 0,
            input_tokens=event.get("input_tokens") or 0,
            output_tokens=event.get("output_tokens") or 0,
            cost=Decimal(event.get("cost_usd") or 0),
            client_cost=Decimal(event.get("api_cost_usd") or 0),
            unpriced=1 if basis in UNPRICED_BASES else 0,
            estimated=1 if basis == CostBasis.ESTIMATED else 0,
            requested=1 if event.get("appointment_requested") else 0,
            booked=1 if event.get("appointment_booked") else 0,
            handoffs=1 if event.get("human_handoff_requested") else 0,
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
        self.cost += other.cost
        self.client_cost += other.client_cost
        self.unpriced += other.unpriced
        self.estimated += other.estimated
        self.requested += other.requested
        self.booked += other.booked
        self.handoffs += other.handoffs

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


def latency_bin(ms: int) -> int:
    if ms <= 0:
        return 0
    return math.ceil(math.log(ms) / LOG_GAMMA) + 1


def bin_value(index: int) -> float:
    """The value a bin stands for: within SKETCH_RELATIVE_ERROR of every latency in it."""
    if index == 0:
        return 0.0
    return 2 * GAMMA ** (index - 1) / (GAMMA + 1)


def sketch_percentile(bins: dict[int, int], fraction: float) -> float | None:
    """The percentile of a merged sketch, interpolated between closest ranks as percentile_cont does.

    Each of the two order statistics is within 1% of the true one, so the
    interpolation is within 1% of the exact percentile.
    """
    total = sum(bins.values())
    if not total:
        return None
    position = fraction * (total - 1)
    low_rank = math.floor(position)
    high_rank = min(low_rank + 1, total - 1)
    low = high = None
    seen = 0
    for index in sorted(bins):
        seen += bins[index]
        if low is None and seen > low_rank:
            low = bin_value(index)
        if seen > high_rank:
            high = bin_value(index)
            break
    assert low is not None and high is not None
    return low + (high - low) * (position - low_rank)


class Accumulator:
    """Sums of new events per (business, quarter), both per business and for "*"."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, datetime], EventSums] = {}
        self.latency: dict[tuple[str, int, datetime, int], int] = defaultdict(int)

    def add(self, event: dict[str, Any]) -> None:
        moment = event["timestamp"]
        bucket = quarter_of(moment)
        one = EventSums.of_event(event)
        own_key = (event["business_id"], bucket)
        own = self.events.get(own_key)
        if own is None:
            self.events[own_key] = one  # made for this event: the bucket may keep it and add to it
        else:
            own.add(one)
        everyone = self.events.get((ALL_BUSINESSES, bucket))
        if everyone is None:
            everyone = self.events[(ALL_BUSINESSES, bucket)] = EventSums()
        everyone.add(one)
        latency = event.get("response_time_ms")
        if latency is not None:
            # One bin and one day for both owners: this runs per ingested event.
            index, day = latency_bin(latency), day_of(moment)
            for owner in (event["business_id"], ALL_BUSINESSES):
                self.latency[(owner, QUARTER, bucket, index)] += 1
                self.latency[(owner, DAY, day, index)] += 1

    def write(self) -> None:
        if self.events:
            _upsert(EventRollup._meta.db_table, ("business_id", "bucket"), EVENT_SUMS,
                    [(*key, *sums.row()) for key, sums in sorted(self.events.items())])
        if self.latency:
            _upsert(LatencyRollup._meta.db_table, ("business_id", "span_minutes", "bucket", "bin"), ("count",),
                    [(*key, count) for key, count in sorted(self.latency.items())])


def add_events(events: list[dict[str, Any]]) -> None:
    """Add newly inserted events to the rollups (the caller's transaction)."""
    accumulator = Accumulator()
    for event in events:
        accumulator.add(event)
    accumulator.write()


def replace_costs(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> None:
    """Repricing changed these events' cost and cost basis: move the rollups' cost figures to match."""
    deltas: dict[tuple[str, datetime], EventSums] = defaultdict(EventSums)
    for old, new in zip(before, after, strict=True):
        bucket = quarter_of(old["timestamp"])
        change = EventSums(
            cost=Decimal(new["cost_usd"] or 0) - Decimal(old["cost_usd"] or 0),
            unpriced=(new["cost_basis"] in UNPRICED_BASES) - (old["cost_basis"] in UNPRICED_BASES),
            estimated=(new["cost_basis"] == CostBasis.ESTIMATED) - (old["cost_basis"] == CostBasis.ESTIMATED),
        )
        for owner in (old["business_id"], ALL_BUSINESSES):
            deltas[(owner, bucket)].add(change)
    rows = [(*key, *sums.row()) for key, sums in sorted(deltas.items())]
    _upsert(EventRollup._meta.db_table, ("business_id", "bucket"), EVENT_SUMS, rows)


def add_conversation_deltas(deltas: dict[tuple[str, datetime], ConversationSums]) -> None:
    """Add conversation deltas per (business, quarter); "*" rows too."""
    both: dict[tuple[str, datetime], ConversationSums] = defaultdict(ConversationSums)
    for (business_id, bucket), delta in deltas.items():
        for owner in (business_id, ALL_BUSINESSES):
            both[(owner, bucket)].add(delta)
    rows = [(*key, *row) for key, sums in sorted(both.items()) if any(row := sums.row())]
    if rows:
        _upsert(ConversationRollup._meta.db_table, ("business_id", "bucket"), CONVERSATION_SUMS, rows)


def add_event_flags(business_id: str, moment: datetime, flags: Iterable[str]) -> None:
    """An outcome recorded later turned these flags on for one stored event."""
    turned_on = set(flags)
    if not turned_on:
        return
    values = EventSums(
        requested=int("appointment_requested" in turned_on),
        booked=int("appointment_booked" in turned_on),
        handoffs=int("human_handoff_requested" in turned_on),
    ).row()
    bucket = quarter_of(moment)
    _upsert(EventRollup._meta.db_table, ("business_id", "bucket"), EVENT_SUMS,
            [(business_id, bucket, *values), (ALL_BUSINESSES, bucket, *values)])


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


def rebuild(progress: Any = None, chunk: int = 20_000, through: int | None = None) -> dict[str, int]:
    """Recompute every rollup from the raw events (those with id <= `through`) and conversations; returns row counts.

    metrics_app.folding.rebuild calls it with the folder's row held, so the
    rollups and folded_through change together.
    """
    with transaction.atomic():
        for model in (EventRollup, LatencyRollup, ConversationRollup):
            table = connection.ops.quote_name(model._meta.db_table)
            with connection.cursor() as cursor:
                cursor.execute(f"DELETE FROM {table}")
        if connection.vendor == "postgresql":
            # The same sums and bins in SQL: about 20 times faster on millions of rows. PostgreSQL's ln()
            # and Python's math.log are the same C function, so each latency lands in the same bin.
            _rebuild_in_sql(AIMetric._meta.db_table, Conversation._meta.db_table, through)
            return _counts()
        _rebuild_events(progress, chunk, through)
        _rebuild_conversations(chunk)
    return _counts()


_EVENT_COLUMNS = (
    "business_id", "timestamp", "response_time_ms", "success_rate", "response_type", "tokens_used",
    "input_tokens", "output_tokens", "cost_usd", "api_cost_usd", "cost_basis",
    "appointment_requested", "appointment_booked", "human_handoff_requested",
)


def _rebuild_events(progress: Any, chunk: int, through: int | None) -> None:
    """Event and latency rollups through the accumulator that the folder uses, written every 200,000 latency rows."""
    accumulator = Accumulator()
    events = AIMetric.objects.order_by()
    if through is not None:
        events = events.filter(id__lte=through)
    rows = events.values_list(*_EVENT_COLUMNS).iterator(chunk_size=chunk)
    for n, values in enumerate(rows, 1):
        accumulator.add(dict(zip(_EVENT_COLUMNS, values, strict=True)))
        if n % chunk == 0:
            if progress is not None:
                progress(chunk)
            if len(accumulator.latency) > 200_000:
                accumulator.write()
                accumulator = Accumulator()
    accumulator.write()


def _rebuild_conversations(chunk: int) -> None:
    deltas: dict[tuple[str, datetime], ConversationSums] = defaultdict(ConversationSums)
    for business_id, first, requested, booked, handoff in Conversation.objects.order_by().values_list(
        "business_id", "first_at", "appointment_requested", "appointment_booked", "human_handoff_requested"
    ).iterator(chunk_size=chunk):
        deltas[(business_id, quarter_of(first))].add(
            ConversationSums(started=1, requested=requested, booked=booked, handoffs=handoff)
        )
    add_conversation_deltas(deltas)


def _counts() -> dict[str, int]:
    return {
        "event_rollups": EventRollup.objects.count(),
        "latency_rollups": LatencyRollup.objects.count(),
        "conversation_rollups": ConversationRollup.objects.count(),
    }


_QUARTER_SQL = "date_bin('15 minutes', {}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
_DAY_SQL = "(date_trunc('day', {} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"


def _rebuild_in_sql(events_table: str, conversations_table: str, through: int | None) -> None:
    """PostgreSQL: every rollup from the raw tables with GROUPING SETS (per business, and "*")."""
    q = connection.ops.quote_name
    conversations = q(conversations_table)
    events = q(events_table) if through is None else f"(SELECT * FROM {q(events_table)} WHERE id <= {int(through)}) r"
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
        "cost": "COALESCE(SUM(cost_usd), 0)",
        "client_cost": "COALESCE(SUM(api_cost_usd), 0)",
        "unpriced": f"COUNT(*) FILTER (WHERE {UNPRICED_SQL})",
        "estimated": f"COUNT(*) FILTER (WHERE {ESTIMATED_SQL})",
        "requested": "COUNT(*) FILTER (WHERE appointment_requested)",
        "booked": "COUNT(*) FILTER (WHERE appointment_booked)",
        "handoffs": "COUNT(*) FILTER (WHERE human_handoff_requested)",
    }
    sums = ", ".join(sql_of[column] for column in EVENT_SUMS)
    owner = f"COALESCE(business_id, '{ALL_BUSINESSES}')"
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {q(EventRollup._meta.db_table)} (business_id, bucket, {', '.join(EVENT_SUMS)}) "
            f"SELECT {owner}, bucket, {sums} FROM (SELECT *, {quarter} AS bucket FROM {events}) e "
            f"GROUP BY GROUPING SETS ((business_id, bucket), (bucket))"
        )
        latency_bin_sql = (
            "CASE WHEN response_time_ms <= 0 THEN 0 "
            "ELSE CEIL(LN(response_time_ms::float8) / %s::float8)::int + 1 END"
        )
        for span, bucket_sql in ((QUARTER, quarter), (DAY, _DAY_SQL.format("timestamp"))):
            cursor.execute(
                f"INSERT INTO {q(LatencyRollup._meta.db_table)} (business_id, span_minutes, bucket, bin, count) "
                f"SELECT {owner}, {span}, bucket, bin, COUNT(*) FROM ("
                f"SELECT business_id, {bucket_sql} AS bucket, {latency_bin_sql} AS bin FROM {events} "
                f"WHERE response_time_ms IS NOT NULL) e "
                f"GROUP BY GROUPING SETS ((business_id, bucket, bin), (bucket, bin))",
                [LOG_GAMMA],
            )
        conversation_sql_of = {
            "started": "COUNT(*)",
            "requested": "COUNT(*) FILTER (WHERE appointment_requested)",
            "booked": "COUNT(*) FILTER (WHERE appointment_booked)",
            "handoffs": "COUNT(*) FILTER (WHERE human_handoff_requested)",
        }
        conversation_sums = ", ".join(conversation_sql_of[column] for column in CONVERSATION_SUMS)
        cursor.execute(
            f"INSERT INTO {q(ConversationRollup._meta.db_table)} (business_id, bucket, {', '.join(CONVERSATION_SUMS)}) "
            f"SELECT {owner}, bucket, {conversation_sums} "
            f"FROM (SELECT *, {_QUARTER_SQL.format('first_at')} AS bucket FROM {conversations}) c "
            f"GROUP BY GROUPING SETS ((business_id, bucket), (bucket))"
        )


def whole_quarters(start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
    """The whole 15-minute buckets inside [start, end), or None when there is none."""
    first = quarter_of(start)
    if first < start:
        first += timedelta(minutes=QUARTER)
    last = quarter_of(end)
    return (first, last) if first < last else None


def folded_through(*, hold: bool = False) -> int:
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
        cursor.execute(f"SELECT folded_through FROM {table} WHERE name = %s{lock}", [FOLDER_NAME])
        row = cursor.fetchone()
    return int(row[0]) if row else 0
