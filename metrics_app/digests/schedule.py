"""The worker's weekly-digest job: an hourly django-q2 schedule, made when MLOPS_WEEKLY_DIGEST is on.

Hourly, because each business's week ends at its own Monday midnight: a
digest goes out within the hour after its week ends there, and a week
already sent costs the next runs one lookup. `migrate` makes the schedule (a
post_migrate handler; start.sh migrates at every start), so turning the
switch on and restarting is all it takes. A schedule left from an earlier
configuration only answers that the digest is off.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS

from metrics_app import scheduling

SCHEDULE_NAME = "Weekly digest per business"
TASK = "metrics_app.digests.services.send_scheduled"
# A quarter past: every zone's midnight is on a quarter hour, so Monday 00:00 anywhere has passed by then.
RUN_AT_MINUTE = 15


def next_run(now: datetime | None = None) -> datetime:
    """The next quarter past an hour."""
    return scheduling.next_hourly(RUN_AT_MINUTE, now)


def ensure_schedule(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Make the hourly schedule when the digest is on and it does not exist yet; True when it was made."""
    if not settings.MLOPS_WEEKLY_DIGEST:
        return False
    from django_q.models import Schedule

    return scheduling.ensure(SCHEDULE_NAME, TASK, Schedule.HOURLY, next_run(), using=using)


def on_post_migrate(sender: Any, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    ensure_schedule(using)
