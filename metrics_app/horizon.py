"""The raw-event horizon: how far back raw events are kept (MLOPS_RAW_RETENTION_DAYS), and what was pruned.

Retention removes the raw events of whole UTC days: every event before the
start of the UTC day N days ago. The ingest refuses events older than that
same bound, so an event that retention may already have removed (with its
dedupe key) can never be stored, and counted, a second time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone

from metrics_app.models import RETENTION_NAME, RetentionState


def retention_days() -> int | None:
    """MLOPS_RAW_RETENTION_DAYS, or None when raw events are kept for ever (the default)."""
    return settings.MLOPS_RAW_RETENTION_DAYS or None


def cutoff(days: int, now: datetime | None = None) -> datetime:
    """The start of the UTC day `days` days before `now`: retention removes every raw event before it."""
    moment = (now or timezone.now()).astimezone(UTC) - timedelta(days=days)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def earliest_accepted(now: datetime | None = None) -> datetime | None:
    """The oldest event time the ingest takes, or None when every time since 2000 is taken."""
    days = retention_days()
    return None if days is None else cutoff(days, now)


def pruned_before() -> datetime | None:
    """No raw event before this time is stored any more (None when retention never ran)."""
    return RetentionState.objects.filter(name=RETENTION_NAME).values_list("pruned_before", flat=True).first()
