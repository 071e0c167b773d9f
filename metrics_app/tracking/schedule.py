"""The worker's daily MLflow job: a django-q2 schedule, made once when MLflow is configured.

`migrate` makes it (a post_migrate handler; start.sh migrates at every start),
so the schedule exists once MLFLOW_TRACKING_URI is set and the service has
started, with no command to remember. Without MLflow configured nothing is made,
and a schedule left from an earlier configuration only answers that MLflow is
not configured.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone

from metrics_app.tracking.client import configured

SCHEDULE_NAME = "MLflow: each version's daily figures"
TASK = "metrics_app.tracking.live.log_finished_days"
# Half an hour into the day, so the folder has folded the last replies of the day before.
RUN_AT = time(0, 30)


def next_run(now: datetime | None = None) -> datetime:
    """The next RUN_AT in MLFLOW_TIME_ZONE."""
    tz = zoneinfo.ZoneInfo(settings.MLFLOW_TIME_ZONE)
    local = (now or timezone.now()).astimezone(tz)
    at = datetime.combine(local.date(), RUN_AT, tzinfo=tz)
    return at if at > local else datetime.combine(local.date() + timedelta(days=1), RUN_AT, tzinfo=tz)


def ensure_schedule(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Make the daily schedule when MLflow is configured and it does not exist yet; True when it was made."""
    if not configured():
        return False
    from django_q.models import Schedule

    _, made = Schedule.objects.using(using).get_or_create(
        name=SCHEDULE_NAME,
        defaults={"func": TASK, "schedule_type": Schedule.DAILY, "repeats": -1, "next_run": next_run()},
    )
    return made


def on_post_migrate(sender: Any, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    ensure_schedule(using)
