"""Erasing a conversation, or a whole business, everywhere it lives, through the access rule, with an audit record.

A conversation lives in its events, its conversation row, and the sums that
the folder made of them: the event rollups and latency sketches (for its
business and for "*", every slice) and the conversation rollups. Erasing it
takes its folded events' and its row's contributions out of those sums and
deletes the events and the row, in one transaction that holds the folder's
row, so no fold can interleave. Events not folded yet are only deleted: the
folder never sees them. Afterwards every figure of every period reads as if
the conversation had never been sent, and the figures of other businesses
are unchanged.

What it leaves, on purpose: the Prometheus totals (counters only ever rise;
they hold counts per business, model and intent, not conversations), digests
already mailed, and the coefficients of a likely-bookings model trained on
it (retrained daily, over what is left).

A business lives in its events, conversations, its own rollup and sketch
rows and its part of the "*" rows, its Prometheus totals, API keys and their
rate-limit counters, opening hours and exceptions, experiments, the staff
grants naming it, digest deliveries, likely-bookings models, its Business
row, and what other apps hold of it (metrics_app/holdings: the documents
app's documents, knowledge-base entries and DVC objects). `erase_business`
deletes all of it in one transaction that holds the folder's row, subtracting
the business's own rollup rows from the "*" rows (rollups.subtract_business),
then has the other apps erase their files once that transaction has
committed. Afterwards:

- every figure of every other business, and every "*" figure, is what the
  remaining events make;
- /metrics has no series of the business any more (its MetricTotals rows are
  deleted; counters of a business do not fall, they end). With more
  businesses than MLOPS_PROMETHEUS_MAX_BUSINESSES, the next registered
  business takes its place under its own id, so its part of `other` moves
  out and `other` falls: Prometheus reads that as a counter reset;
- the ErasureRecord (kind business) keeps who, when, why and how many of
  each kind were erased, never the data; the records of its earlier
  conversation erasures stay (they hold digests, not ids).

What it leaves: digests already mailed, and MLflow runs that logged the
knowledge base's manifest (docs/documents.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Model, QuerySet

from metrics_app import access, holdings
from metrics_app.analytics import rollups
from metrics_app.keys import rate_limit
from metrics_app.models import (
    AIMetric,
    ApiKey,
    BookingModel,
    Business,
    Conversation,
    ConversationRollup,
    DigestDelivery,
    ErasureKind,
    ErasureRecord,
    EventKey,
    EventRollup,
    Experiment,
    LatencySketch,
    MetricTotals,
    OpeningException,
    OpeningHours,
    PrunedTotals,
    RateLimitSlot,
    StaffBusinessAccess,
    conversation_digest,
)

# What the rollups are made of, and what tells folded events from the rest.
_EVENT_COLUMNS = tuple(dict.fromkeys(("id", "event_id", "conversation_id", *rollups.EVENT_COLUMNS)))
# How long an erasure waits for a fold (or a rebuild) holding the folder's row before it gives up.
WAIT_SECONDS = 10.0


class ErasureRefused(Exception):
    """The user may not erase this business's data (the access rule), or there is nothing of that name."""


class ErasureIncomplete(Exception):
    """A business's rows are erased (and recorded) but some of its files are not; erasing it again finishes."""


@dataclass(frozen=True)
class Erased:
    record: ErasureRecord
    events: int
    conversations: int


def _name_of(user: Any) -> str:
    return (getattr(user, "get_username", lambda: "")() or "unknown")[:150]


def erase_conversation(user: Any, business_id: str, conversation_id: str, *, reason: str = "") -> Erased:
    """Erase one conversation of `business_id` everywhere, as `user`; ErasureRefused when they may not."""
    if not access.can_write(user, business_id):
        raise ErasureRefused("You may not erase that business's conversations")
    with transaction.atomic():
        folded_through = rollups.folded_through(hold=True, wait_seconds=WAIT_SECONDS)
        events = AIMetric.objects.filter(business_id=business_id, conversation_id=conversation_id)
        rows = list(events.order_by("id").values(*_EVENT_COLUMNS))
        conversation = Conversation.objects.select_for_update().filter(
            business_id=business_id, conversation_id=conversation_id
        ).first()
        if not rows and conversation is None:
            raise ErasureRefused("No such conversation")
        rollups.subtract_events([row for row in rows if row["id"] <= folded_through])
        if conversation is not None:
            _subtract_conversation(conversation)
            conversation.delete()
        deleted, _ = events.delete()
        # Their dedupe keys too: the chat app may send the conversation again, and it is stored again.
        EventKey.objects.filter(business_id=business_id, event_id__in=[row["event_id"] for row in rows]).delete()
        record = ErasureRecord.objects.create(
            kind=ErasureKind.CONVERSATION, business_id=business_id,
            conversation_digest=conversation_digest(business_id, conversation_id),
            erased_by=user if getattr(user, "pk", None) else None, erased_by_name=_name_of(user),
            events=deleted, conversations=int(conversation is not None), reason=reason[:300],
        )
    return Erased(record, deleted, int(conversation is not None))


