"""Speed of the document pipeline: a full `dvc repro` over a generated corpus, then a rerun after one change.

    .venv/bin/python bench/bench_documents.py [--documents 200] [--method hybrid|minilm-onnx|bm25|minilm]

Works in a fresh clone of the repository in a temporary folder, whose raw
folder is replaced by a generated corpus of mixed formats (PDF, DOCX, TXT,
Markdown; about half a page each). Prints one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.documents.helpers import dvc, fresh_clone, make_docx, make_pdf  # noqa: E402

TOPICS = [
    "Opening Hours",
    "Prices",
    "Booking",
    "Cancellations",
    "Parking",
    "Payment",
    "Team",
    "Services",
    "Refunds",
    "Accessibility",
    "Privacy",
    "Training",
    "Support",
    "Contact",
    "Holidays",
    "Insurance",
]
WORDS = (
    "appointment client service consultant price hour week monday friday saturday booking cancel refund "
    "parking office team project cloud training workshop support email phone invoice deposit policy visit "
    "online remote onsite quote discount startup plan contract review data secure access schedule"
).split()


def sentence(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(9, 16))
    return " ".join(words).capitalize() + "."


def sections(rng: random.Random) -> list[tuple[str, str]]:
    """About 250 words in five sections: half a page."""
    return [(title, " ".join(sentence(rng) for _ in range(4))) for title in rng.sample(TOPICS, 5)]


def write_document(folder: Path, index: int, rng: random.Random) -> Path:
    content = sections(rng)
    fmt = ("pdf", "docx", "txt", "md")[index % 4]
    path = folder / f"doc{index:04d}.{fmt}"
    if fmt == "pdf":
        return make_pdf(path, content)
    if fmt == "docx":
        return make_docx(path, content)
    if fmt == "md":
        path.write_text("\n\n".join(f"## {title}\n{body}" for title, body in content))
    else:
        path.write_text("\n\n".join(f"{title}\n{body}" for title, body in content))
    return path


def timed_repro(root: Path) -> tuple[float, dict, dict]:
    started = time.perf_counter()
    dvc(root, "repro")
    wall = time.perf_counter() - started
    def figures(name: str) -> dict:  # what the stage produced and what this run measured
        return {**json.loads((root / "metrics" / name).read_text()),
                **json.loads((root / "metrics/last_run" / name).read_text())}

    return wall, figures("document_processing.json"), figures("knowledge_base_update.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--method", choices=("bm25", "minilm", "minilm-onnx", "hybrid"), default="hybrid")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = fresh_clone(Path(scratch) / "repo")
        raw = root / "data/raw/business_documents"
        shutil.rmtree(raw, ignore_errors=True)
        folder = raw / "bench-business"
        folder.mkdir(parents=True)
        rng = random.Random(7)
        paths = [write_document(folder, i, rng) for i in range(args.documents)]
        params = root / "params.yaml"
        params.write_text(re.sub(r"embedding_method: \S+", f"embedding_method: {args.method}", params.read_text()))

        full_wall, full, kb = timed_repro(root)
        unchanged_started = time.perf_counter()
        dvc(root, "repro")
        unchanged_wall = time.perf_counter() - unchanged_started

        changed = paths[len(paths) // 2]
        write_document(folder, len(paths) // 2, random.Random(99))
        rerun_wall, rerun, _ = timed_repro(root)

    print(
        json.dumps(
            {
                "documents": args.documents,
                "method": args.method,
                "chunks": full["chunks"],
                "full_run_seconds": round(full_wall, 2),
                "full_run_documents_per_second": round(args.documents / full_wall, 1),
                "process_stage_seconds": full["processing_time_seconds"],
                "process_stage_documents_per_second": full["documents_per_second"],
                "knowledge_base_stage_seconds": kb["update_time_seconds"],
                "repro_with_nothing_changed_seconds": round(unchanged_wall, 2),
                "changed_document": changed.name,
                "rerun_seconds": round(rerun_wall, 2),
                "rerun_documents_parsed": rerun["documents_parsed"],
                "rerun_documents_from_cache": rerun["documents_from_cache"],
                "rerun_process_stage_seconds": rerun["processing_time_seconds"],
                "rerun_ratio": round(rerun_wall / full_wall, 3),
                "target_rerun_ratio": 0.2,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
