"""Reads of conversations: a page of them, one with its events, each with its event figures.

The API and the console read conversations through these; neither builds the queries itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db.models import Count, Max, Min, Q, QuerySet, Sum

from metrics_app.analytics.selectors import Filters, conversations_in
from metrics_app.models import AIMetric, Conversation
from metrics_app.rules import FAILED_REPLY, UNPRICED


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
    result = []
    for row in rows:
        f = figures.get((row.business_id, row.conversation_id), {})
        result.append({
            "id": row.pk, "business_id": row.business_id, "conversation_id": row.conversation_id,
            "first_at": row.first_at, "last_at": row.last_at, "turns": row.turns,
            "tokens": int(f.get("tokens") or 0), "cost_usd": float(f.get("cost") or 0),
            "unpriced_events": f.get("unpriced", 0),
            "latency_mean_ms": (f["latency_sum"] / f["latency_n"]) if f.get("latency_n") else None,
            "errors": f.get("errors", 0),
            "appointment_requested": row.appointment_requested, "appointment_booked": row.appointment_booked,
            "human_handoff_requested": row.human_handoff_requested,
            "outcome_recorded_at": row.outcome_recorded_at, "outcome_note": row.outcome_note,
        })
    return result


def conversation_page(
    filters: Filters, *, limit: int, offset: int, conversation_id: str | None = None,
    booked: bool | None = None, handed_off: bool | None = None,
) -> tuple[list[Conversation], bool]:
    """Conversations that started in the period, newest first: one page, and whether more follow."""
    found = conversations_in(filters)
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
