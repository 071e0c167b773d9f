"""Reads for the analytics API: every figure of docs/analytics.md, computed in the database.

Event figures come from `ai_metrics` rows whose `timestamp` is in [start, end).
Without event filters, summary, funnel, time series and peak hours read the 15-minute
rollups for the whole quarter hours of the period and the raw rows only for
the partial quarter hours at its two ends; their percentiles then come from the
latency sketch (within 1% of the exact value). Filtered queries and
breakdowns read the raw rows.
Conversation figures come from conversations that *started* in [start, end)
(their first event), so a conversation is counted once however long it runs;
with event filters (model, intent, versions) only conversations with at least
one matching event count. Raw-row percentiles are exact: PostgreSQL's
percentile_cont, and the same linear interpolation in Python on SQLite.
"""

from __future__ import annotations

import functools
import math
import threading
import zoneinfo
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar

import numpy as np
from django.db.models import Aggregate, Count, Exists, F, FloatField, Model, OuterRef, Q, QuerySet, Sum
from django.db.models.functions import ExtractHour, ExtractIsoWeekDay, Trunc

from metrics_app import database, rules
from metrics_app.analytics import rollups, sketches, tail
from metrics_app.analytics.rollups import Slice
from metrics_app.models import (
    ALL_BUSINESSES,
    AIMetric,
    Business,
    Conversation,
    ConversationRollup,
    CostBasis,
    EventRollup,
    LatencySketch,
)
from metrics_app.replica import reading
from metrics_app.rules import FAILED_REPLY

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound=Model)

PERCENTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
FAILED = FAILED_REPLY
UNPRICED = rules.UNPRICED
DIMENSIONS = {
    "intent": "intent_detected",
    "model": "model_name",
    "response_type": "response_type",
    "business": "business_id",
    "prompt_version": "prompt_version",
    "kb_version": "kb_version",
}
EVENT_FILTERS = {"model": "model_name", "intent": "intent_detected", "prompt_version": "prompt_version",
                 "kb_version": "kb_version"}
# The rollups' name of each filterable event column.
_DIMENSION_OF_COLUMN = {column: name for name, column in rollups.DIMENSIONS.items()}


@dataclass(frozen=True)
class Filters:
    """What an analytics request asks about. `businesses` None means every business."""

    businesses: frozenset[str] | None
    start: datetime
    end: datetime
    tz: zoneinfo.ZoneInfo
    model: str | None = None
    intent: str | None = None
    prompt_version: str | None = None
    kb_version: str | None = None
    # Only events with a higher id: the ones the rollups do not hold yet (see metrics_app/analytics/tail.py).
    after_id: int | None = None

    @property
    def event_filters(self) -> dict[str, str]:
        return {field: getattr(self, name) for name, field in EVENT_FILTERS.items() if getattr(self, name)}


