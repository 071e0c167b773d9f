"""Pre-aggregated analytics: 15-minute rollups kept by ingest in the same transaction as the events.

Ingest adds only the events its INSERT returned, so a duplicate never counts;
a late or out-of-order event lands in its own bucket. Conversation counts move
by deltas that conversations.apply_events computes from the locked rows.
`rebuild` recomputes everything from the raw rows (after a bulk load, a
repair, or a repricing) with the same accumulator, so both paths agree.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Iterable

from django.db import connection, transaction

from metrics_app.models import ALL_BUSINESSES, AIMetric, Conversation, ConversationRollup, EventRollup, LatencyRollup
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

EVENT_SUMS = ("events", "errors", "success_sum", "latency_sum", "latency_n", "tokens", "input_tokens",
              "output_tokens", "cost", "client_cost", "unpriced", "estimated", "requested", "booked", "handoffs")
CONVERSATION_SUMS = ("started", "requested", "booked", "handoffs")


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
        self.events: dict[tuple[str, datetime], list[Any]] = {}
        self.latency: dict[tuple[str, int, datetime, int], int] = defaultdict(int)

    def add(self, event: dict[str, Any]) -> None:
        moment = event["timestamp"]
        bucket = quarter_of(moment)
        latency = event.get("response_time_ms")
        basis = event.get("cost_basis")
        rate = event.get("success_rate")
        failed = is_failed_reply(rate, event.get("response_type"))
        values = (
            1, 1 if failed else 0, Decimal(rate if rate is not None else 1),
            latency or 0, 0 if latency is None else 1,
            event.get("tokens_used") or 0, event.get("input_tokens") or 0, event.get("output_tokens") or 0,
            Decimal(event.get("cost_usd") or 0), Decimal(event.get("api_cost_usd") or 0),
            1 if basis in UNPRICED_BASES else 0, 1 if basis == CostBasis.ESTIMATED else 0,
            1 if event.get("appointment_requested") else 0, 1 if event.get("appointment_booked") else 0,
            1 if event.get("human_handoff_requested") else 0,
        )
        for business_id in (event["business_id"], ALL_BUSINESSES):
            sums = self.events.get((business_id, bucket))
            if sums is None:
                self.events[(business_id, bucket)] = list(values)
            else:
                for i, value in enumerate(values):
                    sums[i] += value
            if latency is not None:
                index = latency_bin(latency)
                self.latency[(business_id, QUARTER, bucket, index)] += 1
                self.latency[(business_id, DAY, day_of(moment), index)] += 1

    def write(self) -> None:
        if self.events:
            _upsert(EventRollup._meta.db_table, ("business_id", "bucket"), EVENT_SUMS,
                    [(*key, *values) for key, values in sorted(self.events.items())])
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
    deltas: dict[tuple[str, datetime], list[Any]] = {}
    for old, new in zip(before, after):
        bucket = quarter_of(old["timestamp"])
        change = (
            Decimal(new["cost_usd"] or 0) - Decimal(old["cost_usd"] or 0),
            (new["cost_basis"] in UNPRICED_BASES) - (old["cost_basis"] in UNPRICED_BASES),
            (new["cost_basis"] == CostBasis.ESTIMATED) - (old["cost_basis"] == CostBasis.ESTIMATED),
        )
        for owner in (old["business_id"], ALL_BUSINESSES):
            sums = deltas.setdefault((owner, bucket), [Decimal(0), 0, 0])
            for i, value in enumerate(change):
                sums[i] += value
    changed = ("cost", "unpriced", "estimated")
    rows = []
    for key, values in sorted(deltas.items()):
        by_name = dict(zip(changed, values))
        rows.append((*key, *(by_name.get(name, 0) for name in EVENT_SUMS)))
    _upsert(EventRollup._meta.db_table, ("business_id", "bucket"), EVENT_SUMS, rows)


def add_conversation_deltas(deltas: dict[tuple[str, datetime], list[int]]) -> None:
    """Add (started, requested, booked, handoffs) deltas per (business, quarter); "*" rows too."""
    both: dict[tuple[str, datetime], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for (business_id, bucket), delta in deltas.items():
        for owner in (business_id, ALL_BUSINESSES):
            sums = both[(owner, bucket)]
            for i, value in enumerate(delta):
                sums[i] += value
    rows = [(*key, *values) for key, values in sorted(both.items()) if any(values)]
    if rows:
        _upsert(ConversationRollup._meta.db_table, ("business_id", "bucket"), CONVERSATION_SUMS, rows)


def add_event_flags(business_id: str, moment: datetime, flags: Iterable[str]) -> None:
    """An outcome recorded later turned these flags on for one stored event."""
    column = {"appointment_requested": "requested", "appointment_booked": "booked",
              "human_handoff_requested": "handoffs"}
    delta = {column[f]: 1 for f in flags}
    if not delta:
        return
    names = tuple(EVENT_SUMS)
    values = [delta.get(name, 0) for name in names]
    bucket = quarter_of(moment)
    _upsert(EventRollup._meta.db_table, ("business_id", "bucket"), names,
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


def rebuild(progress: Any = None, chunk: int = 20_000) -> dict[str, int]:
    """Recompute every rollup from the raw events and conversations; returns row counts."""
    fields = ("business_id", "timestamp", "response_time_ms", "success_rate", "response_type", "tokens_used",
              "input_tokens", "output_tokens", "cost_usd", "api_cost_usd", "cost_basis",
              "appointment_requested", "appointment_booked", "human_handoff_requested")
    with transaction.atomic():
        for model in (EventRollup, LatencyRollup, ConversationRollup):
            table = connection.ops.quote_name(model._meta.db_table)
            with connection.cursor() as cursor:
                cursor.execute(f"DELETE FROM {table}")
        if connection.vendor == "postgresql":
            # The same sums and bins in SQL: about 20 times faster on millions of rows. PostgreSQL's ln()
            # and Python's math.log are the same C function, so each latency lands in the same bin.
            _rebuild_in_sql(AIMetric._meta.db_table, Conversation._meta.db_table)
            return _counts()
        accumulator = Accumulator()
        for n, values in enumerate(AIMetric.objects.order_by().values_list(*fields).iterator(chunk_size=chunk), 1):
            accumulator.add(dict(zip(fields, values)))
            if n % chunk == 0:
                if progress is not None:
                    progress(chunk)
                if len(accumulator.latency) > 200_000:
                    accumulator.write()
                    accumulator = Accumulator()
        accumulator.write()
        deltas: dict[tuple[str, datetime], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for business_id, first, requested, booked, handoff in Conversation.objects.order_by().values_list(
            "business_id", "first_at", "appointment_requested", "appointment_booked", "human_handoff_requested"
        ).iterator(chunk_size=chunk):
            sums = deltas[(business_id, quarter_of(first))]
            sums[0] += 1
            sums[1] += requested
            sums[2] += booked
            sums[3] += handoff
        add_conversation_deltas(deltas)
    return _counts()


def _counts() -> dict[str, int]:
    return {
        "event_rollups": EventRollup.objects.count(),
        "latency_rollups": LatencyRollup.objects.count(),
        "conversation_rollups": ConversationRollup.objects.count(),
    }


_QUARTER_SQL = "date_bin('15 minutes', {}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
_DAY_SQL = "(date_trunc('day', {} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"


def _rebuild_in_sql(events_table: str, conversations_table: str) -> None:
    """PostgreSQL: every rollup from the raw tables with GROUPING SETS (per business, and "*")."""
    q = connection.ops.quote_name
    events, conversations = q(events_table), q(conversations_table)
    quarter = _QUARTER_SQL.format("timestamp")
    sums = (
        f"COUNT(*), COUNT(*) FILTER (WHERE {FAILED_REPLY_SQL}), SUM(success_rate), "
        "COALESCE(SUM(response_time_ms), 0), COUNT(response_time_ms), COALESCE(SUM(tokens_used), 0), "
        "COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cost_usd), 0), "
        f"COALESCE(SUM(api_cost_usd), 0), COUNT(*) FILTER (WHERE {UNPRICED_SQL}), "
        f"COUNT(*) FILTER (WHERE {ESTIMATED_SQL}), COUNT(*) FILTER (WHERE appointment_requested), "
        "COUNT(*) FILTER (WHERE appointment_booked), COUNT(*) FILTER (WHERE human_handoff_requested)"
    )
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
                f"WHERE response_time_ms IS NOT NULL) e GROUP BY GROUPING SETS ((business_id, bucket, bin), (bucket, bin))",
                [LOG_GAMMA],
            )
        cursor.execute(
            f"INSERT INTO {q(ConversationRollup._meta.db_table)} (business_id, bucket, {', '.join(CONVERSATION_SUMS)}) "
            f"SELECT {owner}, bucket, COUNT(*), COUNT(*) FILTER (WHERE appointment_requested), "
            f"COUNT(*) FILTER (WHERE appointment_booked), COUNT(*) FILTER (WHERE human_handoff_requested) "
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
