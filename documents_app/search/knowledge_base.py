"""Reading the built knowledge base and searching it (the read side of the app).

The file is loaded once and kept per process until its modification time or
size changes, so a pipeline run is picked up by the next request without a
restart. Search indexes are built per business on first use.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from documents_app.pipeline.stages import knowledge_base_version
from documents_app.search.embeddings import EmbeddingMethod, Scorer, get_method


class KnowledgeBaseMissing(Exception):
    """No knowledge base has been built yet, or the file cannot be read."""


@dataclass
class KnowledgeBase:
    version: str
    built_at: datetime
    embedding: dict[str, Any]
    params: dict[str, Any]
    businesses: dict[str, Any]
    chunks_by_business: dict[str, list[dict[str, Any]]]
    method: EmbeddingMethod
    _scorers: dict[str, Scorer] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def business_version(self, business_id: str) -> str:
        """The business's own version: it changes with its documents, the method and the parameters only."""
        held = self.businesses.get(business_id)
        if held is None:
            return knowledge_base_version(self.embedding, self.params, [])
        # A file built before versions were per business has only the build's.
        return str(held.get("version") or self.version)

    def summary(self, business_id: str | None, visible: set[str] | None = None) -> dict[str, Any]:
        """Version and what the knowledge base holds, for one business or for all of `visible` (None: every one).

        For one business `version` is that business's own; for several it is the build's, and each business
        carries its own under `businesses`.
        """
        body: dict[str, Any] = {
            "version": self.version,
            "build_version": self.version,
            "built_at": self.built_at.isoformat(),
            "embedding": self.embedding,
            "params": self.params,
        }
        if business_id is None:
            body["businesses"] = {
                business: {**held, "version": self.business_version(business)}
                for business, held in self.businesses.items()
                if visible is None or business in visible
            }
        else:
            body["business_id"] = business_id
            body.update(self.businesses.get(business_id, {"documents": [], "chunks": 0, "topics": {}}))
            body["version"] = self.business_version(business_id)
        return body

    def search(self, business_id: str, query: str, k: int) -> list[dict[str, Any]]:
        """The `k` best chunks of one business for `query`, best first.

        A chunk whose relevance (its score) is not above 0 or below the method's `min_score` is left out,
        so a question the documents do not answer gets no hits rather than the least bad chunk.
        """
        chunks = self.chunks_by_business.get(business_id, [])
        if not chunks:
            return []
        with self._lock:
            scorer = self._scorers.get(business_id)
            if scorer is None:
                scorer = self.method.scorer([c["embedding"] for c in chunks])
                self._scorers[business_id] = scorer
        ordering, relevance = scorer.ranked(query)
        version = self.business_version(business_id)
        floor = float(self.embedding.get("min_score", 0))
        ranked = sorted(range(len(chunks)), key=lambda i: (-ordering[i], i))
        order = [i for i in ranked if relevance[i] > 0 and relevance[i] >= floor][:k]
        return [
            {
                "chunk_id": chunks[i]["id"],
                "score": round(float(relevance[i]), 4),
                "kb_version": version,
                "text": chunks[i]["text"],
                "source": chunks[i]["source"],
                "section": chunks[i]["section"],
                "position": chunks[i]["position"],
                "topic": chunks[i]["topic"],
                "also_in": chunks[i].get("also_in", []),
            }
            for i in order
        ]


_cache_lock = threading.Lock()
_cache: dict[Path, tuple[tuple[float, int], KnowledgeBase]] = {}


def parse_knowledge_base(path: Path) -> KnowledgeBase:
    try:
        stat = path.stat()
        data = json.loads(path.read_text(encoding="utf-8"))
        by_business: dict[str, list[dict[str, Any]]] = {}
        for chunk in data["chunks"]:
            by_business.setdefault(chunk["business_id"], []).append(chunk)
        return KnowledgeBase(
            version=data["version"],
            built_at=datetime.fromtimestamp(stat.st_mtime, tz=UTC),
            embedding=data["embedding"],
            params=data["params"],
            businesses=data["businesses"],
            chunks_by_business=by_business,
            method=get_method(data["embedding"]["method"]),
        )
    except FileNotFoundError:
        raise KnowledgeBaseMissing("no knowledge base has been built yet") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KnowledgeBaseMissing(f"the knowledge base file cannot be read: {exc}") from None


def current_knowledge_base(path: Path) -> KnowledgeBase:
    """The knowledge base at `path`, reloaded when the file changes."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise KnowledgeBaseMissing("no knowledge base has been built yet") from None
    stamp = (stat.st_mtime, stat.st_size)
    with _cache_lock:
        cached = _cache.get(path)
        if cached and cached[0] == stamp:
            return cached[1]
    kb = parse_knowledge_base(path)
    with _cache_lock:
        _cache[path] = (stamp, kb)
    return kb
