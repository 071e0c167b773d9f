"""Recompute conversations, the analytics rollups and the /metrics totals from the raw events."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from tqdm import tqdm

from metrics_app import horizon
from metrics_app.folding import services as folding
from metrics_app.models import AIMetric


class Command(BaseCommand):
    help = (
        "Rebuild conversations, the 15-minute analytics rollups and the totals that /metrics reports from the "
        "stored events: after a bulk load (COPY), a restore, a repair or a change of the histogram buckets. The "
        "folder (manage.py fold_events) keeps them current on its own; ingest may go on during a rebuild."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quiet-progress", action="store_true", help="No progress bar.")
        parser.add_argument(
            "--if-needed", action="store_true",
            help="Only when a migration asked for it (start.sh runs this after migrating).",
        )

    def handle(self, *args: Any, quiet_progress: bool, if_needed: bool, **options: Any) -> None:
        if if_needed and not folding.rebuild_needed():
            return
        since = horizon.pruned_before()
        events = AIMetric.objects.all() if since is None else AIMetric.objects.filter(timestamp__gte=since)
        total = events.count()
        with tqdm(total=total, unit="event", disable=quiet_progress or total == 0) as bar:
            made, counts = folding.rebuild(progress=bar.update)
        self.stdout.write(
            f"Rebuilt {made} conversations, {counts['event_rollups']} event and {counts['conversation_rollups']} "
            f"conversation rollup rows, {counts['latency_sketches']} latency sketches and {counts['totals']} "
            f"/metrics totals rows from {total} events."
        )
        if counts.get("kept_before") is not None:
            self.stdout.write(
                f"Raw events before {counts['kept_before']:%Y-%m-%d %H:%M} UTC were pruned (retention): the rollups "
                "and conversations before then were kept as they were, and the /metrics totals start from the "
                "pruned events' totals."
            )
        seconds = counts.get("seconds") or {}
        if seconds:
            self.stdout.write("Time: " + ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items()))
