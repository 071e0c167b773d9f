"""Recompute conversations and the analytics rollups from the raw events."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from tqdm import tqdm

from metrics_app.folding import services as folding
from metrics_app.models import AIMetric


class Command(BaseCommand):
    help = (
        "Rebuild conversations and the 15-minute analytics rollups from the stored events: after a bulk load "
        "(COPY), a restore, or a repair. The folder (manage.py fold_events) keeps them current on its own; ingest "
        "may go on during a rebuild."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quiet-progress", action="store_true", help="No progress bar.")

    def handle(self, *args: Any, quiet_progress: bool, **options: Any) -> None:
        total = AIMetric.objects.count()
        with tqdm(total=total, unit="event", disable=quiet_progress or total == 0) as bar:
            made, counts = folding.rebuild(progress=bar.update)
        self.stdout.write(
            f"Rebuilt {made} conversations and {counts['event_rollups']} event, {counts['latency_rollups']} "
            f"latency and {counts['conversation_rollups']} conversation rollup rows from {total} events."
        )
