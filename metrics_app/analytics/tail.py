"""The events stored but not folded yet, and what they change in the figures the rollups hold.

The folder folds events into the rollups and conversations a moment after
they are stored. Reads that use the rollups add this tail themselves, in the
same snapshot, so an answer counts every event committed when it was read:

- Event figures: the reads sum the tail's raw rows (ids above folded_through)
  beside the rollups, as they sum the partial quarter hours at a period's ends.
- Conversation figures: a tail event can start a conversation, move its
  first event earlier (out of the period, or into it), turn on a flag or
  bring a new value (an intent, a model). For every conversation a tail event
  touches, the read takes away what the folded conversation row counts and
  adds the conversation as all of its stored events make it: first event the
  earliest, a flag on when any event has it (outcomes recorded later set the
  flag on an event too, so the events alone say it), the values its events
  carry. Each is a `Correction` at the moment the conversation starts, so any
  bucket or period sums the ones inside it.

A tail is as long as the folder is behind: normally a few hundred events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet

from metrics_app.analytics.rollups import DIMENSIONS, Slice
from metrics_app.models import AIMetric, Conversation

_FLAGS = ("appointment_requested", "appointment_booked", "human_handoff_requested")
_KEYS_PER_QUERY = 300


@dataclass(frozen=True)
class Correction:
    """One conversation counted (+1) or no longer counted (-1) at the moment it starts, with its flags and values."""

    business_id: str
    moment: datetime
    sign: int
    requested: bool
    booked: bool
    handoff: bool
    values: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, business_id: str, moment: datetime, sign: int, flags: Sequence[Any],
           values: Mapping[str, Iterable[str]] | None) -> Correction:
        """From flags in column order (requested, booked, handoff) and values per dimension."""
        return cls(business_id, moment, sign, bool(flags[0]), bool(flags[1]), bool(flags[2]),
                   {d: frozenset(v) for d, v in (values or {}).items()})

    def sums(self) -> dict[str, int]:
        """As the reads name conversation sums."""
        return {
            "conversations": self.sign,
            "conv_requested": self.sign * self.requested,
            "conv_booked": self.sign * self.booked,
            "conv_handoffs": self.sign * self.handoff,
        }

    def keys(self, dimension: str) -> frozenset[str]:
        """The values of `dimension` this conversation counts under ("" for events without one)."""
        if dimension == "business":
            return frozenset({self.business_id})
        return self.values.get(dimension, frozenset())

    def counts_in(self, chosen: Slice) -> bool:
        dimension, value = chosen
        return not dimension or value in self.keys(dimension)


@dataclass(frozen=True)
class Touched:
    """A conversation that unfolded events touch: as its folded row counts it, and as all its events make it."""

    stored: Correction | None
    now: Correction
    labels: tuple[dict[str, Any], ...]  # each event's filterable columns

    def matches(self, event_filters: dict[str, str]) -> bool:
        """Whether any of its events matches every filter (the reads' rule for several filters at once)."""
        return any(all(label[f] == v for f, v in event_filters.items()) for label in self.labels)


def _scoped(events: QuerySet[AIMetric], businesses: frozenset[str] | None) -> QuerySet[AIMetric]:
    return events if businesses is None else events.filter(business_id__in=businesses)


def touched(folded_through: int, businesses: frozenset[str] | None) -> list[Touched]:
    """Every conversation of these businesses that an event above folded_through belongs to."""
    pairs = _scoped(AIMetric.objects.filter(id__gt=folded_through), businesses).exclude(
        Q(conversation_id__isnull=True) | Q(conversation_id="")
    ).order_by().values_list("business_id", "conversation_id").distinct()
    keys = sorted((business_id, conversation_id or "") for business_id, conversation_id in set(pairs))
    found: list[Touched] = []
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        found.extend(_touched(keys[start:start + _KEYS_PER_QUERY]))
    return found


_LABELS = tuple(DIMENSIONS.values())


def _touched(keys: list[tuple[str, str]]) -> list[Touched]:
    wanted = Q()
    for business_id, conversation_id in keys:
        wanted |= Q(business_id=business_id, conversation_id=conversation_id)
    events: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in AIMetric.objects.filter(wanted).order_by().values(
        "business_id", "conversation_id", "timestamp", *_FLAGS, *_LABELS
    ):
        events.setdefault((row["business_id"], row["conversation_id"]), []).append(row)
    stored = {
        (b, c): Correction.of(b, first_at, -1, flags, values)
        for b, c, first_at, *flags, values in Conversation.objects.filter(wanted).values_list(
            "business_id", "conversation_id", "first_at", *_FLAGS, "dimension_values"
        )
    }
    found = []
    for key, rows in events.items():
        values = {d: frozenset(r[column] or "" for r in rows) for d, column in DIMENSIONS.items()}
        now = Correction.of(key[0], min(r["timestamp"] for r in rows), 1,
                            [any(r[flag] for r in rows) for flag in _FLAGS], values)
        labels = tuple({column: r[column] for column in _LABELS} for r in rows)
        found.append(Touched(stored.get(key), now, labels))
    return found


def corrections(conversations: list[Touched], chosen: Slice | None, event_filters: dict[str, str]) -> list[Correction]:
    """The corrections of one slice; with `chosen` None (several filters), of the conversations matching them all."""
    found: list[Correction] = []
    for conversation in conversations:
        if chosen is None:
            if not conversation.matches(event_filters):
                continue
            parts = [conversation.stored, conversation.now]
        else:
            parts = [c for c in (conversation.stored, conversation.now) if c is not None and c.counts_in(chosen)]
        found.extend(c for c in parts if c is not None)
    return found
