"""Measure each embedding method on the written customer questions: top-k hit rate, refusals, speed."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from documents_app.pipeline import stages as pipeline
from documents_app.search.embeddings import METHODS, MethodUnavailable, get_method
from documents_app.search.knowledge_base import KnowledgeBase, parse_knowledge_base

EVALUATION = Path(__file__).resolve().parents[2] / "evaluation"
# The evaluation businesses' own documents (the sample business's are the pipeline's raw folder).
EVALUATION_DOCUMENTS = EVALUATION / "business_documents"


def question_files() -> list[Path]:
    return sorted(EVALUATION.glob("*_questions.json"))


def question_sets(paths: list[Path]) -> list[dict[str, Any]]:
    """The question sets of the files; a file with `asked_of` (off-topic questions) is one set per business."""
    sets: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        name = path.stem.removesuffix("_questions")
        if "asked_of" in data:
            sets += [{"name": f"{name}@{business}", "business_id": business, "questions": [],
                      "unanswered": data["unanswered"]} for business in data["asked_of"]]
        else:
            sets.append({"name": name, **data})
    return sets


def corpus(raw_dir: Path, target: Path) -> Path:
    """One raw folder with the pipeline's businesses and the evaluation businesses, each in its own folder."""
    for source in (raw_dir, EVALUATION_DOCUMENTS):
        if source.is_dir():
            for business in sorted(p for p in source.iterdir() if p.is_dir()):
                shutil.copytree(business, target / business.name, dirs_exist_ok=True)
    return target


def found_in(results: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """The (document, section) pairs of the hits, merged near-duplicates included."""
    found = {(r["source"].rsplit("/", 1)[-1], r["section"]) for r in results}
    return found | {(a["source"].rsplit("/", 1)[-1], a["section"]) for r in results for a in r["also_in"]}


def ask(kb: KnowledgeBase, question_sets: list[dict[str, Any]], k: int) -> dict[str, Any]:
    """Every question of every set: hits in the top k, and what the unanswerable ones got back."""
    hits = total = refused = unanswered = 0
    misses: list[str] = []
    answered_wrongly: list[str] = []
    latencies: list[float] = []
    per_set: dict[str, str] = {}
    for questions in question_sets:
        business = questions["business_id"]
        set_hits = 0
        for item in questions["questions"]:
            started = time.perf_counter()
            results = kb.search(business, item["q"], k)
            latencies.append(time.perf_counter() - started)
            if found_in(results) & {tuple(answer) for answer in item["answers"]}:
                set_hits += 1
            else:
                misses.append(f"{business}: {item['q']}")
        for question in questions.get("unanswered", []):
            results = kb.search(business, question, k)
            unanswered += 1
            if results:
                answered_wrongly.append(f"{business}: {question} -> {results[0]['section']} ({results[0]['score']})")
            else:
                refused += 1
        hits += set_hits
        total += len(questions["questions"])
        if questions["questions"]:
            per_set[questions.get("name", business)] = f"{set_hits}/{len(questions['questions'])}"
    return {
        "questions": total, "hits": hits, "hit_rate": round(hits / total, 3) if total else 0.0, "per_business": per_set,
        "unanswered": unanswered, "refused": refused, "query_ms": round(1000 * sum(latencies) / len(latencies), 2),
        "misses": misses, "answered_wrongly": answered_wrongly,
    }


def relevance_table(kb: KnowledgeBase, question_sets: list[dict[str, Any]], k: int) -> dict[str, list[float]]:
    """The best relevance each answerable question's answer gets, and each unanswerable question's best hit."""
    right, wrong = [], []
    for questions in question_sets:
        business = questions["business_id"]
        for item in questions["questions"]:
            answers = {tuple(answer) for answer in item["answers"]}
            scores = [r["score"] for r in kb.search(business, item["q"], k) if found_in([r]) & answers]
            right.append(max(scores, default=0.0))
        for question in questions.get("unanswered", []):
            results = kb.search(business, question, 1)
            wrong.append(results[0]["score"] if results else 0.0)
    return {"answers": sorted(right), "unanswered": sorted(wrong)}


def evaluate(method: str, raw_dir: Path, question_sets: list[dict[str, Any]], k: int = 3) -> dict[str, Any]:
    """Build a knowledge base with `method` over every business in a scratch folder and ask every question."""
    process, update = pipeline.load_params()
    process = replace(process, embedding_method=method)
    started = time.perf_counter()
    # Loading a model is start-up cost, measured apart from building and querying: a corpus's and a query's.
    warm = get_method(method)
    warm.scorer(warm.embed(["warm up"])).scores("warm up")
    load_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        raw = corpus(raw_dir, root / "raw")
        started = time.perf_counter()
        processed = pipeline.process_documents(raw, root / "emb.json", root / "m1.json", process,
                                               cache_dir=root / "cache")
        build_seconds = time.perf_counter() - started
        pipeline.update_knowledge_base(root / "emb.json", root / "kb.json", root / "m2.json", update)
        kb = parse_knowledge_base(root / "kb.json")
        asked = ask(kb, question_sets, k)
        without_floor = replace(kb, embedding={**kb.embedding, "min_score": 0})
        relevance = relevance_table(without_floor, question_sets, k)
    return {
        "method": method, **asked, "min_score": kb.embedding.get("min_score", 0), "relevance": relevance,
        "chunks": processed["chunks"], "load_seconds": round(load_seconds, 2),
        "build_seconds": round(build_seconds, 2),
        "chunks_per_second": round(processed["chunks"] / build_seconds, 1) if build_seconds else 0,
    }


class Command(BaseCommand):
    # Works on files only: URL and database checks would only slow it down.
    requires_system_checks: list[str] = []
    help = (
        "Ask the written customer questions (documents_app/evaluation/*_questions.json) of a knowledge base "
        "built with each method, and print the top-k hit rate, how many unanswerable questions got no hit, "
        "the build speed and the query time."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--method", action="append", choices=sorted(METHODS), help="repeatable; default all")
        parser.add_argument("--raw-dir", type=Path, default=pipeline.RAW_DIR)
        parser.add_argument("--questions", type=Path, action="append",
                            help="a question file; repeatable; default every documents_app/evaluation/*_questions.json")
        parser.add_argument("-k", type=int, default=3)
        parser.add_argument("--json", action="store_true", help="print the results as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        sets = question_sets(options["questions"] or question_files())
        rows = []
        named = options["method"]
        for method in named or sorted(METHODS):
            try:
                rows.append(evaluate(method, options["raw_dir"], sets, options["k"]))
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
                f"({row['hit_rate']:.0%}; {', '.join(f'{b} {r}' for b, r in row['per_business'].items())}), "
                f"{row['refused']}/{row['unanswered']} unanswerable questions got no hit (min_score "
                f"{row['min_score']}), loaded in {row['load_seconds']} s, {row['chunks']} chunks built in "
                f"{row['build_seconds']} s ({row['chunks_per_second']} chunks/s), {row['query_ms']} ms per query"
            )
            for missed in row["misses"]:
                self.stdout.write(f"    missed: {missed}")
            for wrong in row["answered_wrongly"]:
                self.stdout.write(f"    answered, though nothing answers it: {wrong}")