def _subtract_conversation(conversation: Conversation) -> None:
    """Take the conversation's start (and flags) out of the conversation rollups; drop rows left empty."""
    flags = (conversation.appointment_requested, conversation.appointment_booked,
             conversation.human_handoff_requested)
    deltas = rollups.conversation_contributions(
        conversation.business_id, conversation.first_at, flags, conversation.dimension_values or {}, -1
    )
    rollups.add_conversation_deltas(deltas)
    buckets = {bucket for _, _, _, bucket in deltas}
    ConversationRollup.objects.filter(
        business_id__in=[conversation.business_id, rollups.ALL_BUSINESSES], bucket__in=buckets,
        started=0, requested=0, booked=0, handoffs=0,
    ).delete()


# What a business holds in metrics_app, by the name its count has in the record, in the order they are deleted.
# Events, conversations and the rollups come first (and are deleted apart, the rollups by subtraction).
_BUSINESS_ROWS: dict[str, tuple[type[Model], str]] = {
    "metric_totals": (MetricTotals, "business_id"),
    "pruned_totals": (PrunedTotals, "business_id"),
    "event_keys": (EventKey, "business_id"),
    "opening_hours": (OpeningHours, "business_id"),
    "opening_exceptions": (OpeningException, "business_id"),
    "experiments": (Experiment, "business_id"),
    "staff_grants": (StaffBusinessAccess, "business_id"),
    "digest_deliveries": (DigestDelivery, "business_id"),
    "booking_models": (BookingModel, "business_id"),
    "api_keys": (ApiKey, "business_id"),
}


@dataclass(frozen=True)
class BusinessErased:
    """What erasing a business erased (or, in a dry run, would erase), by kind; the record is None in a dry run."""

    business_id: str
    counts: dict[str, int]
    record: ErasureRecord | None


def _rows(model: type[Model], field: str, business_id: str) -> QuerySet[Any]:
    return model._default_manager.filter(**{field: business_id})


def business_holdings(business_id: str) -> dict[str, int]:
    """How many of each kind of row (and file) the business holds: what its erasure will take, for the asking."""
    counts = {
        "events": AIMetric.objects.filter(business_id=business_id).count(),
        "conversations": Conversation.objects.filter(business_id=business_id).count(),
        "event_rollups": EventRollup.objects.filter(business_id=business_id).count(),
        "conversation_rollups": ConversationRollup.objects.filter(business_id=business_id).count(),
        "latency_sketches": LatencySketch.objects.filter(business_id=business_id).count(),
        **{name: _rows(model, field, business_id).count() for name, (model, field) in _BUSINESS_ROWS.items()},
        "rate_limit_slots": RateLimitSlot.objects.filter(key__business_id=business_id).count(),
    }
    for holding in holdings.registered():
        counts.update(holding.count(business_id))
    return counts


def erase_business(user: Any, business_id: str, *, reason: str = "", dry_run: bool = False) -> BusinessErased:
    """Erase the business `business_id` everywhere, as `user`; ErasureRefused when they may not or it is not there.

    With `dry_run`, only counts what would go and changes nothing. The rows
    go in one transaction holding the folder's row; the other apps' files
    after it commits, and their counts are added to the record then. A
    business whose rows are gone but whose files are not (their erasure
    failed) can be erased again, to finish.
    """
    if not access.can_erase_business(user, business_id):
        raise ErasureRefused("You may not erase that business")
    before = business_holdings(business_id)
    if not Business.objects.filter(pk=business_id).exists() and not any(before.values()):
        raise ErasureRefused("No such business")
    if dry_run:
        return BusinessErased(business_id, before, None)
    for holding in holdings.registered():
        busy = holding.busy(business_id)
        if busy:
            raise ErasureRefused(busy)
    with transaction.atomic():
        rollups.folded_through(hold=True, wait_seconds=WAIT_SECONDS)
        Business.objects.select_for_update().filter(pk=business_id).first()
        counts: dict[str, int] = {}
        counts["rate_limit_slots"] = rate_limit.forget(list(ApiKey.objects.filter(business_id=business_id)))
        counts.update(rollups.subtract_business(business_id))
        counts["conversations"], _ = Conversation.objects.filter(business_id=business_id).delete()
        counts["events"], _ = AIMetric.objects.filter(business_id=business_id).delete()
        for holding in holdings.registered():
            counts.update(holding.erase_rows(business_id))
        for name, (model, field) in _BUSINESS_ROWS.items():
            # Counted by the model's own rows: delete() would add the rows that cascade from them.
            counts[name] = _rows(model, field, business_id).count()
            _rows(model, field, business_id).delete()
        counts["businesses"] = Business.objects.filter(pk=business_id).delete()[1].get(Business._meta.label, 0)
        record = ErasureRecord.objects.create(
            kind=ErasureKind.BUSINESS, business_id=business_id,
            erased_by=user if getattr(user, "pk", None) else None, erased_by_name=_name_of(user),
            events=counts["events"], conversations=counts["conversations"], erased=counts, reason=reason[:300],
        )
    for holding in holdings.registered():
        try:
            counts.update(holding.erase_files(business_id))
        except holdings.HoldingFailed as failed:
            raise ErasureIncomplete(f"The rows are erased, but not all of {holding.name}: {failed}") from failed
        finally:
            record.erased = counts
            record.save(update_fields=["erased"])
    return BusinessErased(business_id, counts, record)
