"""The worker's scheduled jobs: django-q2 schedules run by the cluster of their own (settings.SCHEDULED_CLUSTER).

A job made here runs in that cluster, so it never waits behind a document pipeline run (the pipeline's worker
runs one run at a time), and once across instances: each instance's scheduler locks a due schedule's row
before it queues the job and moves its next run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone


def next_hourly(minute: int, now: datetime | None = None) -> datetime:
    """The next time past an hour at `minute` minutes."""
    now = now or timezone.now()
    at = now.replace(minute=minute, second=0, microsecond=0)
    return at if at > now else at + timedelta(hours=1)


def next_daily(hour: int, minute: int, now: datetime | None = None) -> datetime:
    """The next `hour`:`minute` UTC."""
    now = (now or timezone.now()).astimezone(UTC)
    at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return at if at > now else at + timedelta(days=1)


def ensure(name: str, func: str, schedule_type: str, next_run: datetime, *, using: str = DEFAULT_DB_ALIAS,
           **options: object) -> bool:
    """Make the schedule `name` if it does not exist, in the scheduled jobs' cluster; True when it was made.

    A schedule left from a release before the cluster existed is moved to it.
    """
    from django_q.models import Schedule

    schedule, made = Schedule.objects.using(using).get_or_create(
        name=name,
        defaults={"func": func, "schedule_type": schedule_type, "repeats": -1, "next_run": next_run,
                  "cluster": settings.SCHEDULED_CLUSTER, **options},
    )
    if not made and schedule.cluster != settings.SCHEDULED_CLUSTER:
        Schedule.objects.using(using).filter(pk=schedule.pk).update(cluster=settings.SCHEDULED_CLUSTER)
    return made
