"""DVC stage `update_knowledge_base`: chunks with embeddings -> the versioned knowledge base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from documents_app.pipeline import stages as pipeline


class Command(BaseCommand):
    # Works on files only: URL and database checks would only slow `dvc repro` down.
    requires_system_checks: list[str] = []
    help = (
        "Merge near-duplicate chunks, cap each topic, and write data/knowledge_base/current_kb.json "
        "with its version hash, plus metrics/knowledge_base_update.json "
        "(the time it took: metrics/last_run/knowledge_base_update.json)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--params", type=Path, default=pipeline.PARAMS_PATH)
        parser.add_argument("--input", type=Path, default=pipeline.EMBEDDINGS_PATH)
        parser.add_argument("--output", type=Path, default=pipeline.KB_PATH)
        parser.add_argument("--metrics", type=Path, default=pipeline.KB_METRICS_PATH)

    def handle(self, *args: Any, **options: Any) -> None:
        pipeline.watch_run()
        try:
            params = pipeline.load_params(options["params"])[1]
            metrics = pipeline.update_knowledge_base(options["input"], options["output"], options["metrics"], params)
        except pipeline.PipelineError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"knowledge base {metrics['version']}: {metrics['chunks']} chunks in {metrics['topics']} topics "
            f"for {metrics['businesses']} businesses ({metrics['duplicates_merged']} near-duplicates merged, "
            f"{metrics['chunks_dropped_by_topic_cap']} dropped by the topic cap) in {metrics['update_time_seconds']} s"
        )
