"""The folder: folds in id order, all or nothing per batch, resumes after kill -9, one at a time by its lease."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import Max, Sum
from django.test import override_settings
from django.utils import timezone

from metrics_app.analytics import rollups
from metrics_app.folding import services as folding
from metrics_app.models import (
    ALL_BUSINESSES,
    FOLDER_NAME,
    AIMetric,
    Conversation,
    EventRollup,
    FolderState,
)
from tests.analytics.helpers import make_events, rollup_tables, store
from tests.helpers import database_url_for_subprocess, fold_all, start_folder, stop_folder


def derived_tables() -> tuple[list, ...]:
    """Everything the folder writes, in a comparable form: the rollups and the conversations."""
    conversations = sorted(Conversation.objects.values_list(
        "business_id", "conversation_id", "first_at", "last_at", "turns",
        "appointment_requested", "appointment_booked", "human_handoff_requested",
    ))
    return (*rollup_tables(), conversations)


def rebuilt_tables() -> tuple[list, ...]:
    call_command("rebuild_analytics", "--quiet-progress", stdout=StringIO())
    return derived_tables()


def folded_through() -> int:
    state = FolderState.objects.filter(name=FOLDER_NAME).first()
    return state.folded_through if state else 0


def folded_events() -> int:
    return EventRollup.objects.filter(business_id=ALL_BUSINESSES, dimension="").aggregate(n=Sum("events"))["n"] or 0


def test_the_folder_folds_in_id_order_and_a_failed_batch_leaves_nothing_half_done(db, monkeypatch):
    store(make_events(conversations=30))
    ids = list(AIMetric.objects.order_by("id").values_list("id", flat=True))
    assert folding.fold_batch(limit=10) == 10
    assert folded_through() == ids[9]
    assert folded_events() == 10
    assert EventRollup.objects.exists() and Conversation.objects.exists()

    before = derived_tables()

    def broken(events):
        raise RuntimeError("disk full")

    monkeypatch.setattr(rollups, "add_events", broken)
    with pytest.raises(RuntimeError):
        folding.fold_batch(limit=10)
    assert folded_through() == ids[9]
    assert derived_tables() == before  # the conversations of the failed batch were rolled back too

    monkeypatch.undo()
    assert fold_all() == len(ids) - 10
    assert folded_through() == ids[-1]
    folded = derived_tables()
    assert rebuilt_tables() == folded


def test_the_lease_admits_one_folder_until_it_runs_out(db):
    assert folding.take_lease("folder-a", seconds=30)
    assert not folding.take_lease("folder-b", seconds=30)
    assert folding.take_lease("folder-a", seconds=30)  # renewing is fine
    FolderState.objects.filter(name=FOLDER_NAME).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert folding.take_lease("folder-b", seconds=30)
    store(make_events(conversations=2))
    with pytest.raises(folding.LeaseLost):
        folding.fold_batch(holder="folder-a")
    assert folded_through() == 0
    assert folding.fold_batch(holder="folder-b") > 0
    folding.give_up_lease("folder-b")
    assert folding.take_lease("folder-c", seconds=30)


@override_settings(MLOPS_FOLDER_MAX_BACKLOG=5)
def test_health_says_degraded_while_the_backlog_is_past_its_bound(api, db):
    store(make_events(conversations=3))
    pending = AIMetric.objects.count()
    assert pending > 5
    body = api.get("/health").json()
    assert body["status"] == "degraded"
    assert body["folder"]["backlog_events"] == pending
    assert body["folder"]["running"] is False
    metrics = api.get("/metrics").content.decode()
    assert f"\nmlops_folder_backlog_events {pending}\n" in metrics
    assert "\nmlops_folder_running 0\n" in metrics
    fold_all()
    metrics = api.get("/metrics").content.decode()
    assert "\nmlops_folder_backlog_events 0\n" in metrics
    assert f"\nmlops_folder_events_folded_total {pending}\n" in metrics
    body = api.get("/health").json()
    assert body["status"] == "healthy"
    assert body["folder"] == {"status": "ok", "running": False, "backlog_events": 0, "lag_seconds": 0.0,
                              "folded_through": AIMetric.objects.aggregate(m=Max("id"))["m"], "errors": 0}


# --- Real folder processes.


def folder_env(**extra: str) -> dict[str, str]:
    from tests.helpers import ROOT

    return {**os.environ, "DJANGO_SETTINGS_MODULE": "mlops_site.settings", "DATABASE_URL": database_url_for_subprocess(),
            "MLOPS_ENV": "development", "PYTHONPATH": str(ROOT), **extra}


def wait_for(condition, timeout: float = 60.0, what: str = "the folder") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} did not get there within {timeout} s")


def holder_pid() -> int | None:
    state = FolderState.objects.filter(name=FOLDER_NAME).first()
    if state is None or not state.holder or state.lease_until is None or state.lease_until <= timezone.now():
        return None
    return int(state.holder.split(":")[1])


def test_a_folder_killed_mid_backlog_resumes_where_its_last_commit_left_off(transactional_db, tmp_path):
    store(make_events(seed=3, conversations=400))
    total = AIMetric.objects.count()
    highest = AIMetric.objects.aggregate(m=Max("id"))["m"]
    env = folder_env(MLOPS_FOLDER_BATCH="25", MLOPS_FOLDER_LEASE_SECONDS="2")
    first = start_folder(tmp_path, env)
    try:
        wait_for(lambda: folded_through() > 0)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        stop_folder(first)
    stopped_at = folded_through()
    assert 0 < stopped_at < highest, "the folder finished before it could be killed"
    # What it committed is whole: the rollups hold exactly the events up to folded_through.
    assert folded_events() == AIMetric.objects.filter(id__lte=stopped_at).count()

    second = start_folder(tmp_path, env)  # waits out the dead folder's lease, then goes on
    try:
        wait_for(lambda: folded_through() == highest)
    finally:
        stop_folder(second)
    assert folded_events() == total
    folded = derived_tables()
    assert rebuilt_tables() == folded


def test_of_two_folders_one_folds_and_the_other_takes_over_when_it_dies(transactional_db, tmp_path):
    env = folder_env(MLOPS_FOLDER_BATCH="25", MLOPS_FOLDER_LEASE_SECONDS="2")
    folders = [start_folder(tmp_path, env), start_folder(tmp_path, env)]
    try:
        store(make_events(seed=5, conversations=150))
        wait_for(lambda: holder_pid() is not None)
        holders = set()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            holders.add(holder_pid())
            time.sleep(0.05)
        holders.discard(None)
        assert len(holders) == 1, holders
        (first,) = holders
        assert first in {f.pid for f in folders}
        wait_for(lambda: folded_through() == AIMetric.objects.aggregate(m=Max("id"))["m"])

        os.killpg(first, signal.SIGKILL)
        store(make_events(seed=6, conversations=150))
        highest = AIMetric.objects.aggregate(m=Max("id"))["m"]
        wait_for(lambda: folded_through() == highest, what="the second folder")
        survivor = next(f.pid for f in folders if f.pid != first)
        assert holder_pid() == survivor
    finally:
        for process in folders:
            stop_folder(process)
    assert folded_events() == AIMetric.objects.count()
    folded = derived_tables()
    assert rebuilt_tables() == folded


def test_analytics_answer_503_until_an_upgrades_rebuild_has_run(api, db, make_key):
    from tests.helpers import assert_error_shape

    _, raw = make_key(None, can_ingest=False, can_read=True)
    agency = {"Authorization": f"Bearer {raw}"}
    store(make_events(conversations=3))
    folding.take_lease("nobody", seconds=1)  # makes the folder's row
    FolderState.objects.update(rebuild_needed=True)
    response = api.get("/api/analytics/summary", headers=agency)
    assert_error_shape(response, 503)
    assert response["Retry-After"]
    call_command("rebuild_analytics", "--if-needed", "--quiet-progress", stdout=StringIO())
    summary = api.get("/api/analytics/summary", {"start": "2026-03-01T00:00:00Z", "end": "2026-03-21T00:00:00Z"},
                      headers=agency).json()["summary"]
    assert summary["events"] == AIMetric.objects.count()
