"""Two instances of the service on one PostgreSQL, each as start.sh runs it: gunicorn, the folder and the worker.

Events sent to both are stored once (a retry may reach the other instance), one key's rate limit holds across
both, one folder folds while the other waits, a real Prometheus scraping both instances stores the counts sent,
and queued tasks and a scheduled job run once, the job in its own worker while the pipeline's workers are busy.
One test, because starting two instances (eight processes) is most of its time.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Sum
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import Schedule, Task
from django_q.scheduler import scheduler
from django_q.tasks import async_task

from metrics_app.models import AIMetric, Business, EventRollup, FolderState
from tests.helpers import (
    LiveService,
    on_postgres,
    require,
    start_service,
    start_worker,
    stop_service,
    stop_worker,
)
from tests.monitoring.helpers import have_prometheus, start_prometheus, wait_for

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]

LIMIT = 12  # the rate-limited key's requests per minute
BUSY_SECONDS = 4  # how long the pipeline workers' tasks keep them busy


@pytest.fixture
def instances(transactional_db, tmp_path) -> Iterator[list[LiveService]]:
    if not on_postgres():
        pytest.skip("several instances share a PostgreSQL server; the run is on SQLite")
    # Both clocks stand at one moment of one minute, so the rate limit's minute is the same for every request.
    moment = datetime.now(UTC).replace(second=10, microsecond=0)
    started: list[LiveService] = []
    workers = []
    try:
        for n in range(2):
            directory = tmp_path / f"instance-{n}"
            directory.mkdir()
            service = start_service(directory, workers=2, folder=True, frozen_at=moment)
            started.append(service)
            workers.append(start_worker(directory, service.env))
            workers.append(start_worker(directory, service.env, cluster=settings.SCHEDULED_CLUSTER))
        yield started
    finally:
        for worker in workers:
            stop_worker(worker)
        for service in started:
            stop_service(service)


def events(tag: str, count: int) -> list[dict[str, Any]]:
    return [{"business_id": ["clinic-a", "clinic-b"][n % 2], "event_id": str(uuid.uuid4()),
             "conversation_id": f"{tag}-{n % 5}", "response_time_ms": 300 + 11 * n, "tokens_used": 50 + n,
             "model_name": "gpt-4o-mini", "intent_detected": "booking", "appointment_booked": n % 7 == 0}
            for n in range(count)]


def test_two_instances_store_once_share_the_limit_fold_once_run_each_job_once_and_prometheus_counts_right(
    instances, make_key, tmp_path, monkeypatch
):
    require(have_prometheus(), "prometheus server (Debian package prometheus)")
    a, b = instances
    prometheus = start_prometheus(tmp_path, [a.url.removeprefix("http://"), b.url.removeprefix("http://")])
    try:
        wait_for(lambda: prometheus.scalar("count(up == 1)") == 2, 30, "both instances scraped")
        first, second = events("one", 60), events("two", 40)
        assert a.request("POST", "/track/batch", {"events": first})[2]["created"] == 60
        assert b.request("POST", "/track/batch", {"events": second})[2]["created"] == 40
        # A client that timed out on one instance retries on the other: nothing is stored twice.
        retried = b.request("POST", "/track/batch", {"events": first[:25]})[2]
        assert (retried["created"], retried["duplicates"]) == (0, 25)

        # One key's limit holds across both instances: LIMIT requests pass, whichever instance they reach.
        business = Business.objects.create(id="clinic-limited")
        _, raw = make_key(business, can_ingest=True, rate_limit_per_minute=LIMIT)
        answers = [
            (a if n % 2 else b).request("POST", "/track", {"response_time_ms": 500, "tokens_used": 10},
                                        {"Authorization": f"Bearer {raw}"})[0]
            for n in range(LIMIT + 8)
        ]
        assert answers.count(201) == LIMIT and answers.count(429) == 8
        stored = 60 + 40 + LIMIT
        assert AIMetric.objects.count() == stored

        # One folder folds everything once; the other waits on the lease.
        wait_for(lambda: FolderState.objects.get().folded_through == AIMetric.objects.order_by("-id")[0].id, 30,
                 "the folder to fold every event")
        holder = FolderState.objects.get().holder
        folder_logs = [(tmp_path / name).read_text() for name in _folder_logs(tmp_path)]
        assert sum(holder in log for log in folder_logs) == 1
        total = EventRollup.objects.filter(business_id="*", dimension="", value="").aggregate(n=Sum("events"))["n"]
        assert total == stored

        # Prometheus scraping both: each reports the database's totals, so max across instances is the count.
        wait_for(lambda: prometheus.scalar("sum(max without (instance) (ai_requests_total))") == stored, 30,
                 "Prometheus to store every event")
        # Once both have been scraped again, a sum counts every event twice: why the README says max, not sum.
        wait_for(lambda: prometheus.scalar("sum(ai_requests_total)") == 2 * stored, 30, "both instances' totals")
        check_tasks_and_scheduled_jobs(monkeypatch)
        assert prometheus.scalar(
            'sum(max without (instance) (ai_requests_total{business_id="clinic-a"}))') == 50
    finally:
        prometheus.stop()


def _folder_logs(tmp_path) -> list[str]:
    return sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("folder-*.log"))


def check_tasks_and_scheduled_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued tasks and a scheduled job run once; the job does not wait behind the busy pipeline workers."""
    # Both instances' pipeline workers busy, one task each (a run takes minutes; these take seconds).
    busy = [async_task("time.sleep", BUSY_SECONDS) for _ in range(2)]
    queued = [async_task("math.floor", 2.5 + n) for n in range(6)]
    Schedule.objects.create(func="math.ceil", args="7.5", schedule_type=Schedule.MINUTES, minutes=60, repeats=-1,
                            next_run=timezone.now() - timedelta(seconds=1), cluster=settings.SCHEDULED_CLUSTER)
    # Each instance's scheduled-jobs worker runs a scheduler pass now and then; two passes at the same moment, on
    # two connections, are the case that matters: the schedule's row lock lets one of them take the job.
    monkeypatch.setattr(Conf, "CLUSTER_NAME", settings.SCHEDULED_CLUSTER)
    barrier = threading.Barrier(2)

    def pass_of_the_scheduler() -> None:
        barrier.wait()
        try:
            scheduler()
        finally:
            connection.close()

    passes = [threading.Thread(target=pass_of_the_scheduler) for _ in range(2)]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join(timeout=30)
    wait_for(lambda: Task.objects.filter(func="math.ceil").exists(), 30, "the scheduled job to run")
    assert not Task.objects.filter(id__in=busy).exists()  # it ran while the pipeline workers were still busy
    assert list(Task.objects.filter(func="math.ceil").values_list("result", flat=True)) == [8]
    assert Schedule.objects.get(func="math.ceil").next_run > timezone.now() + timedelta(minutes=50)
    wait_for(lambda: Task.objects.filter(id__in=queued).count() == 6, 60, "the queued tasks to run")
    assert sorted(Task.objects.filter(id__in=queued).values_list("result", flat=True)) == [2, 3, 4, 5, 6, 7]
    assert Task.objects.filter(func="math.ceil").count() == 1