class PercentileCont(Aggregate):
    """PostgreSQL's exact, interpolated percentile of an ordered set."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: str, fraction: float, **extra: Any) -> None:
        super().__init__(expression, fraction=repr(float(fraction)), **extra)


def percentile(sorted_values: list[int], fraction: float) -> float | None:
    """Linear interpolation between closest ranks, as percentile_cont does."""
    if not sorted_values:
        return None
    position = fraction * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def events_in(filters: Filters) -> QuerySet[AIMetric]:
    events = AIMetric.objects.filter(timestamp__gte=filters.start, timestamp__lt=filters.end)
    if filters.after_id is not None:
        events = events.filter(id__gt=filters.after_id)
    if filters.businesses is not None:
        events = events.filter(business_id__in=filters.businesses)
    return events.filter(**filters.event_filters)


def conversations_in(filters: Filters) -> QuerySet[Conversation]:
    conversations = Conversation.objects.filter(first_at__gte=filters.start, first_at__lt=filters.end)
    if filters.businesses is not None:
        conversations = conversations.filter(business_id__in=filters.businesses)
    if filters.event_filters:
        matching = AIMetric.objects.filter(
            business_id=OuterRef("business_id"), conversation_id=OuterRef("conversation_id"), **filters.event_filters
        )
        conversations = conversations.filter(Exists(matching))
    return conversations


def _event_aggregates() -> dict[str, Any]:
    return {
        "events": Count("id"),
        "errors": Count("id", filter=FAILED),
        "success_sum": Sum("success_rate"),
        "latency_sum": Sum("response_time_ms"),
        "latency_n": Count("response_time_ms"),
        "tokens": Sum("tokens_used"),
        "input_tokens": Sum("input_tokens"),
        "output_tokens": Sum("output_tokens"),
        "cache_read_tokens": Sum("cache_read_input_tokens"),
        "cache_write_tokens": Sum("cache_write_input_tokens"),
        "reasoning_tokens": Sum("reasoning_output_tokens"),
        "cost": Sum("cost_usd"),
        "cache_savings": Sum("cache_savings_usd"),
        "client_cost": Sum("api_cost_usd"),
        "unpriced": Count("id", filter=UNPRICED),
        "estimated": Count("id", filter=Q(cost_basis=CostBasis.ESTIMATED)),
        "requested": Count("id", filter=Q(appointment_requested=True)),
        "booked": Count("id", filter=Q(appointment_booked=True)),
        "handoffs": Count("id", filter=Q(human_handoff_requested=True)),
        "sentiment_sum": Sum("user_sentiment"),
        "sentiment_n": Count("user_sentiment"),
    }


def _conversation_aggregates() -> dict[str, Any]:
    return {
        "conversations": Count("id"),
        "conv_requested": Count("id", filter=Q(appointment_requested=True)),
        "conv_booked": Count("id", filter=Q(appointment_booked=True)),
        "conv_handoffs": Count("id", filter=Q(human_handoff_requested=True)),
    }


def _number(value: Any) -> float:
    return float(value) if value is not None else 0.0


def _ratio(numerator: Any, denominator: Any) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def _count(value: Any) -> int:
    # PostgreSQL's SUM over bigint is numeric: counts come back as Decimal from the rollups.
    return int(value or 0)


def _event_figures(row: dict[str, Any]) -> dict[str, Any]:
    events = _count(row["events"])
    errors = _count(row["errors"])
    return {
        "events": events,
        "errors": errors,
        "error_rate": _ratio(errors, events),
        "success_rate": _ratio(row["success_sum"], events),
        "latency_mean_ms": _ratio(row["latency_sum"], row["latency_n"]),
        "tokens": _count(row["tokens"]),
        "input_tokens": _count(row["input_tokens"]),
        "output_tokens": _count(row["output_tokens"]),
        "cache_read_input_tokens": _count(row["cache_read_tokens"]),
        "cache_write_input_tokens": _count(row["cache_write_tokens"]),
        "reasoning_output_tokens": _count(row["reasoning_tokens"]),
        "cached_input_share": _ratio(row["cache_read_tokens"] or 0, row["input_tokens"]),
        "cost_usd": _number(row["cost"]),
        "cache_savings_usd": _number(row["cache_savings"]),
        "client_cost_usd": _number(row["client_cost"]),
        "unpriced_events": _count(row["unpriced"]),
        "estimated_cost_events": _count(row["estimated"]),
        "appointments_requested": _count(row["requested"]),
        "appointments_booked": _count(row["booked"]),
        "human_handoffs": _count(row["handoffs"]),
        "sentiment_mean": _ratio(row["sentiment_sum"], row["sentiment_n"]),
        "sentiment_scored_events": _count(row["sentiment_n"]),
    }


def _conversation_figures(row: dict[str, Any], cost: float) -> dict[str, Any]:
    conversations = _count(row["conversations"])
    requested = _count(row["conv_requested"])
    booked = _count(row["conv_booked"])
    handoffs = _count(row["conv_handoffs"])
    return {
        "conversations": conversations,
        "conversations_with_request": requested,
        "conversations_booked": booked,
        "conversations_handed_off": handoffs,
        "appointment_request_rate": _ratio(requested, conversations),
        "booking_rate": _ratio(booked, conversations),
        "handoff_rate": _ratio(handoffs, conversations),
        "cost_per_conversation_usd": _ratio(cost, conversations),
        "cost_per_booked_appointment_usd": _ratio(cost, booked),
    }


def _dict_rows(rows: QuerySet[Any, Any]) -> QuerySet[Any, dict[str, Any]]:
    """`rows` typed as plain dicts: the type checker sees values() rows as TypedDicts, whose keys cannot be popped."""
    return rows


def _with_none_default(sums: dict[Any, dict[str, Any]]) -> dict[Any, defaultdict[str, Any]]:
    """Each bucket's sums answering None for a figure it lacks."""
    return {key: defaultdict(lambda: None, value) for key, value in sums.items()}


def grouped_percentiles(events: QuerySet[AIMetric], group: Any = None) -> dict[Any, dict[str, float | None]]:
    """p50/p95/p99 of response_time_ms, per value of `group` (an expression), or overall under key None."""
    with_latency = events.exclude(response_time_ms__isnull=True)
    if reading().vendor == "postgresql":
        aggregates = {name: PercentileCont("response_time_ms", fraction) for name, fraction in PERCENTILES}
        if group is None:
            return {None: with_latency.aggregate(**aggregates)}
        rows = _dict_rows(with_latency.annotate(group=group).values("group").annotate(**aggregates).order_by())
        return {row.pop("group"): row for row in rows}
    values: dict[Any, list[Any]] = defaultdict(list)
    if group is None:
        values[None] = list(with_latency.values_list("response_time_ms", flat=True))
    else:
        for key, latency in with_latency.annotate(group=group).values_list("group", "response_time_ms"):
            values[key].append(latency)
    result: dict[Any, dict[str, float | None]] = {}
    for key, latencies in values.items():
        latencies.sort()
        result[key] = {name: percentile(latencies, fraction) for name, fraction in PERCENTILES}
    return result


