"""The worker's MLflow job: an hourly django-q2 schedule, made once when MLflow is configured.

Hourly, because each business's day ends at its own midnight: a day is
logged within the hour after it ends there, and a day already logged is
skipped, so the hours in between cost a lookup per version and nothing more.

`migrate` makes it (a post_migrate handler; start.sh migrates at every start),
so the schedule exists once MLFLOW_TRACKING_URI is set and the service has
started, with no command to remember. Without MLflow configured nothing is made,
and a schedule left from an earlier configuration only answers that MLflow is
not configured.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import DEFAULT_DB_ALIAS

from metrics_app import scheduling
from metrics_app.tracking.client import configured

SCHEDULE_NAME = "MLflow: each version's daily figures"
TASK = "metrics_app.tracking.live.log_finished_days"
# Half past the hour: every zone's midnight is on a quarter hour, and the folder has folded the day's last replies.
RUN_AT_MINUTE = 30


def next_run(now: datetime | None = None) -> datetime:
    """The next half past an hour."""
    return scheduling.next_hourly(RUN_AT_MINUTE, now)


def ensure_schedule(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Make the hourly schedule when MLflow is configured and it does not exist yet; True when it was made."""
    if not configured():
        return False
    from django_q.models import Schedule

    return scheduling.ensure(SCHEDULE_NAME, TASK, Schedule.HOURLY, next_run(), using=using)


def on_post_migrate(sender: Any, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    ensure_schedule(using)
