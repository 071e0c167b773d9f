"""The events stored but not folded yet, and what they change in the figures the rollups hold.

The folder folds events into the rollups and conversations a moment after
they are stored. Reads that use the rollups add this tail themselves, in the
same snapshot, so an answer counts every event committed when it was read:

- Event figures: the reads sum the tail's raw rows (ids above folded_through)
  beside the rollups, as they sum the partial quarter hours at a period's ends.
- Conversation figures: a tail event can start a conversation, move its
  first event earlier (out of the period, or into it) or turn on a flag. For
  every conversation a tail event touches, the read takes away what the
  folded conversation row counts and adds the conversation as all of its
  stored events make it: first event the earliest, a flag on when any event
  has it (outcomes recorded later set the flag on an event too, so the
  events alone say it). Those are the `corrections`, each at the moment the
  conversation starts, so any bucket or period can sum the ones inside it.

A tail is as long as the folder is behind: normally a few hundred events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Count, Min, Q, QuerySet

from metrics_app.models import AIMetric, Conversation

_FLAGS = ("appointment_requested", "appointment_booked", "human_handoff_requested")


@dataclass(frozen=True)
class Correction:
    """One conversation counted (+1) or no longer counted (-1) at the moment it starts, with its flags."""

    moment: datetime
    sign: int
    requested: bool
    booked: bool
    handoff: bool

    def sums(self) -> dict[str, int]:
        """As the reads name conversation sums."""
        return {
            "conversations": self.sign,
            "conv_requested": self.sign * self.requested,
            "conv_booked": self.sign * self.booked,
            "conv_handoffs": self.sign * self.handoff,
        }


def _scoped(events: QuerySet[AIMetric], businesses: frozenset[str] | None) -> QuerySet[AIMetric]:
    return events if businesses is None else events.filter(business_id__in=businesses)


def corrections(folded_through: int, businesses: frozenset[str] | None,
                event_filters: dict[str, str]) -> list[Correction]:
    """What the tail changes in the conversation counts (see the module's docstring).

    With event filters, a conversation counts when one of its events matches
    them, as the reads count folded conversations.
    """
    touched = _scoped(AIMetric.objects.filter(id__gt=folded_through), businesses).exclude(
        Q(conversation_id__isnull=True) | Q(conversation_id="")
    ).order_by().values_list("business_id", "conversation_id").distinct()
    keys = sorted((business_id, conversation_id or "") for business_id, conversation_id in set(touched))
    found: list[Correction] = []
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        found.extend(_corrections_of(keys[start:start + _KEYS_PER_QUERY], event_filters))
    return found


_KEYS_PER_QUERY = 300


def _corrections_of(keys: list[tuple[str, str]], event_filters: dict[str, str]) -> list[Correction]:
    wanted = Q()
    for business_id, conversation_id in keys:
        wanted |= Q(business_id=business_id, conversation_id=conversation_id)
    counts = {name: Count("id", filter=Q(**{name: True})) for name in _FLAGS}
    if event_filters:
        counts["matching"] = Count("id", filter=Q(**event_filters))
    grouped: Iterable[dict[str, Any]] = list(AIMetric.objects.filter(wanted).values(
        "business_id", "conversation_id"
    ).annotate(first=Min("timestamp"), **counts).order_by())  # type: ignore[arg-type]
    counted = set()
    found: list[Correction] = []
    for row in grouped:
        if event_filters and not row["matching"]:
            continue
        counted.add((row["business_id"], row["conversation_id"]))
        found.append(Correction(row["first"], 1, *(row[name] > 0 for name in _FLAGS)))
    for business_id, conversation_id, first_at, *flags in Conversation.objects.filter(wanted).values_list(
        "business_id", "conversation_id", "first_at", *_FLAGS
    ):
        # Under event filters the reads count a folded conversation when any stored event of it matches.
        if not event_filters or (business_id, conversation_id) in counted:
            found.append(Correction(first_at, -1, *flags))
    return found
