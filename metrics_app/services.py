"""Writes to the event store: ingesting events, creating and revoking API keys."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from metrics_app import conversations, pricing
from metrics_app.models import AIMetric, ApiKey, Business
from metrics_app.validation import FIELD_NAMES

logger = logging.getLogger(__name__)

# Columns written by ingest, in order: the validated fields, created_at and the server's cost.
_COLUMNS = (*FIELD_NAMES, "created_at", "cost_usd", "cost_basis")

# Called with the list of events that were newly stored, after they commit.
# The Prometheus exporter subscribes here; a duplicate or rejected event never
# reaches a listener.
_stored_listeners: list[Callable[[list[dict[str, Any]]], None]] = []


def on_events_stored(listener: Callable[[list[dict[str, Any]]], None]) -> None:
    if listener not in _stored_listeners:
        _stored_listeners.append(listener)


# Called after commit with (business_id, model_name) for each event that became
# booked after it was stored (an outcome recorded later, by another system).
_booked_listeners: list[Callable[[list[tuple[str, str | None]]], None]] = []


def on_bookings_recorded(listener: Callable[[list[tuple[str, str | None]]], None]) -> None:
    if listener not in _booked_listeners:
        _booked_listeners.append(listener)


def notify_bookings_recorded(booked: list[tuple[str, str | None]]) -> None:
    """Tell listeners, once the current transaction commits, about events newly marked booked."""
    if booked and _booked_listeners:
        transaction.on_commit(lambda: _call_all(_booked_listeners, booked))


@dataclass(frozen=True)
class StoredOutcome:
    event_id: uuid.UUID
    created: bool


# Business ids this process has already seen in the database. A business is
# never deleted while it has events (PROTECT), and a stale entry only costs one
# retry (see _insert_events).
_known_businesses: set[str] = set()


def ensure_businesses(business_ids: Iterable[str]) -> None:
    """Create a Business row for each id not yet known (display name = id)."""
    missing = {b for b in business_ids if b not in _known_businesses}
    if not missing:
        return
    Business.objects.bulk_create([Business(id=b) for b in missing], ignore_conflicts=True)
    _known_businesses.update(missing)


def _column_adapters() -> list[Callable[[Any], Any]]:
    """Per-column conversions from Python values to what the driver takes."""
    identity = lambda value: value  # noqa: E731
    adapters = []
    for name in _COLUMNS:
        model_field = AIMetric._meta.get_field("business" if name == "business_id" else name)
        if model_field.get_internal_type() in ("UUIDField", "DateTimeField"):
            adapters.append(lambda value, f=model_field: f.get_db_prep_save(value, connection))
        else:
            adapters.append(identity)
    return adapters


def _insert_events(rows: list[dict[str, Any]]) -> set[tuple[str, uuid.UUID]]:
    """Insert rows, skipping (business_id, event_id) pairs that exist; return the pairs inserted."""
    table = connection.ops.quote_name(AIMetric._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(c) for c in _COLUMNS)
    placeholder = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
    adapters = _column_adapters()
    params: list[Any] = []
    for row in rows:
        params.extend(adapt(row[name]) for adapt, name in zip(adapters, _COLUMNS))
    sql = (
        f"INSERT INTO {table} ({columns}) VALUES {', '.join([placeholder] * len(rows))} "
        f"ON CONFLICT (business_id, event_id) DO NOTHING RETURNING business_id, event_id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        returned = cursor.fetchall()
    return {
        (business_id, value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
        for business_id, value in returned
    }


def record_events(events: list[dict[str, Any]]) -> list[StoredOutcome]:
    """Store validated events once each; report, in order, which were new.

    An event whose (business_id, event_id) is already stored, or repeated
    earlier in `events`, is a duplicate: the first write stands. All the new
    rows are written by one statement, so a failure stores none of them.
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
        try:
            inserted = _store(fresh)
        except IntegrityError:
            # A business this process thought it knew is gone: learn again, once.
            _known_businesses.clear()
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
    if stored and _stored_listeners:
        transaction.on_commit(lambda: _call_all(_stored_listeners, stored))
    return outcomes


def _store(rows: list[dict[str, Any]]) -> set[tuple[str, uuid.UUID]]:
    with transaction.atomic():
        ensure_businesses({row["business_id"] for row in rows})
        pricing.price_events(rows)
        inserted = _insert_events(rows)
        if inserted:
            # Only the rows this statement inserted: a duplicate never counts twice.
            conversations.apply_events([r for r in rows if (r["business_id"], r["event_id"]) in inserted])
        return inserted


def _call_all(listeners: list[Callable[[Any], None]], items: list[Any]) -> None:
    for listener in listeners:
        try:
            listener(items)
        except Exception:  # a listener must never fail a write that has committed
            logger.exception("listener %r failed for %d items", listener, len(items))


# --- API keys


def create_api_key(
    *,
    business: Business | None,
    name: str,
    can_ingest: bool = True,
    can_read: bool = False,
    expires_at: datetime | None = None,
    rate_limit_per_minute: int | None = None,
    created_by: Any = None,
) -> tuple[ApiKey, str]:
    """Make a key and return it with its raw value, which is shown once and never stored."""
    if business is None and can_ingest:
        raise ValueError("an agency key (no business) may only read")
    if not (can_ingest or can_read):
        raise ValueError("a key needs at least one scope")
    raw, prefix, hashed = ApiKey.generate()
    key = ApiKey.objects.create(
        business=business,
        name=name,
        prefix=prefix,
        hashed_key=hashed,
        can_ingest=can_ingest,
        can_read=can_read,
        expires_at=expires_at,
        rate_limit_per_minute=rate_limit_per_minute,
        created_by=created_by if getattr(created_by, "pk", None) else None,
    )
    return key, raw


def revoke_api_key(key: ApiKey) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


def expiry_in_days(days: int | None) -> datetime | None:
    return timezone.now() + timedelta(days=days) if days else None
