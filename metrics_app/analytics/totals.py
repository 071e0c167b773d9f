"""Running totals of the folded events, per (business, model, intent, response type): what /metrics reports.

The background folder adds each event once, in the transaction that folds it,
so the Prometheus series read from `MetricTotals` equal the stored events
whatever happens to a server process, and every instance on the database
reports the same values. Rows keep the raw values (an empty string for a
missing one); /metrics maps them to bounded labels and sums at scrape time,
so changing the label settings needs no rebuild.

Layout of `MetricTotals.histograms` (JSON), one entry per histogram that has
at least one observation:

    {
      "latency_ms":    {"counts": [c_0, ..., c_n], "sum": 123456},
      "tokens_input":  {"counts": [...], "sum": ...},
      "tokens_output": {"counts": [...], "sum": ...},
      "tokens_total":  {"counts": [...], "sum": ...}
    }

`counts[i]` is the number of observations in bucket i alone, not a running
total: above bound i-1 and at most bound i, with one extra last entry for
values above the largest bound. Adding two histograms is adding their lists;
/metrics makes them cumulative. Bounds are whole numbers (latency in ms,
tokens), so every count and sum is an exact integer and the seconds sum is
exact to the millisecond. `latency_ms` uses DURATION_BOUNDS_MS; the token
entries use TOKEN_BOUNDS (`input`/`output` when the event sent the split,
`total` otherwise). Changing a bound list changes the meaning of the stored
lists: run `manage.py rebuild_analytics` afterwards.
"""

from __future__ import annotations

import bisect
import functools
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import orjson
from django.db import connection, transaction
from django.db.models import Q, TextField
from django.db.models.functions import Cast

from metrics_app import database
from metrics_app.models import AIMetric, MetricTotals, PrunedTotals, TotalsColumns
from metrics_app.rules import is_failed_reply

# Reply latency, from a quick canned answer to a model that times out at a minute (seconds, as exposed).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
# OpenTelemetry GenAI token buckets: powers of 4 up to 4**12, above the largest accepted count.
TOKEN_BUCKETS = tuple(float(4**n) for n in range(13))

DURATION_BOUNDS_MS = tuple(round(bound * 1000) for bound in DURATION_BUCKETS)
TOKEN_BOUNDS = tuple(int(bound) for bound in TOKEN_BUCKETS)

LATENCY = "latency_ms"
TOKEN_TYPES = ("input", "output", "total")  # the gen_ai_token_type label values


def tokens_key(token_type: str) -> str:
    """The `histograms` key of one token type's histogram."""
    return f"tokens_{token_type}"


_BOUNDS = {LATENCY: DURATION_BOUNDS_MS, **{tokens_key(t): TOKEN_BOUNDS for t in TOKEN_TYPES}}


def histogram_bounds(key: str) -> tuple[int, ...]:
    """The bucket bounds of a `histograms` key (LATENCY or tokens_key(...))."""
    bounds = _BOUNDS.get(key)
    if bounds is None:
        raise ValueError(f"MetricTotals holds a histogram this code does not know: {key!r}")
    return bounds

# An outcome flag of an event -> the MetricTotals column that counts it.
FLAG_COLUMNS = {
    "appointment_requested": "requested",
    "appointment_booked": "booked",
    "human_handoff_requested": "handoffs",
}

# The AIMetric columns an event dict needs for `TotalsAccumulator.add`.
EVENT_FIELDS = (
    "business_id", "model_name", "intent_detected", "response_type", "response_time_ms", "success_rate",
    "tokens_used", "input_tokens", "output_tokens", "api_cost_usd", *FLAG_COLUMNS,
)

_COUNT_COLUMNS = ("events", "failed", "tokens", "requested", "booked", "handoffs")
_WRITTEN_COLUMNS = [*_COUNT_COLUMNS, "client_cost", "histograms"]


