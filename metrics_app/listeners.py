"""Announcements of the event store, and who listens: events stored, bookings recorded, ingest answered.

The ingest views and the ingest and conversation services announce; monitoring (the Prometheus
counters) listens. Announcers know no listener, so the services never import monitoring, and each
Prometheus counter has one source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import transaction

logger = logging.getLogger(__name__)

Booking = tuple[str, str | None]  # (business_id, model_name) of an event that became booked


@dataclass(frozen=True)
class IngestAnswer:
    """What one ingest request (/track, /track/batch, /v1/traces) did with the events it carried.

    `skipped` counts the spans of an OTLP export that were no GenAI call, so no event.
    """

    created: int = 0
    duplicates: int = 0
    rejected: int = 0
    skipped: int = 0


_stored: list[Callable[[list[dict[str, Any]]], None]] = []
_booked: list[Callable[[list[Booking]], None]] = []
_answered: list[Callable[[IngestAnswer], None]] = []


def on_events_stored(listener: Callable[[list[dict[str, Any]]], None]) -> None:
    """`listener` gets each list of newly stored events (never a duplicate), after they commit."""
    if listener not in _stored:
        _stored.append(listener)


def on_bookings_recorded(listener: Callable[[list[Booking]], None]) -> None:
    """`listener` gets the events that became booked after they were stored, after that commits."""
    if listener not in _booked:
        _booked.append(listener)


def on_ingest_answered(listener: Callable[[IngestAnswer], None]) -> None:
    """`listener` gets what each ingest request created, found duplicate and rejected."""
    if listener not in _answered:
        _answered.append(listener)


def forget(listener: Callable[..., None]) -> None:
    for listeners in (_stored, _booked, _answered):
        if listener in listeners:
            listeners.remove(listener)


def events_stored(events: list[dict[str, Any]]) -> None:
    if events and _stored:
        transaction.on_commit(lambda: _call_all(_stored, events))


def bookings_recorded(bookings: list[Booking]) -> None:
    if bookings and _booked:
        transaction.on_commit(lambda: _call_all(_booked, bookings))


def ingest_answered(answer: IngestAnswer) -> None:
    _call_all(_answered, answer)


def _call_all(listeners: list[Callable[[Any], None]], items: Any) -> None:
    for listener in listeners:
        try:
            listener(items)
        except Exception:  # a listener must never fail a write that has committed, nor an answer
            logger.exception("listener %r failed", listener)
