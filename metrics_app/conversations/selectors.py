"""Reads of conversations: a page of them, one with its events, each with its event figures.

The API and the console read conversations through these; neither builds the queries itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, Max, Min, Q, QuerySet, Sum
from django.utils import timezone

from metrics_app import horizon
from metrics_app.analytics.selectors import Filters, conversations_in
from metrics_app.models import AIMetric, Business, Conversation
from metrics_app.rules import FAILED_REPLY, UNPRICED

# A score at or below this is negative: VADER's own convention for its compound score, used for a client's too.
NEGATIVE_SENTIMENT = Decimal("-0.05")


def ended(now: datetime | None = None) -> Q:
    """Conversations that have ended by `now`: their business's idle time has passed since their last event.

    One condition per distinct idle time (businesses share a handful), each on the (business, last_at) index.
    """
    now = now or timezone.now()
    condition = Q(pk__in=[])
    idle_times = Business.objects.order_by().values_list("conversation_idle_minutes", flat=True).distinct()
    for minutes in sorted(idle_times):
        condition |= Q(business__conversation_idle_minutes=minutes, last_at__lte=now - timedelta(minutes=minutes))
    return condition


def ended_negative(now: datetime | None = None) -> Q:
    """Ended, its latest scored message negative, and neither booked nor handed to a human."""
    return ended(now) & Q(
        last_sentiment__lte=NEGATIVE_SENTIMENT, appointment_booked=False, human_handoff_requested=False
    )


def idle_times(business_ids: Iterable[str]) -> dict[str, timedelta]:
    """Each business's idle time that ends a conversation."""
    return {
        business_id: timedelta(minutes=minutes)
        for business_id, minutes in Business.objects.filter(pk__in=set(business_ids))
        .values_list("id", "conversation_idle_minutes")
    }


def with_figures(conversations_qs: Any) -> list[dict[str, Any]]:
    """The conversations with event figures (tokens, cost, latency), one grouped query for the page."""
    rows = list(conversations_qs)
    if not rows:
        return []
    wanted = Q()
    for row in rows:
        wanted |= Q(business_id=row.business_id, conversation_id=row.conversation_id)
    figures: dict[tuple[str, str | None], Mapping[str, Any]] = {
        (f["business_id"], f["conversation_id"]): f
        for f in AIMetric.objects.filter(wanted).values("business_id", "conversation_id").annotate(
            tokens=Sum("tokens_used"), cost=Sum("cost_usd"), unpriced=Count("id", filter=UNPRICED),
            latency_sum=Sum("response_time_ms"), latency_n=Count("response_time_ms"),
            errors=Count("id", filter=FAILED_REPLY), first=Min("timestamp"), last=Max("timestamp"),
        ).order_by()
    }
    idle = idle_times(row.business_id for row in rows)
    now = timezone.now()
    pruned_before = horizon.pruned_before()
    result = []
    for row in rows:
        f = figures.get((row.business_id, row.conversation_id), {})
        ends_at = row.last_at + idle.get(row.business_id, timedelta(0))
        result.append({
            "id": row.pk, "business_id": row.business_id, "conversation_id": row.conversation_id,
            "first_at": row.first_at, "last_at": row.last_at, "turns": row.turns,
            "tokens": int(f.get("tokens") or 0), "cost_usd": float(f.get("cost") or 0),
            "unpriced_events": f.get("unpriced", 0),
            "latency_mean_ms": (f["latency_sum"] / f["latency_n"]) if f.get("latency_n") else None,
            "errors": f.get("errors", 0),
            "raw_events_pruned": pruned_before is not None and row.first_at < pruned_before,
            "appointment_requested": row.appointment_requested, "appointment_booked": row.appointment_booked,
            "human_handoff_requested": row.human_handoff_requested,
            "outcome_recorded_at": row.outcome_recorded_at, "outcome_note": row.outcome_note,
            "state": "ended" if ends_at <= now else "open", "ends_at": ends_at,
            "last_sentiment": None if row.last_sentiment is None else float(row.last_sentiment),
        })
    return result


def conversation_page(
    filters: Filters, *, limit: int, offset: int, conversation_id: str | None = None,
    booked: bool | None = None, handed_off: bool | None = None, state: str | None = None,
    negative_end: bool | None = None,
) -> tuple[list[Conversation], bool]:
    """Conversations that started in the period, newest first: one page, and whether more follow.

    `state` is "open" or "ended"; `negative_end` True keeps only those that ended negative without a booking
    or a handoff, False leaves them out.
    """
    found = conversations_in(filters)
    if state is not None:
        found = found.filter(ended()) if state == "ended" else found.exclude(ended())
    if negative_end is not None:
        found = found.filter(ended_negative()) if negative_end else found.exclude(ended_negative())
    if conversation_id:
        found = found.filter(conversation_id=conversation_id)
    if booked is not None:
        found = found.filter(appointment_booked=booked)
    if handed_off is not None:
        found = found.filter(human_handoff_requested=handed_off)
    page = list(found.order_by("-first_at", "-id")[offset:offset + limit + 1])
    return page[:limit], len(page) > limit


def conversation_by_pk(pk: int) -> Conversation | None:
    return Conversation.objects.filter(pk=pk).first()


def conversation_of(business_id: str, conversation_id: str) -> Conversation | None:
    return Conversation.objects.filter(business_id=business_id, conversation_id=conversation_id).first()


def events_of(conversation: Conversation, limit: int) -> QuerySet[AIMetric]:
    """The conversation's events in time order, at most `limit` of them."""
    return AIMetric.objects.filter(
        business_id=conversation.business_id, conversation_id=conversation.conversation_id
    ).order_by("timestamp", "id")[:limit]
