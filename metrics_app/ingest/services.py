"""Writes of the ingest: storing events once, with their prices, in one transaction.

Nothing else is written on the request path: conversations, rollups and the
Prometheus totals are folded from the stored events by the folder
(metrics_app/folding), so concurrent requests of different businesses never
wait on a row they share. The business and price look-ups are cached per
process.

An event is stored once by its key: the transaction first claims each
(business_id, event_id) in mlops_event_key, then inserts the events whose key
it claimed. The keys live apart from the events so that ai_metrics can be
partitioned by time on PostgreSQL (retention drops old partitions whole).
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import Field
from django.utils import timezone

from metrics_app import listeners
from metrics_app.ingest.validation import FIELD_NAMES
from metrics_app.models import AIMetric, Business, EventKey
from metrics_app.pricing import services as pricing

logger = logging.getLogger(__name__)

# Columns written by ingest, in order: the validated fields, created_at and the server's cost figures.
_COLUMNS = (*FIELD_NAMES, "created_at", "cost_usd", "cost_basis", "cache_savings_usd")


@dataclass(frozen=True)
class StoredOutcome:
    event_id: uuid.UUID
    created: bool


# Business ids this process has created or seen in the database, forgotten now
# and then so that a business deleted in the admin (only possible while it has
# no events) is created again by its next event.
_known_businesses: set[str] = set()

_KNOWN_BUSINESSES_TTL = 300.0

_known_since = time.monotonic()


def ensure_businesses(business_ids: Iterable[str]) -> None:
    """Create a Business row for each id not yet known (display name = id)."""
    global _known_since
    if time.monotonic() - _known_since > _KNOWN_BUSINESSES_TTL:
        _known_businesses.clear()
        _known_since = time.monotonic()
    missing = {b for b in business_ids if b not in _known_businesses}
    if not missing:
        return
    Business.objects.bulk_create([Business(id=b) for b in missing], ignore_conflicts=True)
    # Remember them only once they are committed: another thread of this
    # process must not skip the insert and commit events before this one does.
    transaction.on_commit(lambda: _known_businesses.update(missing))


def _row_values() -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A function from an event dict to its column values, as the database driver takes them."""
    values = operator.itemgetter(*_COLUMNS)
    if connection.vendor == "postgresql":
        return values  # psycopg2 adapts UUID, aware datetime and Decimal itself
    convert: list[Callable[[Any], Any] | None] = []
    for name in _COLUMNS:
        model_field = AIMetric._meta.get_field("business" if name == "business_id" else name)
        if isinstance(model_field, Field) and model_field.get_internal_type() in ("UUIDField", "DateTimeField"):
            convert.append(functools.partial(model_field.get_db_prep_save, connection=connection))
        else:
            convert.append(None)
    return lambda row: tuple(value if c is None else c(value) for c, value in zip(convert, values(row), strict=True))


def _placeholders(width: int, count: int) -> str:
    return ", ".join(["(" + ", ".join(["%s"] * width) + ")"] * count)


@functools.lru_cache(maxsize=64)
def _claim_sql(vendor: str, count: int) -> str:
    table = connection.ops.quote_name(EventKey._meta.db_table)
    return (
        f"INSERT INTO {table} (business_id, event_id) VALUES {_placeholders(2, count)} "
        f"ON CONFLICT (business_id, event_id) DO NOTHING RETURNING business_id, event_id"
    )


@functools.lru_cache(maxsize=64)
def _insert_sql(vendor: str, count: int) -> str:
    table = connection.ops.quote_name(AIMetric._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(c) for c in _COLUMNS)
    return f"INSERT INTO {table} ({columns}) VALUES {_placeholders(len(_COLUMNS), count)}"


# Up to this many events, PostgreSQL stores them with one statement: a single /track took 0.90 ms in place of
# 1.23 ms with two. Above it the typed VALUES list costs more than the second statement saves (500 events:
# 59.6 ms against 41.7 ms; the two were even at 50).
ONE_STATEMENT_MAX = 20


def _one_statement(rows: list[dict[str, Any]]) -> bool:
    return connection.vendor == "postgresql" and len(rows) <= ONE_STATEMENT_MAX


