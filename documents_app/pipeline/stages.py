"""The two DVC stages: process the raw documents, then build the knowledge base.

Both work on files only (no database), so `dvc repro` runs on a fresh clone.
DVC reruns a whole stage when any file under `data/raw/business_documents/`
changes, so the per-document work is cached by content hash in `CACHE_DIR`:
a rerun after one document changed parses and embeds that document only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from documents_app.pipeline.chunking import chunk_sections
from documents_app.pipeline.readers import (
    CutLimit,
    ReadLimits,
    SkipReason,
    UnreadableDocument,
    format_of,
    read_sections,
)
from documents_app.search.embeddings import get_method
from metrics_app.rules import business_id_problem

# Paths relative to the pipeline root (the folder holding dvc.yaml), as dvc.yaml names them.
RAW_DIR = Path("data/raw/business_documents")
EMBEDDINGS_PATH = Path("data/processed/document_embeddings.json")
KB_PATH = Path("data/knowledge_base/current_kb.json")
PROCESSING_METRICS_PATH = Path("metrics/document_processing.json")
KB_METRICS_PATH = Path("metrics/knowledge_base_update.json")
# What one run measured (times, cache hits) goes to `last_run/` beside each metrics file:
# it differs on every run, so it is kept out of the metrics above (tracked by git and
# dvc.lock) and out of git, and a rerun on the same inputs leaves `git status` clean.
LAST_RUN = "last_run"
PARAMS_PATH = Path("params.yaml")
# Not a DVC output: DVC deletes outputs before a stage runs, and this must survive.
CACHE_DIR = Path("data/cache/documents")

# Bump when parsing or chunking changes, so cached results of older code are not reused.
PIPELINE_VERSION = 3


# Set by the worker (services.execute_run) for the stages of a run: when the run's time is up, and who runs it.
RUN_DEADLINE_ENV = "DOCUMENTS_RUN_DEADLINE"
RUN_WORKER_ENV = "DOCUMENTS_RUN_WORKER_PID"


class PipelineError(Exception):
    """A stage cannot run at all (bad parameters, missing input); no output was written."""


def _run_deadline() -> float | None:
    try:
        return float(os.environ[RUN_DEADLINE_ENV])
    except (KeyError, ValueError):
        return None


def watch_run(poll_seconds: float = 0.5) -> None:
    """In a stage of a worker's run: end the run's whole process group when its time is up or its worker is gone.

    The worker stops the group itself on timeout; this covers a worker that
    died without doing so (SIGKILL, e.g. a service stop that timed out), which
    would otherwise leave the stage running with nobody to record it. Only a
    group of its own (the worker starts dvc in a new session) is ever ended.
    """
    deadline = _run_deadline()
    if deadline is None or not hasattr(os, "killpg") or os.getpgrp() != os.getsid(0):
        return
    try:
        worker = int(os.environ.get(RUN_WORKER_ENV, ""))
    except ValueError:
        worker = 0

    def worker_gone() -> bool:
        if worker <= 0:
            return False
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def watch() -> None:
        while time.time() < deadline and not worker_gone():
            time.sleep(poll_seconds)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="run-watch", daemon=True).start()


@dataclass(frozen=True)
class ProcessParams:
    max_file_size_mb: float = 10
    supported_formats: tuple[str, ...] = ("pdf", "docx", "txt", "md")
    min_text_length: int = 50
    max_chunk_chars: int = 800
    embedding_method: str = "hybrid"


@dataclass(frozen=True)
class KnowledgeBaseParams:
    similarity_threshold: float = 0.85
    max_documents_per_topic: int = 10


def load_params(path: Path = PARAMS_PATH) -> tuple[ProcessParams, KnowledgeBaseParams]:
    """Both stages' parameters from params.yaml, checked; PipelineError names a bad one."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PipelineError(f"cannot read {path}: {exc}") from None
    process = raw.get("process_documents") or {}
    update = raw.get("update_knowledge_base") or {}
    try:
        p = ProcessParams(
            max_file_size_mb=float(process.get("max_file_size_mb", ProcessParams.max_file_size_mb)),
            supported_formats=tuple(
                str(f).lower().lstrip(".") for f in process.get("supported_formats", ProcessParams.supported_formats)
            ),
            min_text_length=int(process.get("min_text_length", ProcessParams.min_text_length)),
            max_chunk_chars=int(process.get("max_chunk_chars", ProcessParams.max_chunk_chars)),
            embedding_method=str(process.get("embedding_method", ProcessParams.embedding_method)),
        )
        k = KnowledgeBaseParams(
            similarity_threshold=float(update.get("similarity_threshold", KnowledgeBaseParams.similarity_threshold)),
            max_documents_per_topic=int(
                update.get("max_documents_per_topic", KnowledgeBaseParams.max_documents_per_topic)
            ),
        )
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"a parameter in {path} has the wrong type: {exc}") from None
    problems = []
    if p.max_file_size_mb <= 0:
        problems.append("max_file_size_mb must be positive")
    if p.min_text_length < 0:
        problems.append("min_text_length must be 0 or more")
    if p.max_chunk_chars < 100:
        problems.append("max_chunk_chars must be at least 100")
    if not 0 < k.similarity_threshold <= 1:
        problems.append("similarity_threshold must be in (0, 1]")
    if k.max_documents_per_topic < 1:
        problems.append("max_documents_per_topic must be at least 1")
    try:
        get_method(p.embedding_method)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise PipelineError(f"bad parameters in {path}: " + "; ".join(problems))
    return p, k


