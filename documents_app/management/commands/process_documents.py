"""DVC stage `process_documents`: raw business documents -> chunks with embeddings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from documents_app.pipeline import stages as pipeline
from documents_app.search.embeddings import MethodUnavailable


class Command(BaseCommand):
    # Works on files only: URL and database checks would only slow `dvc repro` down.
    requires_system_checks: list[str] = []
    help = (
        "Read, clean, chunk and embed every document under the raw folder (one folder per business id). "
        "Writes data/processed/document_embeddings.json and metrics/document_processing.json "
        "(times and cache hits of this run: metrics/last_run/document_processing.json). "
        "Unchanged documents come from the content-hash cache."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--params", type=Path, default=pipeline.PARAMS_PATH)
        parser.add_argument("--raw-dir", type=Path, default=pipeline.RAW_DIR)
        parser.add_argument("--output", type=Path, default=pipeline.EMBEDDINGS_PATH)
        parser.add_argument("--metrics", type=Path, default=pipeline.PROCESSING_METRICS_PATH)
        parser.add_argument("--cache-dir", type=Path, default=pipeline.CACHE_DIR)

    def handle(self, *args: Any, **options: Any) -> None:
        def progress(paths, total):  # type: ignore[no-untyped-def]
            return tqdm(paths, total=total, unit="doc", file=sys.stderr, disable=None, desc="documents")

        pipeline.watch_run()
        try:
            params = pipeline.load_params(options["params"])[0]
            metrics = pipeline.process_documents(
                options["raw_dir"], options["output"], options["metrics"], params, options["cache_dir"], progress
            )
        except (pipeline.PipelineError, MethodUnavailable) as exc:
            raise CommandError(str(exc)) from None
        skipped = ", ".join(f"{n} {reason}" for reason, n in metrics["skipped_by_reason"].items()) or "none"
        self.stdout.write(
            f"{metrics['documents_processed']}/{metrics['documents_seen']} documents processed "
            f"({metrics['documents_parsed']} parsed, {metrics['documents_from_cache']} from cache; "
            f"skipped: {skipped}), "
            f"{metrics['chunks']} chunks with {metrics['embedding_method']} "
            f"in {metrics['processing_time_seconds']} s"
        )
