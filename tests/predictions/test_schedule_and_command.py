"""The worker's daily retraining schedule, and `manage.py train_booking_models`."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from importlib import import_module

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django_q.models import Schedule

from metrics_app.models import BookingModel, Business
from metrics_app.predictions import schedule, services
from tests.predictions.helpers import chat_events, store

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.django_db
def test_migrate_makes_the_daily_schedule_once() -> None:
    call_command("migrate", verbosity=0)
    call_command("migrate", verbosity=0)
    (made,) = Schedule.objects.filter(name=schedule.SCHEDULE_NAME)
    assert (made.func, made.schedule_type, made.repeats) == (schedule.TASK, Schedule.DAILY, -1)


def test_the_scheduled_task_is_the_function_the_worker_can_import() -> None:
    module, name = schedule.TASK.rsplit(".", 1)
    assert getattr(import_module(module), name) is services.scheduled_training


def test_the_next_run_is_the_next_quarter_past_three_utc() -> None:
    assert schedule.next_run(datetime(2026, 6, 1, 2, 0, tzinfo=UTC)) == datetime(2026, 6, 1, 3, 15, tzinfo=UTC)
    assert schedule.next_run(datetime(2026, 6, 1, 3, 15, tzinfo=UTC)) == datetime(2026, 6, 2, 3, 15, tzinfo=UTC)


def run(*args: str) -> str:
    out = io.StringIO()
    with time_machine.travel(NOW, tick=False):
        call_command("train_booking_models", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_the_command_prints_each_business_outcome_and_a_summary(business) -> None:
    store(chat_events(business.id, 1000, seed=9, end=NOW - timedelta(hours=2)))
    quiet = Business.objects.create(id="quiet-clinic")
    store(chat_events(quiet.id, 50, seed=10, end=NOW))
    lines = run().splitlines()
    usable = BookingModel.objects.get(business=business)
    assert lines[0] == (
        f"acme-dental: predictions on; held-out Brier {usable.metrics['brier']:.4f} vs base rate "
        f"{usable.metrics['base_brier']:.4f} (base rate {usable.metrics['base_rate']:.1%}, "
        f"{usable.metrics['held_out']['conversations']} held-out conversations)"
    )
    none = BookingModel.objects.get(business=quiet)
    assert lines[1] == f"quiet-clinic: no predictions; {none.reason}"
    assert lines[2] == "Trained 2 business(es): 1 with predictions, 1 without."


def test_the_daily_task_trains_the_businesses_with_recent_conversations(business) -> None:
    Business.objects.create(id="silent-clinic")  # no conversation: nothing to train
    store(chat_events(business.id, 30, seed=11, end=NOW - timedelta(hours=2)))
    with time_machine.travel(NOW, tick=False):
        assert services.scheduled_training() == "trained 1 businesses: 0 usable, 1 without predictions"
    assert list(BookingModel.objects.values_list("business_id", flat=True)) == ["acme-dental"]


def test_the_command_trains_only_the_business_asked_for(business) -> None:
    Business.objects.create(id="other-clinic")
    output = run("--business", "other-clinic")
    assert output.startswith("other-clinic: no predictions; Only 0 ended conversations")
    assert list(BookingModel.objects.values_list("business_id", flat=True)) == ["other-clinic"]


def test_an_unknown_business_is_a_clear_failure(business) -> None:
    with pytest.raises(CommandError, match="no such business: nobody-here"):
        run("--business", "acme-dental", "--business", "nobody-here")
    assert not BookingModel.objects.exists()
