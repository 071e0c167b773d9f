"""What a staff user may see in the console: the businesses that metrics_app.access allows them."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from metrics_app.access import visible_business_ids
from metrics_app.models import AIMetric, Business

__all__ = ["visible_business_ids", "visible_businesses", "visible_events", "visible_rows"]


def visible_businesses(user: Any) -> QuerySet[Business]:
    ids = visible_business_ids(user)
    businesses = Business.objects.all()
    return businesses if ids is None else businesses.filter(id__in=ids)


def visible_rows(user: Any, rows: QuerySet, field: str = "business_id") -> QuerySet:
    """`rows` limited to the businesses `user` may see, by the row's business `field`."""
    ids = visible_business_ids(user)
    return rows if ids is None else rows.filter(**{f"{field}__in": ids})


def visible_events(user: Any, events: QuerySet[AIMetric] | None = None) -> QuerySet[AIMetric]:
    events = AIMetric.objects.all() if events is None else events
    ids = visible_business_ids(user)
    return events if ids is None else events.filter(business_id__in=ids)
