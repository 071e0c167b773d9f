"""Recompute the analytics cost of stored events after a model price was added or corrected."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime
from tqdm import tqdm

from metrics_app import horizon
from metrics_app.models import AIMetric, Business, ModelPrice
from metrics_app.pricing import services as pricing


class Command(BaseCommand):
    help = (
        "Reprice stored events with the current model price table: the events of one model (a name or a "
        "glob such as 'gemini-1.5-flash*'), of one business, from a date on, or all of them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", help="Model name or glob (case-insensitive); default every model.")
        parser.add_argument("--business", help="Only this business id.")
        parser.add_argument("--since", help="Only events at or after this ISO 8601 time (UTC when no zone).")
        parser.add_argument("--quiet-progress", action="store_true", help="No progress bar.")

    def handle(self, *args: Any, model: str | None, business: str | None, since: str | None,
               quiet_progress: bool, **options: Any) -> None:
        events = AIMetric.objects.all()
        if model:
            if len(model) > 100:
                raise CommandError("--model must be at most 100 characters")
            if any(ch in model for ch in "*?["):
                events = events.filter(model_name__iregex=_glob_to_regex(model))
            else:
                events = events.filter(model_name__iexact=model)
        if business:
            if not Business.objects.filter(pk=business).exists():
                raise CommandError(f"no business {business!r}")
            events = events.filter(business_id=business)
        if since:
            moment = _parse_since(since)
            events = events.filter(timestamp__gte=moment)
        table = pricing.table_from(ModelPrice.objects.all())
        total = events.count()
        # Chunk by chunk, not one transaction: a rerun after an interruption finishes the job.
        with tqdm(total=total, unit="event", disable=quiet_progress or total == 0) as bar:
            examined, changed = pricing.reprice(events, table, progress=bar.update)
        self.stdout.write(f"Repriced {changed} of {examined} events with {len(table.prices)} price rows.")
        pruned_before = horizon.pruned_before()
        if pruned_before is not None and (not since or _parse_since(since) < pruned_before):
            self.stdout.write(
                f"Raw events before {pruned_before:%Y-%m-%d %H:%M} UTC were pruned (retention): their costs in the "
                "rollups stay as they were priced."
            )


def _parse_since(value: str) -> datetime:
    from datetime import UTC

    moment = parse_datetime(value) if "T" in value or " " in value else parse_datetime(value + "T00:00:00")
    if moment is None:
        raise CommandError(f"--since must be an ISO 8601 date or time, got {value!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _glob_to_regex(pattern: str) -> str:
    import fnmatch

    # fnmatch gives a Python regex ending in \Z; databases want $.
    return fnmatch.translate(pattern).replace("(?s:", "(").replace(r"\Z", "$")