# The setting that raises each read limit, named in the detail of a document it cut.
LIMIT_SETTINGS = {
    CutLimit.CHARACTERS: "DOCUMENTS_READ_MAX_CHARS",
    CutLimit.PARAGRAPHS: "DOCUMENTS_READ_MAX_PARAGRAPHS",
    CutLimit.PAGES: "DOCUMENTS_READ_MAX_PAGES",
    CutLimit.XML_SIZE: "DOCUMENTS_READ_MAX_XML_MB",
    CutLimit.TIME: "DOCUMENTS_READ_MAX_SECONDS",
}


def read_limits() -> ReadLimits:
    """The read limits of the DOCUMENTS_READ_* settings (mlops_site/settings.py)."""
    from django.conf import settings

    return ReadLimits(
        max_chars=settings.DOCUMENTS_READ_MAX_CHARS,
        max_paragraphs=settings.DOCUMENTS_READ_MAX_PARAGRAPHS,
        max_pages=settings.DOCUMENTS_READ_MAX_PAGES,
        max_xml_mb=settings.DOCUMENTS_READ_MAX_XML_MB,
        max_seconds=settings.DOCUMENTS_READ_MAX_SECONDS,
    )


def _write_json(path: Path, data: Any) -> None:
    """Write atomically, so a reader (the search endpoint) never sees half a file.

    In a run past its deadline nothing is written: the worker marks such a run
    failed, and a failed run must leave the outputs as they were.
    """
    _refuse_past_deadline(path)  # before the work of writing, which a late run would throw away
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=1, sort_keys=True)
        handle.write("\n")
    try:
        _refuse_past_deadline(path)  # and again: a large file may take long to write
    except PipelineError:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)


def _refuse_past_deadline(path: Path) -> None:
    deadline = _run_deadline()
    if deadline is not None and time.time() >= deadline:
        raise PipelineError(f"the run's time is up; {path} was not written")


def last_run_path(metrics_path: Path) -> Path:
    """Where a stage writes what one run measured, beside its metrics file (ignored by git)."""
    return metrics_path.parent / LAST_RUN / metrics_path.name


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def knowledge_base_version(embedding: dict[str, Any], params: dict[str, Any], chunks: list[dict[str, Any]]) -> str:
    """`kb-` and 12 hex digits of a hash over the method, the parameters and the chunks: the same inputs, the same
    version.

    Over one business's chunks it is that business's version, which no other business's documents change; a
    business with no chunks has the version of none, which still follows the method and the parameters. Over
    every chunk it is the build's version.
    """
    return "kb-" + _digest(embedding, params, chunks)[:12]


