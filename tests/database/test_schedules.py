"""Every scheduled job of the service runs in the scheduled jobs' worker, never behind a pipeline run."""

from __future__ import annotations

import pytest
from django.conf import settings
from django_q.models import Schedule

from metrics_app.digests import schedule as digests
from metrics_app.predictions import schedule as predictions
from metrics_app.tracking import schedule as tracking

pytestmark = pytest.mark.django_db

JOBS = (tracking, predictions, digests)


@pytest.fixture
def everything_on(settings) -> None:
    settings.MLFLOW_TRACKING_URI = "http://127.0.0.1:9"
    settings.MLOPS_WEEKLY_DIGEST = True


def test_each_job_is_made_once_in_the_scheduled_jobs_cluster(everything_on):
    Schedule.objects.all().delete()  # made by migrate for the jobs that are on by default
    assert [job.ensure_schedule() for job in JOBS] == [True, True, True]
    assert [job.ensure_schedule() for job in JOBS] == [False, False, False]
    made = Schedule.objects.order_by("name")
    assert sorted(made.values_list("func", flat=True)) == sorted(job.TASK for job in JOBS)
    assert set(made.values_list("cluster", flat=True)) == {settings.SCHEDULED_CLUSTER}
    # The pipeline's worker (the default cluster) takes only schedules without a cluster: none of these.
    assert not Schedule.objects.filter(cluster__isnull=True).exists()


def test_a_schedule_made_before_the_cluster_existed_moves_to_it(everything_on):
    Schedule.objects.all().delete()
    Schedule.objects.create(name=predictions.SCHEDULE_NAME, func=predictions.TASK, schedule_type=Schedule.DAILY,
                            repeats=-1, next_run=predictions.next_run())
    assert predictions.ensure_schedule() is False
    assert Schedule.objects.get(name=predictions.SCHEDULE_NAME).cluster == settings.SCHEDULED_CLUSTER
