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

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from metrics_app.analytics.rollups import DIMENSIONS, Slice
from metrics_app.models import AIMetric, Conversation
from metrics_app.replica import reading

_FLAGS = ("appointment_requested", "appointment_booked", "human_handoff_requested")
_LABELS = tuple(DIMENSIONS.values())  # the filterable event columns


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


def touched(folded_through: int, businesses: frozenset[str] | None) -> list[Touched]:
    """Every conversation of these businesses that an event above folded_through belongs to.

    Two statements, each joining the touched (business, conversation) pairs,
    found from the ids above folded_through, to the events and to the stored
    conversations.
    """
    q = reading().ops.quote_name
    events, conversations = q(AIMetric._meta.db_table), q(Conversation._meta.db_table)
    scope = ""
    args: list[Any] = [folded_through]
    if businesses is not None:
        scope = f" AND business_id IN ({', '.join(['%s'] * len(businesses))})"
        args += sorted(businesses)
    pairs = (
        f"(SELECT DISTINCT business_id, conversation_id FROM {events} WHERE id > %s{scope} "
        f"AND conversation_id IS NOT NULL AND conversation_id <> '') t"
    )
    columns = ("timestamp", *_FLAGS, *_LABELS)
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with reading().cursor() as cursor:
        cursor.execute(
            f"SELECT e.business_id, e.conversation_id, {', '.join('e.' + c for c in columns)} FROM {events} e "
            f"JOIN {pairs} ON e.business_id = t.business_id AND e.conversation_id = t.conversation_id", args,
        )
        for business_id, conversation_id, *values in cursor.fetchall():
            found.setdefault((business_id, conversation_id), []).append(dict(zip(columns, values, strict=True)))
        cursor.execute(
            f"SELECT c.business_id, c.conversation_id, c.first_at, {', '.join('c.' + f for f in _FLAGS)}, "
            f"c.dimension_values FROM {conversations} c "
            f"JOIN {pairs} ON c.business_id = t.business_id AND c.conversation_id = t.conversation_id", args,
        )
        stored = {
            (b, c): Correction.of(b, _aware(first_at), -1, flags, _json(values))
            for b, c, first_at, *flags, values in cursor.fetchall()
        }
    result = []
    for key, rows in found.items():
        values = {d: frozenset(r[column] or "" for r in rows) for d, column in DIMENSIONS.items()}
        now = Correction.of(key[0], min(_aware(r["timestamp"]) for r in rows), 1,
                            [any(r[flag] for r in rows) for flag in _FLAGS], values)
        labels = tuple({column: r[column] for column in _LABELS} for r in rows)
        result.append(Touched(stored.get(key), now, labels))
    return result


def _aware(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite hands back text
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):  # SQLite keeps JSON as text
        return dict(json.loads(value))
    return value or {}


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
