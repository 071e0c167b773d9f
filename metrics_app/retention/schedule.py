"""The worker's daily retention job: make the events table's partitions ahead, and prune when retention is on.

`migrate` makes the schedule (a post_migrate handler; start.sh migrates at
every start). It runs whether retention is on or off, because the
partitions ahead are made either way; with retention off it removes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import DEFAULT_DB_ALIAS

from metrics_app import scheduling

SCHEDULE_NAME = "Raw-event retention and partitions"
TASK = "metrics_app.retention.services.run_scheduled"
# Just after UTC midnight: the day that has just become old enough goes at once.
RUN_AT = (0, 20)


def next_run(now: datetime | None = None) -> datetime:
    return scheduling.next_daily(*RUN_AT, now)


def ensure_schedule(using: str = DEFAULT_DB_ALIAS) -> bool:
    from django_q.models import Schedule

    return scheduling.ensure(SCHEDULE_NAME, TASK, Schedule.DAILY, next_run(), using=using)


def on_post_migrate(sender: Any, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    ensure_schedule(using)
    from metrics_app.retention import partitions

    partitions.ensure()
