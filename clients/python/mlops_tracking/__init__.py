"""MLOps tracking for Python chat backends.

`track_metrics(event)` queues one reply's event and returns at once; a daemon
thread sends batches to the service's /track/batch, retries with the same
event_id, and flushes at interpreter exit. Configured by MLOPS_SERVICE_URL and
MLOPS_API_KEY, or by `configure(...)`. `assign_variant(experiment,
conversation_id, (a, b), split)` picks a conversation's arm of an A/B
experiment, the same way the TypeScript client and the service do.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from mlops_tracking.experiments import Experiment, assign_variant
from mlops_tracking.tokens import (
    NormalisedUsage,
    TokenUsage,
    calculate_token_usage,
    estimate_api_cost,
    normalise_usage,
    reported_usage,
)
from mlops_tracking.tracker import FlushResult, MetricsTracker, TrackerStats, parse_retry_after

__all__ = [
    "Experiment", "FlushResult", "MetricsTracker", "NormalisedUsage", "TokenUsage", "TrackerStats", "assign_variant",
    "calculate_token_usage", "configure", "estimate_api_cost", "flush", "get_tracker", "normalise_usage",
    "parse_retry_after", "reported_usage", "shutdown", "track_metrics", "track_reply", "tracking_stats",
]

_tracker: MetricsTracker | None = None
_lock = threading.Lock()


def get_tracker() -> MetricsTracker:
    """The process-wide tracker, made on first use from the environment."""
    global _tracker
    if _tracker is None:
        with _lock:
            if _tracker is None:
                _tracker = MetricsTracker()
    return _tracker


def configure(**options: Any) -> MetricsTracker:
    """Replace the process-wide tracker (options as MetricsTracker's); the old one flushes at exit."""
    global _tracker
    with _lock:
        _tracker = MetricsTracker(**options)
    return _tracker


def track_metrics(metrics_data: Mapping[str, Any]) -> str | None:
    """Report one AI reply: queued, sent in the background; its event_id, or None. Never raises."""
    try:
        return get_tracker().track(metrics_data)
    except Exception:  # noqa: BLE001 - a broken environment must not break the chat
        return None


def flush(timeout: float = 10.0) -> FlushResult:
    return get_tracker().flush(timeout) if _tracker else FlushResult(complete=True, pending=0)


def shutdown(timeout: float | None = None) -> FlushResult:
    return get_tracker().shutdown(timeout) if _tracker else FlushResult(complete=True, pending=0)


def tracking_stats() -> TrackerStats:
    return get_tracker().stats()


@contextmanager
def track_reply(**fields: Any) -> Iterator[dict[str, Any]]:
    """Time the block and report it as one event; an exception is reported as a failed reply and re-raised.

        with track_reply(business_id="acme", conversation_id=cid) as event:
            answer = model.generate(...)
            event.update(tokens_used=..., intent_detected=...)

    The block's own result and exceptions pass through untouched.
    """
    event: dict[str, Any] = {"tokens_used": 0, **fields}
    started = time.perf_counter()
    try:
        yield event
    except BaseException:
        event.update(success_rate=0, response_type="error")
        raise
    finally:
        event["response_time_ms"] = round((time.perf_counter() - started) * 1000)
        event.setdefault("business_id", "unknown")
        track_metrics(event)