@dataclass(slots=True)
class Histogram:
    """Observations per bucket (not cumulative; the last entry is above the largest bound) and their sum."""

    bounds: tuple[int, ...]
    counts: list[int]
    sum: int = 0

    @classmethod
    def empty(cls, bounds: tuple[int, ...]) -> Histogram:
        return cls(bounds, [0] * (len(bounds) + 1))

    @classmethod
    def from_json(cls, key: str, data: dict[str, Any]) -> Histogram:
        histogram = cls.empty(histogram_bounds(key))
        histogram.add_stored(key, data)
        return histogram

    def add_stored(self, key: str, data: dict[str, Any]) -> None:
        """Add a histogram as `MetricTotals.histograms[key]` stores it."""
        counts = data["counts"]
        if len(counts) != len(self.counts):
            raise ValueError(
                f"stored {key} histogram has {len(counts)} buckets, the code {len(self.counts)}: "
                "the bucket bounds changed, run manage.py rebuild_analytics"
            )
        self.counts = list(map(operator.add, self.counts, counts))  # /metrics adds 8,000 of these a scrape
        self.sum += data["sum"]

    def to_json(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum}

    def observe(self, value: int) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (Prometheus' `le`).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        """Observations at most each bound, then all of them (the `+Inf` bucket)."""
        running, out = 0, []
        for n in self.counts:
            running += n
            out.append(running)
        return out


class TotalsKey(NamedTuple):
    """The label values of one MetricTotals row, raw: an empty string for a missing value."""

    business_id: str
    model_name: str
    intent: str
    response_type: str

    @classmethod
    def of_event(cls, event: dict[str, Any]) -> TotalsKey:
        return cls(
            event["business_id"],
            event.get("model_name") or "",
            event.get("intent_detected") or "",
            event.get("response_type") or "",
        )


@dataclass(slots=True)
class Sums:
    """The counts, sums and histograms of one label set; each scalar field is a MetricTotals column."""

    events: int = 0
    failed: int = 0
    tokens: int = 0
    client_cost: Decimal = Decimal(0)
    requested: int = 0
    booked: int = 0
    handoffs: int = 0
    histograms: dict[str, Histogram] = field(default_factory=dict)

    @classmethod
    def of_row(cls, row: TotalsColumns) -> Sums:
        return cls(
            events=row.events, failed=row.failed, tokens=row.tokens, client_cost=Decimal(row.client_cost),
            requested=row.requested, booked=row.booked, handoffs=row.handoffs,
            histograms={key: Histogram.from_json(key, data) for key, data in (row.histograms or {}).items()},
        )

    def histogram(self, key: str) -> Histogram:
        found = self.histograms.get(key)
        if found is None:
            found = self.histograms[key] = Histogram.empty(_BOUNDS[key])
        return found

    def add_event(self, event: dict[str, Any]) -> None:
        self.events += 1
        self.failed += int(is_failed_reply(event.get("success_rate"), event.get("response_type")))
        self.tokens += event.get("tokens_used") or 0
        self.client_cost += _decimal(event.get("api_cost_usd"))
        self.add_flags(flag for flag in FLAG_COLUMNS if event.get(flag))
        latency = event.get("response_time_ms")
        if latency is not None:
            self.histogram(LATENCY).observe(latency)
        for token_type, tokens in _token_observations(event):
            self.histogram(tokens_key(token_type)).observe(tokens)

    def add_flags(self, flags: Iterable[str]) -> None:
        for flag in flags:
            column = FLAG_COLUMNS.get(flag)
            if column is None:
                raise ValueError(f"{flag!r} is not an outcome flag; expected one of {', '.join(FLAG_COLUMNS)}")
            setattr(self, column, getattr(self, column) + 1)

    def merge(self, other: Sums) -> None:
        for column in _COUNT_COLUMNS:
            setattr(self, column, getattr(self, column) + getattr(other, column))
        self.client_cost += other.client_cost
        for key, histogram in other.histograms.items():
            self.histogram(key).merge(histogram)

    def store_in(self, row: TotalsColumns) -> None:
        for column in _COUNT_COLUMNS:
            setattr(row, column, getattr(self, column))
        row.client_cost = self.client_cost
        row.histograms = {key: h.to_json() for key, h in sorted(self.histograms.items()) if h.count}


def _decimal(value: Any) -> Decimal:
    """A cost as an exact Decimal: the ingest and the database give Decimals, a float goes through its repr."""
    if value is None:
        return Decimal(0)
    return value if isinstance(value, Decimal) else Decimal(repr(value))


def _token_observations(event: dict[str, Any]) -> Iterator[tuple[str, int]]:
    """The token histograms an event observes: its input and output split when sent, else its total."""
    input_tokens, output_tokens = event.get("input_tokens"), event.get("output_tokens")
    if input_tokens is not None or output_tokens is not None:
        if input_tokens is not None:
            yield "input", input_tokens
        if output_tokens is not None:
            yield "output", output_tokens
    elif event.get("tokens_used") is not None:
        yield "total", event["tokens_used"]


class TotalsAccumulator:
    """Adds folded events (and flags turned on later) to MetricTotals, one statement per few hundred rows.

    `write` runs in the caller's transaction and locks the rows it reads until
    that ends, so two writers (the folder, outcomes recorded at the same
    moment) never add to the same old value. Retention adds the events it
    removes to PrunedTotals the same way (`model`).
    """

    # Keys per SELECT of the stored rows: 4 parameters each, well under SQLite's 999.
    READ_CHUNK = 200
    WRITE_BATCH = 500

    def __init__(self, model: type[TotalsColumns] = MetricTotals) -> None:
        self._sums: dict[TotalsKey, Sums] = {}
        self._model = model

    def __len__(self) -> int:
        return len(self._sums)

    def _of(self, event: dict[str, Any]) -> Sums:
        key = TotalsKey.of_event(event)
        found = self._sums.get(key)
        if found is None:
            found = self._sums[key] = Sums()
        return found

    def add(self, event: dict[str, Any]) -> None:
        """Count a newly folded event (a dict with the EVENT_FIELDS columns of AIMetric)."""
        self._of(event).add_event(event)

    def add_flags(self, event: dict[str, Any], flags: Iterable[str]) -> None:
        """An outcome recorded later turned `flags` on for an event that was already folded.

        `event` needs only the label columns (business_id, model_name,
        intent_detected, response_type); `flags` are AIMetric flag names
        (FLAG_COLUMNS). An event not yet folded must not come here: folding it
        reads the flag from its row.
        """
        self._of(event).add_flags(flags)

    def write(self) -> None:
        """Add what was accumulated to the stored rows (creating missing ones), then start empty."""
        keys = sorted(self._sums)
        stored = _stored_rows(self._model, keys, self.READ_CHUNK)
        changed: list[TotalsColumns] = []
        new: list[TotalsColumns] = []
        for key in keys:
            row = stored.get(key)
            if row is None:
                row = self._model(**key._asdict())
                sums = self._sums[key]
                new.append(row)
            else:
                sums = Sums.of_row(row)
                sums.merge(self._sums[key])
                changed.append(row)
            sums.store_in(row)
        if changed:
            self._model._default_manager.bulk_update(changed, _WRITTEN_COLUMNS, batch_size=self.WRITE_BATCH)
        if new:
            self._model._default_manager.bulk_create(new, batch_size=self.WRITE_BATCH)
        self._sums.clear()


def _stored_rows(model: type[TotalsColumns], keys: list[TotalsKey], chunk: int) -> dict[TotalsKey, TotalsColumns]:
    """The stored rows of `keys`, read by exact key (never a whole business)."""
    found: dict[TotalsKey, TotalsColumns] = {}
    for start in range(0, len(keys), chunk):
        wanted = functools.reduce(operator.or_, (Q(**key._asdict()) for key in keys[start:start + chunk]))
        # Locked until the caller's transaction ends (PostgreSQL): outcomes recorded at once add in turn.
        for row in model._default_manager.select_for_update().filter(wanted).order_by():
            found[_key_of(row)] = row
    return found


def _key_of(row: TotalsColumns) -> TotalsKey:
    return TotalsKey(row.business_id, row.model_name, row.intent, row.response_type)


class StoredTotals(NamedTuple):
    """One MetricTotals row as /metrics reads it; `histograms` is the stored JSON, decoded."""

    key: TotalsKey
    events: int
    failed: int
    tokens: int
    client_cost: Decimal
    requested: int
    booked: int
    handoffs: int
    histograms: dict[str, dict[str, Any]]




def stored_totals(chunk: int = 500) -> Iterator[StoredTotals]:
    """Every MetricTotals row, for /metrics at each scrape, read `chunk` rows at a time.

    The JSON comes back as text and orjson decodes it: Django's JSONField
    decoder took 16 us a row, a third of a scrape with 2,000 rows. Rows are
    meant to be used as they come: a scrape that held all of them made the
    garbage collector's full passes (30 ms) part of every third scrape.
    """
    rows = MetricTotals.objects.order_by().values_list(
        "business_id", "model_name", "intent", "response_type",
        "events", "failed", "tokens", "requested", "booked", "handoffs", "client_cost",
        Cast("histograms", TextField()),
    )
    for (business_id, model_name, intent, response_type, events, failed, tokens, requested, booked, handoffs,
         client_cost, histograms) in rows.iterator(chunk_size=chunk):
        yield StoredTotals(
            TotalsKey(business_id, model_name, intent, response_type), events, failed, tokens,
            Decimal(client_cost), requested, booked, handoffs, orjson.loads(histograms),
        )


# Label sets held in memory at once while rebuilding; beyond it they are written and the next events merge in.
_REBUILD_MAX_KEYS = 50_000


def rebuild(
    *, through: int | None = None, chunk: int = 20_000, progress: Callable[[int], None] | None = None
) -> int:
    """Recompute every total from the raw events, on top of what retention removed; returns the number of rows.

    With `through`, only events whose id is at most `through` count: that is
    how the folder's own rebuild keeps the totals equal to what it folded
    (called with its state row locked and through=folded_through, so the
    events after it are added once, when folded). Without it, every stored
    event counts. Memory stays bounded: the events are read `chunk` a query
    (database.in_id_pages, also behind a transaction pooler) and the sums are
    written whenever they hold _REBUILD_MAX_KEYS label sets. The totals of
    the events that retention removed (PrunedTotals) are copied first, so the
    counters after a rebuild are never below the ones before it.
    """
    rows = AIMetric.objects.all()
    if through is not None:
        rows = rows.filter(id__lte=through)
    q = connection.ops.quote_name
    with transaction.atomic():
        with connection.cursor() as cursor:
            # One statement; a queryset delete would fetch every row to send post_delete signals.
            cursor.execute(f"DELETE FROM {q(MetricTotals._meta.db_table)}")
            columns = ", ".join(q(str(f.column)) for f in PrunedTotals._meta.concrete_fields if not f.primary_key)
            cursor.execute(
                f"INSERT INTO {q(MetricTotals._meta.db_table)} ({columns}) "
                f"SELECT {columns} FROM {q(PrunedTotals._meta.db_table)}"
            )
        accumulator = TotalsAccumulator()
        unreported = 0
        for event in database.in_id_pages(rows, EVENT_FIELDS, chunk):
            accumulator.add(event)
            if len(accumulator) >= _REBUILD_MAX_KEYS:
                accumulator.write()
            unreported += 1
            if progress is not None and unreported == chunk:
                progress(unreported)
                unreported = 0
        accumulator.write()
        if progress is not None and unreported:
            progress(unreported)
        return MetricTotals.objects.count()
