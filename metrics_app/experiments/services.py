"""Writes to experiments: made once with fixed arms and start, then stopped; only the description changes."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from metrics_app.models import Business, Experiment

# A start this far before now is still "now" (clocks differ); an earlier one would let a new experiment take in
# data already seen, which is how a window gets slid until it looks significant.
START_TOLERANCE = timedelta(minutes=5)
MAX_LEAD = timedelta(days=366)
# Fields an experiment has from the start and keeps.
FIXED_FIELDS = ("dimension", "variant_a", "variant_b", "split_a", "primary_metric", "minimum_lift", "started_at")


def _name_taken() -> ValidationError:
    return ValidationError({"name": ["this business already has an experiment of that name"]})


def check_new_experiment(business: Business, *, created_by: Any = None, now: datetime | None = None,
                         **fields: Any) -> Experiment:
    """The experiment `create_experiment` would make, checked and unsaved; ValidationError names each bad field.

    Forms call it to show the refusals on their fields before anything is written.
    """
    now = now or timezone.now()
    fields.setdefault("started_at", now)
    if fields["started_at"] < now - START_TOLERANCE:
        raise ValidationError({"started_at": ["may not be in the past: an experiment counts only what comes after "
                                              "it was made"]})
    if fields["started_at"] > now + MAX_LEAD:
        raise ValidationError({"started_at": [f"may be at most {MAX_LEAD.days} days ahead"]})
    user = created_by if getattr(created_by, "pk", None) and not hasattr(created_by, "key") else None
    experiment = Experiment(business=business, created_at=now, created_by=user, **fields)
    experiment.full_clean(validate_unique=False, validate_constraints=False)
    _check_arms(experiment)
    if Experiment.objects.filter(business=business, name=experiment.name).exists():
        raise _name_taken()
    return experiment


def create_experiment(business: Business, *, created_by: Any = None, now: datetime | None = None,
                      **fields: Any) -> Experiment:
    """Make an experiment of `business`; ValidationError names each bad field (a start in the past is one)."""
    experiment = check_new_experiment(business, created_by=created_by, now=now, **fields)
    try:
        with transaction.atomic():
            experiment.save(force_insert=True)
    except IntegrityError:  # made by someone else between the check and the insert
        raise _name_taken() from None
    return experiment


def _check_arms(experiment: Experiment) -> None:
    problems: dict[str, list[str]] = {}
    if experiment.variant_a == experiment.variant_b:
        problems["variant_b"] = ["must differ from variant_a"]
    if not 0 < experiment.split_a < 1:
        problems["split_a"] = ["must be strictly between 0 and 1"]
    if not 0 < experiment.minimum_lift < 1:
        problems["minimum_lift"] = ["must be strictly between 0 and 1 (rate points: 0.05 is 5 points)"]
    if problems:
        raise ValidationError(problems)


def stop_experiment(experiment: Experiment, *, now: datetime | None = None) -> Experiment:
    """Stop a running experiment now; stopping a stopped one changes nothing."""
    now = now or timezone.now()
    if experiment.ended_at is None:
        ended = max(now, experiment.started_at + timedelta(seconds=1))
        Experiment.objects.filter(pk=experiment.pk, ended_at__isnull=True).update(ended_at=ended)
        experiment.refresh_from_db(fields=["ended_at"])
    return experiment


def describe_experiment(experiment: Experiment, description: str) -> Experiment:
    """Reword the hypothesis: the one thing about an experiment that may change after it is made."""
    experiment.description = description
    experiment.full_clean(validate_unique=False, validate_constraints=False)
    Experiment.objects.filter(pk=experiment.pk).update(description=description)
    return experiment