@functools.lru_cache(maxsize=64)
def _claim_and_insert_sql(count: int) -> str:
    """PostgreSQL: claim the keys and insert the events whose key was claimed, in one statement.

    The values carry their column's type (a column that is NULL in every row
    would otherwise be text), and the events' INSERT reads the claimed keys
    from the data-modifying CTE, so a key another statement holds stores no event.
    """
    q = connection.ops.quote_name
    columns = ", ".join(q(c) for c in _COLUMNS)
    types = [AIMetric._meta.get_field("business" if c == "business_id" else c).db_type(connection) for c in _COLUMNS]
    row = "(" + ", ".join(f"%s::{db_type}" for db_type in types) + ")"
    return (
        f"WITH v ({columns}) AS (VALUES {', '.join([row] * count)}), "
        f"claimed AS (INSERT INTO {q(EventKey._meta.db_table)} (business_id, event_id) "
        f"SELECT business_id, event_id FROM v ON CONFLICT (business_id, event_id) DO NOTHING "
        f"RETURNING business_id, event_id) "
        f"INSERT INTO {q(AIMetric._meta.db_table)} ({columns}) "
        f"SELECT {', '.join('v.' + q(c) for c in _COLUMNS)} FROM v JOIN claimed USING (business_id, event_id) "
        f"RETURNING business_id, event_id"
    )


def _insert_events(rows: list[dict[str, Any]]) -> set[tuple[str, uuid.UUID]]:
    """Insert the rows whose (business_id, event_id) no stored event has; returns the pairs inserted.

    The key claim and the insert run in the caller's transaction: one
    statement for a few events on PostgreSQL, two otherwise. Concurrent retries of one event
    store it once: the losers of the race wait on the key's unique index
    until the winner commits, see the conflict and claim nothing.
    """
    to_values = _row_values()
    with connection.cursor() as cursor:
        if _one_statement(rows):
            cursor.execute(
                _claim_and_insert_sql(len(rows)), list(itertools.chain.from_iterable(map(to_values, rows)))
            )
            return {(business_id, value) for business_id, value in cursor.fetchall()}
        key_prep = _key_values()
        cursor.execute(
            _claim_sql(connection.vendor, len(rows)),
            list(itertools.chain.from_iterable(key_prep(row) for row in rows)),
        )
        claimed = {
            (business_id, value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
            for business_id, value in cursor.fetchall()
        }
        fresh = rows if len(claimed) == len(rows) else [
            row for row in rows if (row["business_id"], row["event_id"]) in claimed
        ]
        if fresh:
            cursor.execute(
                _insert_sql(connection.vendor, len(fresh)),
                list(itertools.chain.from_iterable(map(to_values, fresh))),
            )
    return claimed


def _key_values() -> Callable[[dict[str, Any]], tuple[Any, Any]]:
    """A function from an event dict to its key's column values, as the database driver takes them."""
    if connection.vendor == "postgresql":
        return operator.itemgetter("business_id", "event_id")
    prep = functools.partial(EventKey._meta.get_field("event_id").get_db_prep_save, connection=connection)
    return lambda row: (row["business_id"], prep(row["event_id"]))


def record_events(events: list[dict[str, Any]]) -> list[StoredOutcome]:
    """Store validated events once each; report, in order, which were new.

    An event whose (business_id, event_id) is already stored, or repeated
    earlier in `events`, is a duplicate: the first write stands. All the new
    rows are written in one transaction, so a failure stores none of them.
    """
    now = timezone.now()
    seen: set[tuple[str, uuid.UUID]] = set()
    fresh: list[dict[str, Any]] = []
    for event in events:
        if event["event_id"] is None:
            event["event_id"] = uuid.uuid4()
        if event["timestamp"] is None:
            event["timestamp"] = now
        event["created_at"] = now
        key = (event["business_id"], event["event_id"])
        if key not in seen:
            seen.add(key)
            fresh.append(event)
    if fresh:
        inserted = _store(fresh)
    else:
        inserted = set()

    outcomes = []
    stored = []
    claimed: set[tuple[str, uuid.UUID]] = set()
    for event in events:
        key = (event["business_id"], event["event_id"])
        created = key in inserted and key not in claimed
        if created:
            claimed.add(key)
            stored.append(event)
        outcomes.append(StoredOutcome(event["event_id"], created))
    listeners.events_stored(stored)
    return outcomes


def _store(rows: list[dict[str, Any]]) -> set[tuple[str, uuid.UUID]]:
    """One transaction: all of the new rows are stored, or none."""
    ensure_businesses({row["business_id"] for row in rows})  # usually no statement at all: cached
    pricing.price_events(rows)
    if _one_statement(rows):
        return _insert_events(rows)  # one statement, its own transaction
    with transaction.atomic():
        return _insert_events(rows)