def _no_percentiles() -> dict[str, float | None]:
    return {name: None for name, _ in PERCENTILES}


# --- Rollup reads: whole quarter hours from the rollups, the partial ones at the ends and the unfolded tail
# from raw rows, all in one snapshot.


def _slice(filters: Filters) -> Slice | None:
    """The rollup slice that answers these filters: every event, or one value of one dimension; None for several."""
    chosen = filters.event_filters
    if not chosen:
        return rollups.EVERY_EVENT
    if len(chosen) == 1:
        ((column, value),) = chosen.items()
        return _DIMENSION_OF_COLUMN[column], value
    return None


def _split(filters: Filters) -> tuple[tuple[datetime, datetime] | None, list[Filters]]:
    """(the whole quarter hours of the period, filters for the raw edges); None when rollups cannot serve it."""
    if _slice(filters) is None:
        return None, [filters]
    middle = rollups.whole_quarters(filters.start, filters.end)
    if middle is None:
        return None, [filters]
    edges = [replace(filters, end=middle[0])] if filters.start < middle[0] else []
    if middle[1] < filters.end:
        edges.append(replace(filters, start=middle[1]))
    return middle, edges


def _owners(filters: Filters) -> list[str]:
    return [ALL_BUSINESSES] if filters.businesses is None else sorted(filters.businesses)


def _rollup(model: type[M], filters: Filters, start: datetime, end: datetime, chosen: Slice | None = None,
            owners: list[str] | None = None, every_value: bool = False) -> QuerySet[M]:
    """Rollup rows of the filters' businesses (or `owners`) and slice (every value of it), in [start, end)."""
    dimension, value = chosen or _slice(filters) or rollups.EVERY_EVENT
    rows = model._default_manager.filter(
        business_id__in=_owners(filters) if owners is None else owners, dimension=dimension,
        bucket__gte=start, bucket__lt=end,
    )
    return rows if every_value or not dimension else rows.filter(value=value)


def _merge(total: dict[str, Any], part: dict[str, Any]) -> None:
    for name, value in part.items():
        if value is None:
            continue
        if isinstance(value, float):
            value = Decimal(repr(value))
        total[name] = total.get(name, 0) + value


def _tail(filters: Filters, middle: tuple[datetime, datetime]) -> Filters:
    """The events of the middle (rollup-read) part of the period that the rollups do not hold yet."""
    return replace(filters, start=middle[0], end=middle[1], after_id=_folded_through())


def _period_parts(middle: tuple[datetime, datetime]) -> list[tuple[int, datetime, datetime]]:
    """The sketch rows that cover the middle: UTC days inside it, quarter hours around them."""
    first_day = rollups.day_of(middle[0])
    if first_day < middle[0]:
        first_day += timedelta(days=1)
    last_day = rollups.day_of(middle[1])
    if first_day >= last_day:
        return [(rollups.QUARTER, middle[0], middle[1])]
    parts = [(rollups.DAY, first_day, last_day), (rollups.QUARTER, middle[0], first_day),
             (rollups.QUARTER, last_day, middle[1])]
    return [part for part in parts if part[1] < part[2]]


def _raw_latencies(parts: list[Filters], key_field: str | None = None) -> dict[Any, list[int]]:
    """Latencies of the raw parts of a period, per value of `key_field` (or under None)."""
    found: dict[Any, list[int]] = defaultdict(list)
    for part in parts:
        rows = events_in(part).exclude(response_time_ms__isnull=True)
        if key_field is None:
            latencies = rows.values_list("response_time_ms", flat=True)
            found[None].extend(latency for latency in latencies if latency is not None)
        else:
            for key, latency in rows.values_list(key_field, "response_time_ms"):
                found[key or ""].append(latency)
    return found


def _sketch_percentiles(histogram: np.ndarray) -> dict[str, float | None]:
    return sketches.percentiles(histogram, PERCENTILES)


def _period_percentiles(filters: Filters, middle: tuple[datetime, datetime], edges: list[Filters]) -> dict[str, Any]:
    """The period's percentiles from its sketches and the raw latencies of its edges and tail."""
    blobs: list[bytes | memoryview] = []
    for span, start, end in _period_parts(middle):
        blobs.extend(_rollup(LatencySketch, filters, start, end).filter(span_minutes=span)
                     .values_list("bins", flat=True))
    raw = _raw_latencies([*edges, _tail(filters, middle)]).get(None, [])
    return _sketch_percentiles(sketches.dense(blobs, raw))


