"""Measure each embedding method on the written customer questions (top-k hit rate and speed)."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from documents_app.pipeline import stages as pipeline
from documents_app.search.embeddings import METHODS, MethodUnavailable, get_method
from documents_app.search.knowledge_base import parse_knowledge_base

QUESTIONS = Path(__file__).resolve().parents[2] / "evaluation" / "techconsult_questions.json"


def evaluate(method: str, raw_dir: Path, questions: dict[str, Any], k: int = 3) -> dict[str, Any]:
    """Build a knowledge base with `method` from `raw_dir` in a scratch folder and ask every question."""
    process, update = pipeline.load_params()
    process = replace(process, embedding_method=method)
    started = time.perf_counter()
    get_method(method).embed(["warm up"])  # loading a model is start-up cost, measured apart from building
    load_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        processed = pipeline.process_documents(
            raw_dir, root / "emb.json", root / "m1.json", process, cache_dir=root / "cache"
        )
        build_seconds = time.perf_counter() - started
        pipeline.update_knowledge_base(root / "emb.json", root / "kb.json", root / "m2.json", update)
        kb = parse_knowledge_base(root / "kb.json")
    business = questions["business_id"]
    hits, misses, latencies = 0, [], []
    for item in questions["questions"]:
        started = time.perf_counter()
        results = kb.search(business, item["q"], k)
        latencies.append(time.perf_counter() - started)
        found = {(r["source"].rsplit("/", 1)[-1], r["section"]) for r in results}
        found |= {(a["source"].rsplit("/", 1)[-1], a["section"]) for r in results for a in r["also_in"]}
        if found & {tuple(answer) for answer in item["answers"]}:
            hits += 1
        else:
            misses.append(item["q"])
    return {
        "method": method,
        "questions": len(questions["questions"]),
        "hits": hits,
        "hit_rate": round(hits / len(questions["questions"]), 3),
        "chunks": processed["chunks"],
        "load_seconds": round(load_seconds, 2),
        "build_seconds": round(build_seconds, 2),
        "chunks_per_second": round(processed["chunks"] / build_seconds, 1) if build_seconds else 0,
        "query_ms": round(1000 * sum(latencies) / len(latencies), 2),
        "misses": misses,
    }


class Command(BaseCommand):
    # Works on files only: URL and database checks would only slow `dvc repro` down.
    requires_system_checks: list[str] = []
    help = (
        "Ask the written TechConsult Pro customer questions to a knowledge base built with each method "
        "and print the top-k hit rate, build speed and query time."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--method", action="append", choices=sorted(METHODS), help="repeatable; default all")
        parser.add_argument("--raw-dir", type=Path, default=pipeline.RAW_DIR)
        parser.add_argument("--questions", type=Path, default=QUESTIONS)
        parser.add_argument("-k", type=int, default=3)
        parser.add_argument("--json", action="store_true", help="print the results as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        questions = json.loads(options["questions"].read_text(encoding="utf-8"))
        rows = []
        named = options["method"]
        for method in named or sorted(METHODS):
            try:
                rows.append(evaluate(method, options["raw_dir"], questions, options["k"]))
            except MethodUnavailable as exc:
                if named:  # asked for by name: its absence is the answer
                    raise CommandError(str(exc)) from None
                # "every method" means every installed one; say which optional one was left out and why.
                self.stderr.write(f"{method}: not measured, its optional packages are not installed ({exc})")
        if not rows:
            raise CommandError("no embedding method is installed")
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=1))
            return
        for row in rows:
            self.stdout.write(
                f"{row['method']}: top-{options['k']} hit rate {row['hits']}/{row['questions']} "
                f"({row['hit_rate']:.0%}), loaded in {row['load_seconds']} s, "
                f"{row['chunks']} chunks built in {row['build_seconds']} s "
                f"({row['chunks_per_second']} chunks/s), {row['query_ms']} ms per query"
            )
            for missed in row["misses"]:
                self.stdout.write(f"    missed: {missed}")