def iter_documents(raw_dir: Path) -> Iterator[Path]:
    """Every file under the raw folder in a stable order; hidden files and folders are not documents."""
    for root, dirs, files in os.walk(raw_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


@dataclass
class DocumentResult:
    business_id: str
    source: str  # path inside the business folder
    format: str
    size_bytes: int
    status: str  # "processed" or "skipped"
    reason: str = ""
    detail: str = ""
    sha256: str = ""
    chunks: int = 0
    text_length: int = 0
    cut: str = ""  # the read limit that stopped reading early (CutLimit), "" when read whole
    from_cache: bool = False
    chunk_records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("chunk_records")
        data.pop("from_cache")
        return data


def _process_one(
    path: Path,
    raw_dir: Path,
    params: ProcessParams,
    limits: ReadLimits,
    cache_dir: Path,
    embed: Callable[[list[str]], list[Any]],
) -> DocumentResult:
    result = _placed(path, raw_dir)
    if result.reason or _refused(result, params):
        return result
    try:
        data = path.read_bytes()
    except OSError as exc:
        result.reason, result.detail = SkipReason.CORRUPT, f"cannot read: {exc}"
        return result
    result.sha256 = hashlib.sha256(data).hexdigest()
    cached = _cached_reading(result, data, params, limits, cache_dir, embed)
    if "reason" in cached:
        result.reason, result.detail = cached["reason"], cached["detail"]
        return result
    _take_chunks(result, cached, params)
    return result


def _placed(path: Path, raw_dir: Path) -> DocumentResult:
    """The file's business, place and size; skipped (with a reason) when it cannot be sized or has no business."""
    relative = path.relative_to(raw_dir)
    fmt = format_of(path)
    try:
        size = path.stat().st_size
    except OSError as exc:  # a dangling symlink, a file removed during the run
        return DocumentResult("", relative.as_posix(), fmt, 0, "skipped", SkipReason.CORRUPT, f"cannot read: {exc}")
    if len(relative.parts) < 2 or business_id_problem(relative.parts[0]) is not None:
        return DocumentResult(
            "",
            relative.as_posix(),
            fmt,
            size,
            "skipped",
            SkipReason.NO_BUSINESS_FOLDER,
            "documents live in a folder named after their business id",
        )
    return DocumentResult(relative.parts[0], Path(*relative.parts[1:]).as_posix(), fmt, size, "skipped")


def _refused(result: DocumentResult, params: ProcessParams) -> bool:
    """True (with the reason set) for a file too large to read or of a format the pipeline does not take."""
    if result.size_bytes > params.max_file_size_mb * 1024 * 1024:
        result.reason = SkipReason.TOO_LARGE
        result.detail = f"{result.size_bytes} bytes, over {params.max_file_size_mb} MB"
        return True
    if result.format not in params.supported_formats:
        result.reason = SkipReason.UNSUPPORTED_FORMAT
        result.detail = (
            f".{result.format} is not one of {', '.join(params.supported_formats)}"
            if result.format
            else "no file extension"
        )
        return True
    return False


def _cached_reading(
    result: DocumentResult,
    data: bytes,
    params: ProcessParams,
    limits: ReadLimits,
    cache_dir: Path,
    embed: Callable[[list[str]], list[Any]],
) -> dict[str, Any]:
    """The file's chunks and embeddings (or why it was skipped), from the cache when this content was read before
    with the same settings."""
    cache_key = _digest(
        PIPELINE_VERSION, result.sha256, result.format, params.max_chunk_chars, params.embedding_method, asdict(limits)
    )
    cache_file = cache_dir / cache_key[:2] / f"{cache_key}.json"
    if cache_file.exists():
        try:
            cached: dict[str, Any] = json.loads(cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        else:
            result.from_cache = True
            return cached
    cached = _read_and_embed(data, result.format, params, limits, embed)
    _write_json(cache_file, cached)
    return cached


def _read_and_embed(
    data: bytes, fmt: str, params: ProcessParams, limits: ReadLimits, embed: Callable[[list[str]], list[Any]]
) -> dict[str, Any]:
    try:
        reading = read_sections(data, fmt, limits)
        chunks = chunk_sections(reading.sections, params.max_chunk_chars)
    except UnreadableDocument as exc:
        return {"reason": exc.reason, "detail": exc.detail}
    except Exception as exc:  # parsers of untrusted files fail in many ways; one file never stops the run
        return {"reason": SkipReason.CORRUPT, "detail": f"{type(exc).__name__}: {exc}"[:300]}
    # Embedding errors (a missing optional package) stop the stage: they are not the file's fault.
    # The section title (maybe empty) on the first line: a method that splits a chunk into sentences
    # tells it from the text by that line, and word-based methods see no difference.
    embeddings = embed([f"{c.section}\n{c.text}" for c in chunks])
    return {
        "chunks": [
            {"section": c.section, "position": c.position, "text": c.text, "embedding": e}
            for c, e in zip(chunks, embeddings, strict=True)
        ],
        "cut": reading.cut,
        "cut_detail": reading.cut_detail,
    }


def _take_chunks(result: DocumentResult, cached: dict[str, Any], params: ProcessParams) -> None:
    """Processed, with its chunk records, unless too little text was read."""
    result.text_length = sum(len(c["text"]) for c in cached["chunks"])
    if result.text_length < params.min_text_length:
        result.reason = SkipReason.TOO_LITTLE_TEXT if result.text_length else SkipReason.EMPTY
        result.detail = f"{result.text_length} characters of text, under {params.min_text_length}"
        return
    result.status = "processed"
    result.chunks = len(cached["chunks"])
    if cached.get("cut"):
        # Processed with what was read before the limit; the reason tells the admin the rest is missing.
        result.cut, result.reason = cached["cut"], SkipReason.TRUNCATED
        result.detail = f"{cached['cut_detail']}; the rest was left out (limit: {LIMIT_SETTINGS[result.cut]})"
    for chunk in cached["chunks"]:
        chunk_id = _digest(result.business_id, result.source, chunk["position"], chunk["text"])[:16]
        result.chunk_records.append(
            {"id": chunk_id, "business_id": result.business_id, "source": result.source, **chunk}
        )


def process_documents(
    raw_dir: Path = RAW_DIR,
    output: Path = EMBEDDINGS_PATH,
    metrics_path: Path = PROCESSING_METRICS_PATH,
    params: ProcessParams | None = None,
    cache_dir: Path = CACHE_DIR,
    progress: Callable[[Iterator[Path], int], Iterator[Path]] | None = None,
    limits: ReadLimits | None = None,
) -> dict[str, Any]:
    """Stage 1: read, clean, chunk and embed every document; returns the metrics it wrote.

    `metrics_path` gets the figures that depend only on the inputs and parameters,
    `last_run_path(metrics_path)` what this run measured; the result holds both.
    `limits` (default: the DOCUMENTS_READ_* settings) bound what is read of each document.
    """
    params = params or load_params()[0]
    limits = limits or read_limits()
    if not raw_dir.is_dir():
        raise PipelineError(f"the raw documents folder {raw_dir} does not exist (dvc pull fetches it)")
    started = time.perf_counter()
    method = get_method(params.embedding_method)
    paths = list(iter_documents(raw_dir))
    iterator = progress(iter(paths), len(paths)) if progress else iter(paths)
    results = [_process_one(path, raw_dir, params, limits, cache_dir, method.embed) for path in iterator]
    duration = time.perf_counter() - started

    processed = [r for r in results if r.status == "processed"]
    chunks = [record for r in processed for record in r.chunk_records]
    _write_json(
        output,
        {
            "embedding": method.describe(),
            "params": asdict(params),
            "read_limits": asdict(limits),
            "documents": [r.summary() for r in results],
            "chunks": chunks,
        },
    )
    metrics = _processing_metrics(results, processed, len(chunks), method.name)
    measured = _measured(results, duration)
    _write_json(metrics_path, metrics)
    _write_json(last_run_path(metrics_path), measured)
    return {**metrics, **measured}


def _processing_metrics(
    results: list[DocumentResult], processed: list[DocumentResult], chunks: int, method_name: str
) -> dict[str, Any]:
    """The figures that depend only on the inputs and parameters (tracked by DVC)."""
    skipped = Counter(r.reason for r in results if r.status == "skipped")
    characters = sum(r.text_length for r in processed)
    return {
        "documents_seen": len(results),
        "documents_processed": len(processed),
        "documents_skipped": sum(skipped.values()),
        "skipped_by_reason": dict(sorted(skipped.items())),
        "documents_cut": sum(1 for r in processed if r.cut),
        "cut_by_limit": dict(sorted(Counter(r.cut for r in processed if r.cut).items())),
        "businesses": len({r.business_id for r in processed}),
        "chunks": chunks,
        "characters": characters,
        "average_document_length": round(characters / len(processed), 1) if processed else 0,
        "embedding_method": method_name,
    }


def _measured(results: list[DocumentResult], duration: float) -> dict[str, Any]:
    """What this run measured: parsing, the cache, time."""
    return {
        "documents_parsed": sum(1 for r in results if r.sha256 and not r.from_cache),
        "documents_from_cache": sum(1 for r in results if r.from_cache),
        "processing_time_seconds": round(duration, 3),
        "documents_per_second": round(len(results) / duration, 1) if duration > 0 else 0,
    }


def topic_of(section: str) -> str:
    """A chunk's topic: its section title as a slug ("Business Hours" -> "business-hours")."""
    slug = re.sub(r"[^a-z0-9]+", "-", section.lower()).strip("-")
    return slug or "general"


def _merge_near_duplicates(
    chunks: list[dict[str, Any]], similarity: np.ndarray, threshold: float
) -> tuple[list[dict[str, Any]], int]:
    """Keep the first of each group of chunks at least `threshold` similar; the rest join its `also_in`."""
    kept: list[int] = []
    merged = 0
    for j in range(len(chunks)):
        if kept:
            row = similarity[j, kept]
            best = int(np.argmax(row))
            if row[best] >= threshold:
                target = chunks[kept[best]]
                target["also_in"].append(
                    {"source": chunks[j]["source"], "section": chunks[j]["section"], "position": chunks[j]["position"]}
                )
                merged += 1
                continue
        kept.append(j)
    return [chunks[i] for i in kept], merged


def _cap_topics(chunks: list[dict[str, Any]], cap: int) -> tuple[list[dict[str, Any]], int]:
    """At most `cap` documents per topic: the first documents (by source path) keep their chunks."""
    allowed: dict[str, list[str]] = defaultdict(list)
    for source in sorted({c["source"] for c in chunks}):
        for topic in sorted({c["topic"] for c in chunks if c["source"] == source}):
            if len(allowed[topic]) < cap:
                allowed[topic].append(source)
    kept = [c for c in chunks if c["source"] in allowed[c["topic"]]]
    return kept, len(chunks) - len(kept)


def update_knowledge_base(
    embeddings_path: Path = EMBEDDINGS_PATH,
    output: Path = KB_PATH,
    metrics_path: Path = KB_METRICS_PATH,
    params: KnowledgeBaseParams | None = None,
) -> dict[str, Any]:
    """Stage 2: merge near-duplicates, cap topics, version the result; returns the metrics it wrote.

    As in stage 1, the time it took goes to `last_run_path(metrics_path)`, apart from the other figures.
    """
    params = params or load_params()[1]
    started = time.perf_counter()
    try:
        processed = json.loads(embeddings_path.read_text(encoding="utf-8"))
        method = get_method(processed["embedding"]["method"])
        incoming = processed["chunks"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"cannot read {embeddings_path} (run process_documents first): {exc}") from None

    embedding = method.describe()
    all_params = {"process_documents": processed.get("params", {}), "update_knowledge_base": asdict(params)}
    by_business: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for chunk in incoming:
        by_business[chunk["business_id"]].append({**chunk, "topic": topic_of(chunk["section"]), "also_in": []})
    chunks: list[dict[str, Any]] = []
    businesses: dict[str, Any] = {}
    merged_total = capped_total = 0
    for business_id in sorted(by_business):
        group = by_business[business_id]
        similarity = method.similarity_matrix([c["embedding"] for c in group])
        group, merged = _merge_near_duplicates(group, similarity, params.similarity_threshold)
        group, capped = _cap_topics(group, params.max_documents_per_topic)
        merged_total += merged
        capped_total += capped
        chunks.extend(group)
        topics = Counter(c["topic"] for c in group)
        businesses[business_id] = {
            "version": knowledge_base_version(embedding, all_params, group),
            "documents": sorted({c["source"] for c in group}),
            "chunks": len(group),
            "topics": dict(sorted(topics.items())),
        }

    # The build's version, over every business's chunks: what a run records; each business has its own above.
    version = knowledge_base_version(embedding, all_params, chunks)
    _write_json(
        output,
        {
            "version": version,
            "embedding": embedding,
            "params": all_params,
            "businesses": businesses,
            "chunks": chunks,
        },
    )
    duration = time.perf_counter() - started
    metrics = {
        "version": version,
        # `dvc metrics diff` then names the businesses whose knowledge base a change touched.
        "business_versions": {business: held["version"] for business, held in businesses.items()},
        "chunks_in": len(incoming),
        "chunks": len(chunks),
        "duplicates_merged": merged_total,
        "chunks_dropped_by_topic_cap": capped_total,
        "topics": sum(len(b["topics"]) for b in businesses.values()),
        "businesses": len(businesses),
    }
    measured = {"update_time_seconds": round(duration, 3)}
    _write_json(metrics_path, metrics)
    _write_json(last_run_path(metrics_path), measured)
    return {**metrics, **measured}
