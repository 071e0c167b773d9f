"""MLflow is optional: without MLFLOW_TRACKING_URI nothing changes, and a missing client is said, never a crash."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django_q.models import Schedule

from metrics_app.tracking import checks, client, schedule
from metrics_app.tracking.live import log_finished_days


def test_without_a_tracking_uri_the_command_says_so_and_succeeds(settings) -> None:
    settings.MLFLOW_TRACKING_URI = ""
    out = StringIO()
    call_command("log_mlflow_metrics", stdout=out)
    assert "MLflow is not configured (set MLFLOW_TRACKING_URI); nothing logged" in out.getvalue()
    assert log_finished_days().startswith("MLflow is not configured")


def test_a_tracking_uri_without_the_client_installed_is_a_warning_and_a_clear_command_error(
    settings, monkeypatch, db
) -> None:
    settings.MLFLOW_TRACKING_URI = "http://127.0.0.1:9"
    monkeypatch.setattr(client, "installed", lambda: False)
    monkeypatch.setattr(checks, "installed", lambda: False)
    (warning,) = checks.check_mlflow_client(None)
    assert warning.id == "metrics_app.W020" and "requirements-mlflow.txt" in warning.hint
    with pytest.raises(CommandError, match="the MLflow client is not installed: .venv/bin/pip install -r "
                                           "requirements-mlflow.txt"):
        call_command("log_mlflow_metrics", stdout=StringIO(), stderr=StringIO())


def test_the_check_is_silent_when_mlflow_is_not_configured(settings) -> None:
    settings.MLFLOW_TRACKING_URI = ""
    assert checks.check_mlflow_client(None) == []


@pytest.mark.django_db
def test_the_hourly_schedule_is_made_once_and_only_when_mlflow_is_configured(settings) -> None:
    settings.MLFLOW_TRACKING_URI = ""
    assert schedule.ensure_schedule() is False
    assert not Schedule.objects.filter(name=schedule.SCHEDULE_NAME).exists()

    settings.MLFLOW_TRACKING_URI = "http://127.0.0.1:5001"
    assert schedule.ensure_schedule() is True
    assert schedule.ensure_schedule() is False
    (made,) = Schedule.objects.filter(name=schedule.SCHEDULE_NAME)
    assert (made.func, made.schedule_type, made.repeats) == (schedule.TASK, Schedule.HOURLY, -1)
    assert made.next_run > made.next_run.now(made.next_run.tzinfo)


@pytest.mark.django_db
def test_migrate_makes_the_schedule_when_mlflow_is_configured(settings) -> None:
    settings.MLFLOW_TRACKING_URI = "http://127.0.0.1:5001"
    call_command("migrate", verbosity=0)
    assert Schedule.objects.filter(name=schedule.SCHEDULE_NAME, func=schedule.TASK).count() == 1


def test_the_scheduled_task_is_the_function_the_worker_can_import() -> None:
    from importlib import import_module

    module, name = schedule.TASK.rsplit(".", 1)
    assert getattr(import_module(module), name) is log_finished_days
