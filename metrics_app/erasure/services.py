"""Erasing a conversation everywhere it lives, through the access rule, with an audit record.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction

from metrics_app import access
from metrics_app.analytics import rollups
from metrics_app.models import (
    AIMetric,
    Conversation,
    ConversationRollup,
    ErasureKind,
    ErasureRecord,
    EventKey,
    conversation_digest,
)

# What the rollups are made of, and what tells folded events from the rest.
_EVENT_COLUMNS = tuple(dict.fromkeys(("id", "event_id", "conversation_id", *rollups.EVENT_COLUMNS)))
# How long an erasure waits for a fold (or a rebuild) holding the folder's row before it gives up.
WAIT_SECONDS = 10.0


class ErasureRefused(Exception):
    """The user may not erase this business's data (the access rule), or there is nothing of that name."""


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
