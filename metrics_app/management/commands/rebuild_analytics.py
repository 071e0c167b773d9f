"""Recompute conversations and the analytics rollups from the raw events."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from tqdm import tqdm

from metrics_app.analytics import rollups
from metrics_app.conversations import services as conversations
from metrics_app.models import AIMetric


class Command(BaseCommand):
    help = (
        "Rebuild conversations and the 15-minute analytics rollups from the stored events: after a bulk load "
        "(COPY), a restore, or reprice_events. Ingest keeps them current on its own."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quiet-progress", action="store_true", help="No progress bar.")

    def handle(self, *args: Any, quiet_progress: bool, **options: Any) -> None:
        made = conversations.rebuild_conversations()
        total = AIMetric.objects.count()
        with tqdm(total=total, unit="event", disable=quiet_progress or total == 0) as bar:
            counts = rollups.rebuild(progress=bar.update)
        self.stdout.write(
            f"Rebuilt {made} conversations and {counts['event_rollups']} event, {counts['latency_rollups']} "
            f"latency and {counts['conversation_rollups']} conversation rollup rows from {total} events."
        )
