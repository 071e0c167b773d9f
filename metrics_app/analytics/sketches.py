"""Latency sketches: counts per logarithmic bin, packed one bucket to a row, merged with numpy.

Bin b >= 1 holds latencies in (g^(b-2), g^(b-1)] ms with g = 1.01/0.99, so the
value a bin stands for (2 g^(b-1) / (g + 1)) is within 1% of every latency in
it; bin 0 holds 0 ms. A percentile interpolated between the two closest
ranks, as percentile_cont does, is then within 1% of the exact one.

A packed sketch is the bin numbers of its non-empty bins (uint16) followed by
their counts (int64), little-endian: 10 bytes a bin, and a bucket of a
receptionist's replies has some tens of non-empty bins.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from metrics_app.rules import MAX_RESPONSE_TIME_MS

RELATIVE_ERROR = 0.01
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
LOG_GAMMA = math.log(GAMMA)


def latency_bin(ms: int) -> int:
    if ms <= 0:
        return 0
    return math.ceil(math.log(ms) / LOG_GAMMA) + 1


BIN_COUNT = latency_bin(MAX_RESPONSE_TIME_MS) + 1
_BIN_TYPE = np.dtype("<u2")
_COUNT_TYPE = np.dtype("<i8")
_ENTRY_BYTES = _BIN_TYPE.itemsize + _COUNT_TYPE.itemsize


def bin_value(index: int) -> float:
    """The value a bin stands for: within RELATIVE_ERROR of every latency in it."""
    if index == 0:
        return 0.0
    return 2 * GAMMA ** (index - 1) / (GAMMA + 1)


def pack(bins: dict[int, int]) -> bytes:
    keys = sorted(index for index, count in bins.items() if count)
    return (np.array(keys, dtype=_BIN_TYPE).tobytes()
            + np.array([bins[k] for k in keys], dtype=_COUNT_TYPE).tobytes())


def unpack(blob: bytes | memoryview) -> tuple[np.ndarray, np.ndarray]:
    """(bin numbers, counts) of a packed sketch."""
    data = bytes(blob)
    n = len(data) // _ENTRY_BYTES
    return (np.frombuffer(data, dtype=_BIN_TYPE, count=n),
            np.frombuffer(data, dtype=_COUNT_TYPE, count=n, offset=n * _BIN_TYPE.itemsize))


def as_dict(blob: bytes | memoryview) -> dict[int, int]:
    indexes, counts = unpack(blob)
    return {int(i): int(c) for i, c in zip(indexes, counts, strict=True)}


def dense(blobs: Iterable[bytes | memoryview], extra: Iterable[int] = ()) -> np.ndarray:
    """One dense histogram (count per bin) from packed sketches and raw latencies."""
    total = np.zeros(BIN_COUNT, dtype=np.int64)
    for blob in blobs:
        indexes, counts = unpack(blob)
        np.add.at(total, indexes, counts)
    raw = [latency_bin(ms) for ms in extra]
    if raw:
        total += np.bincount(np.array(raw, dtype=np.int64), minlength=BIN_COUNT)[:BIN_COUNT]
    return total


def add_latencies(histogram: np.ndarray, latencies: Iterable[int]) -> None:
    raw = [latency_bin(ms) for ms in latencies]
    if raw:
        histogram += np.bincount(np.array(raw, dtype=np.int64), minlength=BIN_COUNT)[:BIN_COUNT]


def percentiles(histogram: np.ndarray, fractions: Iterable[tuple[str, float]]) -> dict[str, float | None]:
    """Each named percentile of a dense histogram, interpolated between the closest ranks."""
    cumulative = np.cumsum(histogram)
    total = int(cumulative[-1]) if len(cumulative) else 0
    result: dict[str, float | None] = {}
    for name, fraction in fractions:
        if not total:
            result[name] = None
            continue
        position = fraction * (total - 1)
        low_rank = math.floor(position)
        high_rank = min(low_rank + 1, total - 1)
        low = bin_value(int(np.searchsorted(cumulative, low_rank, side="right")))
        high = bin_value(int(np.searchsorted(cumulative, high_rank, side="right")))
        result[name] = low + (high - low) * (position - low_rank)
    return result


def sketch_percentile(bins: dict[int, int], fraction: float) -> float | None:
    """One percentile of a sketch given as {bin: count}."""
    histogram = np.zeros(BIN_COUNT, dtype=np.int64)
    for index, count in bins.items():
        histogram[index] += count
    return percentiles(histogram, [("p", fraction)])["p"]
