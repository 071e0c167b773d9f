"""The worker's daily retraining of the likely-bookings models: a django-q2 schedule made on post_migrate.

Daily, because a day adds a small share of a 90-day window; at 03:15 UTC, when
most businesses' conversations of the day before have ended. `migrate` makes
it (start.sh migrates at every start), so it exists without a command to
remember; `manage.py train_booking_models` trains at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import DEFAULT_DB_ALIAS

from metrics_app import scheduling

SCHEDULE_NAME = "Likely bookings: retrain each business's model"
TASK = "metrics_app.predictions.services.scheduled_training"
RUN_AT_HOUR, RUN_AT_MINUTE = 3, 15


def next_run(now: datetime | None = None) -> datetime:
    """The next 03:15 UTC."""
    return scheduling.next_daily(RUN_AT_HOUR, RUN_AT_MINUTE, now)


def ensure_schedule(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Make the daily schedule when it does not exist yet; True when it was made."""
    from django_q.models import Schedule

    return scheduling.ensure(SCHEDULE_NAME, TASK, Schedule.DAILY, next_run(), using=using)


def on_post_migrate(sender: Any, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    ensure_schedule(using)
