"""Run the folder: fold stored events into conversations, rollups and the Prometheus totals."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from metrics_app.folding import services as folding


class Command(BaseCommand):
    help = (
        "Fold stored events into conversations, the analytics rollups and the Prometheus totals, batch by batch, "
        "until stopped (SIGTERM or Ctrl-C). One folder works at a time per database, by a lease; a second one "
        "waits and takes over when the first stops. start.sh runs it beside the web server."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Fold everything stored so far, then exit.")
        parser.add_argument("--idle", type=float, default=0.2, help="Seconds between checks when idle (0.2).")

    def handle(self, *args: Any, once: bool, idle: float, **options: Any) -> None:
        if once:
            folded = folding.fold_pending()
            self.stdout.write(f"Folded {folded} events.")
            return
        stopping = threading.Event()

        def stop(signum: int, frame: FrameType | None) -> None:
            stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        holder = folding.new_holder()
        self.stdout.write(f"Folder {holder} started.")
        self.stdout.flush()
        folding.run(stopping.is_set, idle_seconds=max(0.01, idle), holder=holder)
        self.stdout.write(f"Folder {holder} stopped.")
