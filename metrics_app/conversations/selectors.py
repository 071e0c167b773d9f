"""Reads of conversations: each with its event figures (tokens, cost, latency, errors).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Max, Min, Q, Sum

from metrics_app.models import AIMetric
from metrics_app.rules import FAILED_REPLY, UNPRICED


def with_figures(conversations_qs: Any) -> list[dict[str, Any]]:
    """The conversations with event figures (tokens, cost, latency), one grouped query for the page."""
    rows = list(conversations_qs)
    if not rows:
        return []
    wanted = Q()
    for row in rows:
        wanted |= Q(business_id=row.business_id, conversation_id=row.conversation_id)
    figures = {
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
