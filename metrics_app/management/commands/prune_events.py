"""Remove the raw events older than MLOPS_RAW_RETENTION_DAYS, keeping the rollups, conversations and totals."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from tqdm import tqdm

from metrics_app import horizon
from metrics_app.retention import services as retention


class Command(BaseCommand):
    help = (
        "Remove the raw events before the start of the UTC day MLOPS_RAW_RETENTION_DAYS days ago (the worker "
        "does it daily). The summaries, funnels, series, breakdowns, percentiles, conversations and /metrics "
        "totals of the pruned days stay as they were. On PostgreSQL, whole-day partitions are dropped."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Say what would go; remove nothing.")
        parser.add_argument("--quiet-progress", action="store_true", help="No progress bar.")

    def handle(self, *args: Any, dry_run: bool, quiet_progress: bool, **options: Any) -> None:
        if horizon.retention_days() is None:
            raise CommandError(
                "raw retention is off: set MLOPS_RAW_RETENTION_DAYS to the days of raw events to keep "
                "(the ingest then refuses older events, so a pruned event can never be stored twice)"
            )
        try:
            if dry_run:
                self.stdout.write(retention.plan().summary(done=False))
                return
            found = retention.plan()
            with tqdm(total=found.events, unit="event", disable=quiet_progress or found.events == 0) as bar:
                done = retention.prune(progress=bar.update)
        except DatabaseError as exc:
            raise CommandError(f"pruning stopped, nothing of the unfinished step was removed: {exc}") from exc
        self.stdout.write(done.summary(done=True))