def _event_sums(filters: Filters, middle: tuple[datetime, datetime], edges: list[Filters]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    _merge(total, _rollup(EventRollup, filters, *middle).aggregate(**{name: Sum(name) for name in rollups.EVENT_SUMS}))
    for edge in [*edges, _tail(filters, middle)]:
        _merge(total, events_in(edge).aggregate(**_event_aggregates()))
    return defaultdict(lambda: None, total)


_CONVERSATION_NAMES = dict(zip(rollups.CONVERSATION_SUMS, ("conversations", "conv_requested", "conv_booked",
                                                            "conv_handoffs"), strict=True))


def _named(sums: dict[str, Any]) -> dict[str, Any]:
    return {_CONVERSATION_NAMES[k]: v for k, v in sums.items()}


def _folded_conversations(edge: Filters) -> list[tail.Correction]:
    """The folded conversations that started in a raw part of the period, as counted (+1) entries."""
    rows = Conversation.objects.filter(first_at__gte=edge.start, first_at__lt=edge.end)
    if edge.businesses is not None:
        rows = rows.filter(business_id__in=edge.businesses)
    return [
        tail.Correction.of(b, first_at, 1, flags, values)
        for b, first_at, *flags, values in rows.values_list(
            "business_id", "first_at", "appointment_requested", "appointment_booked", "human_handoff_requested",
            "dimension_values",
        )
    ]


def _edge_conversation_sums(edge: Filters) -> dict[str, Any]:
    """Conversation sums of a raw part: its folded conversations in the filters' slice (or matching them all)."""
    chosen = _slice(edge)
    if chosen is None:
        return dict(conversations_in(edge).aggregate(**_conversation_aggregates()))
    total: dict[str, Any] = {}
    for conversation in _folded_conversations(edge):
        if conversation.counts_in(chosen):
            _merge(total, conversation.sums())
    return total


def _conversation_sums(filters: Filters, middle: tuple[datetime, datetime] | None,
                       edges: list[Filters]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    if middle is not None:
        _merge(total, _named(_rollup(ConversationRollup, filters, *middle).aggregate(
            **{name: Sum(name) for name in rollups.CONVERSATION_SUMS}
        )))
    for edge in edges:
        _merge(total, _edge_conversation_sums(edge))
    for correction in _corrections(filters):
        if filters.start <= correction.moment < filters.end:
            _merge(total, correction.sums())
    return defaultdict(lambda: None, total)


def _in_snapshot(read: Callable[P, R]) -> Callable[P, R]:
    """Run an analytics read in one snapshot, with the folder's progress read once, at its start.

    Rollups and the events not folded yet are then read as of the same
    moment, so the answer counts each committed event exactly once.
    """
    @functools.wraps(read)
    def in_snapshot(*args: P.args, **kwargs: P.kwargs) -> R:
        if _state.depth:
            return read(*args, **kwargs)
        with database.snapshot(reading()):
            _state.depth += 1
            try:
                if rollups.rebuild_pending():
                    raise rollups.RebuildPending("run manage.py rebuild_analytics (start.sh does after migrating)")
                _state.folded_through = rollups.folded_through()
                _state.touched = {}
                return read(*args, **kwargs)
            finally:
                _state.depth -= 1
                _state.touched = {}
    return in_snapshot


class _ReadState(threading.local):
    depth = 0
    folded_through = 0
    touched: dict[frozenset[str] | None, list[tail.Touched]]

    def __init__(self) -> None:
        self.touched = {}


_state = _ReadState()


def _folded_through() -> int:
    if not _state.depth:
        raise RuntimeError("analytics reads run in a snapshot: call them through the public functions")
    return _state.folded_through


def _touched(businesses: frozenset[str] | None) -> list[tail.Touched]:
    """The conversations the unfolded events touch, read once per answer."""
    found = _state.touched.get(businesses)
    if found is None:
        found = _state.touched[businesses] = tail.touched(_folded_through(), businesses)
    return found


def _corrections(filters: Filters) -> list[tail.Correction]:
    return tail.corrections(_touched(filters.businesses), _slice(filters), filters.event_filters)


@_in_snapshot
def summary(filters: Filters) -> dict[str, Any]:
    middle, edges = _split(filters)
    if middle is not None:
        figures = _event_figures(_event_sums(filters, middle, edges))
    else:
        figures = _event_figures(events_in(filters).aggregate(**_event_aggregates()))
    latency = _latency(filters, middle, edges)
    figures.update({f"latency_{name}_ms": value for name, value in latency.items()})
    figures.update(_conversation_figures(_conversation_sums(filters, middle, edges), figures["cost_usd"]))
    return figures


def _latency(filters: Filters, middle: tuple[datetime, datetime] | None,
             edges: list[Filters]) -> dict[str, float | None]:
    if middle is not None:
        return _period_percentiles(filters, middle, edges)
    return grouped_percentiles(events_in(filters)).get(None) or _no_percentiles()


@_in_snapshot
def latency_percentiles(filters: Filters) -> dict[str, float | None]:
    """The summary's p50/p95/p99 alone: from the sketches with no filter or one (within 1%), else exact."""
    middle, edges = _split(filters)
    return _latency(filters, middle, edges)


@_in_snapshot
def funnel(filters: Filters) -> dict[str, Any]:
    middle, edges = _split(filters)
    row = _conversation_sums(filters, middle, edges)
    total = _count(row["conversations"])
    steps = [
        ("conversations", total),
        ("appointment_requested", _count(row["conv_requested"])),
        ("appointment_booked", _count(row["conv_booked"])),
    ]
    return {
        "steps": [
            {"step": name, "conversations": count, "share_of_conversations": _ratio(count, total)}
            for name, count in steps
        ],
        "human_handoffs": _count(row["conv_handoffs"]),
        "handoff_rate": _ratio(row["conv_handoffs"], total),
        "booked_of_requested": _ratio(row["conv_booked"], row["conv_requested"]),
    }


BUCKET_LIMIT = 3000


def local_bucket(moment: datetime, bucket: str, tz: zoneinfo.ZoneInfo) -> datetime:
    """The start of the local hour or day holding `moment`, as a naive local time."""
    local = moment.astimezone(tz).replace(tzinfo=None)
    if bucket == "day":
        return local.replace(hour=0, minute=0, second=0, microsecond=0)
    return local.replace(minute=0, second=0, microsecond=0)


def bucket_starts(filters: Filters, bucket: str) -> list[datetime]:
    """Every local bucket that meets [start, end), as naive local times, in order."""
    starts: list[datetime] = []
    # Quarter hours are the finest step at which any zone's local hours begin.
    step = timedelta(minutes=15) if bucket == "hour" else timedelta(hours=1)
    moment = filters.start
    while moment < filters.end:
        local = local_bucket(moment, bucket, filters.tz)
        if not starts or starts[-1] != local:
            starts.append(local)
        moment += step
    last = local_bucket(filters.end - timedelta(microseconds=1), bucket, filters.tz)
    if starts and starts[-1] != last:
        starts.append(last)
    return starts


def _as_local_key(value: datetime, tz: zoneinfo.ZoneInfo) -> datetime:
    return value.astimezone(tz).replace(tzinfo=None) if value.tzinfo else value


Buckets = tuple[dict[datetime, Any], dict[datetime, dict[str, float | None]], dict[datetime, Any]]


@_in_snapshot
def timeseries(filters: Filters, bucket: str, percentiles: bool = True) -> list[dict[str, Any]]:
    kind = "day" if bucket == "day" else "hour"
    middle, edges = _split(filters)
    if middle is None:
        event_sums, latency = _raw_buckets(filters, kind, percentiles)
        conversations: dict[datetime, Any] = {}
        _add_edge_conversations(filters, kind, conversations)
    else:
        event_sums, latency, conversations = _rollup_buckets(filters, kind, middle, edges, percentiles)
    for correction in _corrections(filters):
        if filters.start <= correction.moment < filters.end:
            _merge(conversations.setdefault(local_bucket(correction.moment, kind, filters.tz), {}), correction.sums())
    empty: defaultdict[str, Any] = defaultdict(lambda: None)
    series = []
    for start in bucket_starts(filters, kind):
        figures = _event_figures(defaultdict(lambda: None, event_sums.get(start, {})))
        figures.update({f"latency_{n}_ms": v for n, v in (latency.get(start) or _no_percentiles()).items()})
        figures.update(_conversation_figures(defaultdict(lambda: None, conversations.get(start, empty)),
                                             figures["cost_usd"]))
        aware = start.replace(tzinfo=filters.tz)
        series.append({"start": aware.isoformat(), **figures})
    return series


def _raw_buckets(filters: Filters, kind: str, percentiles: bool = True) -> tuple[dict[datetime, Any], dict[
        datetime, dict[str, float | None]]]:
    """Event sums (and exact percentiles) per local bucket from the raw rows."""
    trunc = Trunc("timestamp", kind, tzinfo=filters.tz)
    events = events_in(filters)
    rows = _dict_rows(events.annotate(bucket=trunc).values("bucket").annotate(**_event_aggregates()).order_by())
    event_sums = {_as_local_key(row.pop("bucket"), filters.tz): row for row in rows}
    latency = {
        _as_local_key(key, filters.tz): value
        for key, value in grouped_percentiles(events, Trunc("timestamp", kind, tzinfo=filters.tz)).items()
    } if percentiles else {}
    return event_sums, latency


def _add_edge_conversations(edge: Filters, kind: str, conversations: dict[datetime, Any]) -> None:
    """Add the folded conversations that started in a raw part of the period to their local buckets."""
    chosen = _slice(edge)
    if chosen is None:
        rows = _dict_rows(
            conversations_in(edge).annotate(bucket=Trunc("first_at", kind, tzinfo=edge.tz))
            .values("bucket").annotate(**_conversation_aggregates()).order_by()
        )
        for row in rows:
            _merge(conversations.setdefault(_as_local_key(row.pop("bucket"), edge.tz), {}), row)
        return
    for conversation in _folded_conversations(edge):
        if conversation.counts_in(chosen):
            key = local_bucket(conversation.moment, kind, edge.tz)
            _merge(conversations.setdefault(key, {}), conversation.sums())


def _rollup_buckets(filters: Filters, kind: str, middle: tuple[datetime, datetime], edges: list[Filters],
                    percentiles: bool = True) -> Buckets:
    """Local hour or day buckets summed from quarter-hour rollups, plus the raw edges and tail of the period."""
    if reading().vendor == "postgresql":
        event_sums, conversations = _local_sums_in_sql(filters, kind, middle)
    else:
        event_sums, conversations = _local_sums_in_python(filters, kind, middle)
    tail_part = _tail(filters, middle)
    for part in [*edges, tail_part]:
        raw_sums, _ = _raw_buckets(part, kind, percentiles=False)
        for key, row in raw_sums.items():
            _merge(event_sums.setdefault(key, {}), row)
    for edge in edges:
        _add_edge_conversations(edge, kind, conversations)
    latency = _bucket_percentiles(filters, kind, middle, [*edges, tail_part]) if percentiles else {}
    return event_sums, latency, conversations


def _local_sums_in_python(filters: Filters, kind: str, middle: tuple[datetime, datetime]) -> tuple[
        dict[datetime, Any], dict[datetime, Any]]:
    local_of: dict[datetime, datetime] = {}

    def local(moment: datetime) -> datetime:
        key = local_of.get(moment)
        if key is None:
            key = local_of[moment] = local_bucket(moment, kind, filters.tz)
        return key

    event_sums: dict[datetime, dict[str, Any]] = defaultdict(dict)
    for bucket, *values in _rollup(EventRollup, filters, *middle).order_by().values_list(
        "bucket", *rollups.EVENT_SUMS
    ):
        _merge(event_sums[local(bucket)], dict(zip(rollups.EVENT_SUMS, values, strict=True)))
    conversations: dict[datetime, dict[str, Any]] = defaultdict(dict)
    for bucket, *values in _rollup(ConversationRollup, filters, *middle).order_by().values_list(
        "bucket", *rollups.CONVERSATION_SUMS
    ):
        _merge(conversations[local(bucket)], _named(dict(zip(rollups.CONVERSATION_SUMS, values, strict=True))))
    return dict(event_sums), dict(conversations)


def _local_sums_in_sql(filters: Filters, kind: str, middle: tuple[datetime, datetime]) -> tuple[
        dict[datetime, Any], dict[datetime, Any]]:
    """PostgreSQL: quarter-hour rollups grouped into local buckets by the database."""
    dimension, value = _slice(filters) or rollups.EVERY_EVENT
    local = f"date_trunc('{kind}', bucket AT TIME ZONE %s)"
    where = "business_id = ANY(%s) AND dimension = %s AND value = %s AND bucket >= %s AND bucket < %s"
    args: list[Any] = [filters.tz.key, _owners(filters), dimension, value, middle[0], middle[1]]
    event_sums: dict[datetime, dict[str, Any]] = {}
    conversations: dict[datetime, dict[str, Any]] = {}
    with reading().cursor() as cursor:
        cursor.execute(
            f"SELECT {local} AS local, {', '.join(f'SUM({n})' for n in rollups.EVENT_SUMS)} "
            f"FROM {EventRollup._meta.db_table} WHERE {where} GROUP BY 1", args,
        )
        for key, *values in cursor.fetchall():
            event_sums[key] = dict(zip(rollups.EVENT_SUMS, values, strict=True))
        cursor.execute(
            f"SELECT {local} AS local, {', '.join(f'SUM({n})' for n in rollups.CONVERSATION_SUMS)} "
            f"FROM {ConversationRollup._meta.db_table} WHERE {where} GROUP BY 1", args,
        )
        for key, *values in cursor.fetchall():
            conversations[key] = _named(dict(zip(rollups.CONVERSATION_SUMS, values, strict=True)))
    return event_sums, conversations


def _bucket_percentiles(filters: Filters, kind: str, middle: tuple[datetime, datetime],
                        raw_parts: list[Filters]) -> dict[datetime, dict[str, float | None]]:
    """Per local bucket: its quarter-hour sketches merged, with the raw latencies of the edges and the tail."""
    histograms: dict[datetime, np.ndarray] = {}
    local_of: dict[datetime, datetime] = {}

    def histogram(moment: datetime) -> np.ndarray:
        key = local_of.get(moment)
        if key is None:
            key = local_of[moment] = local_bucket(moment, kind, filters.tz)
        found = histograms.get(key)
        if found is None:
            found = histograms[key] = np.zeros(sketches.BIN_COUNT, dtype=np.int64)
        return found

    rows = _rollup(LatencySketch, filters, *middle).filter(span_minutes=rollups.QUARTER)
    for bucket, blob in rows.values_list("bucket", "bins").iterator(chunk_size=2000):
        indexes, counts = sketches.unpack(blob)
        np.add.at(histogram(bucket), indexes, counts)
    for part in raw_parts:
        for moment, latency in events_in(part).exclude(response_time_ms__isnull=True).values_list(
            "timestamp", "response_time_ms"
        ):
            histogram(moment)[sketches.latency_bin(latency or 0)] += 1
    return {key: _sketch_percentiles(value) for key, value in histograms.items()}


# --- Breakdowns: per value of one dimension, from the rollups of that dimension.


def _key_field(dimension: str) -> str:
    return "business_id" if dimension == "business" else DIMENSIONS[dimension]


@_in_snapshot
def breakdown(filters: Filters, dimension: str, limit: int) -> list[dict[str, Any]]:
    middle, edges = _split(filters)
    if middle is None or (dimension != "business" and filters.event_filters):
        return _raw_breakdown(filters, dimension, limit)
    key_field = _key_field(dimension)
    if dimension == "business":
        chosen, owners, group = _slice(filters), _visible_owners(filters), "business_id"
    else:
        chosen, owners, group = (_DIMENSION_OF_COLUMN[DIMENSIONS[dimension]], ""), _owners(filters), "value"
    events: dict[Any, dict[str, Any]] = defaultdict(dict)
    every_value = dimension != "business"
    for row in _dict_rows(_rollup(EventRollup, filters, *middle, chosen, owners, every_value).values(group).annotate(
        **{n: Sum(n) for n in rollups.EVENT_SUMS}
    ).order_by()):
        _merge(events[row.pop(group)], row)
    tail_part = _tail(filters, middle)
    for part in [*edges, tail_part]:
        for row in _dict_rows(events_in(part).values(key_field).annotate(**_event_aggregates()).order_by()):
            _merge(events[row.pop(key_field) or ""], row)
    ranked = sorted((key for key in events if _count(events[key].get("events"))),
                    key=lambda key: (-_count(events[key]["events"]), key))[:limit]
    latency = _breakdown_percentiles(filters, middle, [*edges, tail_part], chosen, owners, group, key_field, ranked,
                                     every_value)
    conversations = _breakdown_conversations(filters, middle, edges, chosen, owners, group, dimension)
    result = []
    for key in ranked:
        figures = _event_figures(defaultdict(lambda: None, events[key]))
        figures.update({f"latency_{n}_ms": v for n, v in latency.get(key, _no_percentiles()).items()})
        result.append({"key": key or None, "conversations": _count(conversations.get(key, 0)), **figures})
    return result


def _visible_owners(filters: Filters) -> list[str]:
    """The businesses a business breakdown lists: those asked for, or every business (ingest makes each one)."""
    if filters.businesses is not None:
        return sorted(filters.businesses)
    return list(Business.objects.order_by("id").values_list("id", flat=True))


def _breakdown_percentiles(filters: Filters, middle: tuple[datetime, datetime], raw_parts: list[Filters],
                           chosen: Slice | None, owners: list[str], group: str, key_field: str,
                           keys: list[str], every_value: bool) -> dict[str, dict[str, float | None]]:
    """Each key's percentiles: its day and quarter sketches over the middle, with the raw latencies around them."""
    if not keys:
        return {}
    blobs: dict[str, list[bytes | memoryview]] = defaultdict(list)
    for span, start, end in _period_parts(middle):
        rows = _rollup(LatencySketch, filters, start, end, chosen, owners, every_value).filter(span_minutes=span)
        rows = rows.filter(**{f"{group}__in": keys})
        for key, blob in rows.values_list(group, "bins").iterator(chunk_size=2000):
            blobs[key].append(blob)
    raw = _raw_latencies(raw_parts, key_field)
    return {key: _sketch_percentiles(sketches.dense(blobs.get(key, []), raw.get(key, []))) for key in keys}


def _breakdown_conversations(filters: Filters, middle: tuple[datetime, datetime], edges: list[Filters],
                             chosen: Slice | None, owners: list[str], group: str, dimension: str) -> dict[str, int]:
    """Conversations that started in the period, per key: counted once under each value their events carry."""
    counts: dict[str, int] = defaultdict(int)
    every_value = dimension != "business"
    for key, started in _rollup(ConversationRollup, filters, *middle, chosen, owners, every_value).values(
        group
    ).annotate(
        n=Sum("started")
    ).order_by().values_list(group, "n"):
        counts[key] += int(started or 0)
    entries = [c for edge in edges for c in _folded_conversations(edge)]
    entries += [c for c in _corrections(replace(filters)) if filters.start <= c.moment < filters.end]
    slice_filter = chosen if dimension == "business" else rollups.EVERY_EVENT
    for entry in entries:
        if slice_filter is not None and not entry.counts_in(slice_filter):
            continue
        for key in entry.keys(dimension):
            counts[key] += entry.sign
    return counts


def _raw_breakdown(filters: Filters, dimension: str, limit: int) -> list[dict[str, Any]]:
    """A breakdown with another filter, or over less than a quarter hour: from the raw rows.

    Here a key's conversations are the distinct conversations with an event
    of that key (and the filters) in the period.
    """
    field = _key_field(dimension)
    events = events_in(filters)
    aggregates = {**_event_aggregates(), "distinct_conversations": Count("conversation_id", distinct=True)}
    rows = list(events.values(field).annotate(**aggregates).order_by("-events", field)[:limit])
    latency = grouped_percentiles(events, F(field))
    result = []
    for row in rows:
        key = row[field]
        figures = _event_figures(row)
        figures.update({f"latency_{n}_ms": v for n, v in (latency.get(key) or _no_percentiles()).items()})
        result.append({"key": key, "conversations": row["distinct_conversations"], **figures})
    return result


# --- Peak hours: events per local hour of the week.


def _raw_peak_cells(filters: Filters) -> dict[tuple[int, int], dict[str, Any]]:
    rows = (
        events_in(filters)
        .annotate(
            weekday=ExtractIsoWeekDay("timestamp", tzinfo=filters.tz),
            hour=ExtractHour("timestamp", tzinfo=filters.tz),
        )
        .values("weekday", "hour")
        .annotate(**_event_aggregates())
        .order_by()
    )
    return {(row.pop("weekday"), row.pop("hour")): row for row in _dict_rows(rows)}


def _rollup_peak_cells(filters: Filters, middle: tuple[datetime, datetime],
                       edges: list[Filters]) -> dict[tuple[int, int], dict[str, Any]]:
    """Hour-of-week sums from quarter-hour rollups (every local hour is whole quarter hours), plus the raw parts."""
    cells: dict[tuple[int, int], dict[str, Any]] = defaultdict(dict)
    rollup = _rollup(EventRollup, filters, *middle)
    if reading().vendor == "postgresql":
        rows = rollup.annotate(
            weekday=ExtractIsoWeekDay("bucket", tzinfo=filters.tz), hour=ExtractHour("bucket", tzinfo=filters.tz)
        ).values("weekday", "hour").annotate(**{n: Sum(n) for n in rollups.EVENT_SUMS}).order_by()
        for row in _dict_rows(rows):
            _merge(cells[(row.pop("weekday"), row.pop("hour"))], row)
    else:
        for bucket, *values in rollup.order_by().values_list("bucket", *rollups.EVENT_SUMS):
            local = bucket.astimezone(filters.tz)
            _merge(cells[(local.isoweekday(), local.hour)], dict(zip(rollups.EVENT_SUMS, values, strict=True)))
    for edge in [*edges, _tail(filters, middle)]:
        for key, row in _raw_peak_cells(edge).items():
            _merge(cells[key], row)
    return {key: defaultdict(lambda: None, value) for key, value in cells.items()}


@_in_snapshot
def peak_hours(filters: Filters) -> list[dict[str, Any]]:
    middle, edges = _split(filters)
    cells = _raw_peak_cells(filters) if middle is None else _rollup_peak_cells(filters, middle, edges)
    empty: defaultdict[str, Any] = defaultdict(lambda: None)
    result = []
    for weekday in range(1, 8):
        for hour in range(24):
            figures = _event_figures(defaultdict(lambda: None, cells.get((weekday, hour), empty)))
            result.append({
                "weekday": weekday,
                "hour": hour,
                "events": figures["events"],
                "errors": figures["errors"],
                "latency_mean_ms": figures["latency_mean_ms"],
                "appointments_booked": figures["appointments_booked"],
                "human_handoffs": figures["human_handoffs"],
            })
    return result


def time_zone_of(business_ids: Iterable[str] | None) -> str:
    """The default zone of one business's analytics; UTC over several."""
    ids = list(business_ids or [])
    if len(ids) != 1:
        return "UTC"
    return Business.objects.filter(pk=ids[0]).values_list("time_zone", flat=True).first() or "UTC"
