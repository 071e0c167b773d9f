"""Recompute conversations, the analytics rollups and the /metrics totals from the raw events."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from tqdm import tqdm

from metrics_app.analytics import rollups, totals
from metrics_app.conversations import services as conversations
from metrics_app.models import AIMetric


class Command(BaseCommand):
    help = (
        "Rebuild conversations, the 15-minute analytics rollups and the totals that /metrics reports from the "
        "stored events: after a bulk load (COPY), a restore, reprice_events, or a change of the histogram "
        "buckets. They are kept current as events arrive."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quiet-progress", action="store_true", help="No progress bar.")

    def handle(self, *args: Any, quiet_progress: bool, **options: Any) -> None:
        made = conversations.rebuild_conversations()
        total = AIMetric.objects.count()
        with tqdm(total=total, unit="event", disable=quiet_progress or total == 0) as bar:
            counts = rollups.rebuild(progress=bar.update)
        with tqdm(total=total, unit="event", desc="totals", disable=quiet_progress or total == 0) as bar:
            totals_rows = totals.rebuild(progress=bar.update)
        self.stdout.write(
            f"Rebuilt {made} conversations, rollup rows ({counts['event_rollups']} event, "
            f"{counts['latency_rollups']} latency, {counts['conversation_rollups']} conversation) and "
            f"{totals_rows} /metrics totals rows from {total} events."
        )
