"""Sending bodies built beforehand to this service, from a few concurrent senders, for a bounded time."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


@dataclass(frozen=True)
class Body:
    """A body with headers of its own (a key of its business, say), sent on top of the run's headers."""

    data: bytes
    headers: dict[str, str]


# What one answer stored, in events; raises RuntimeError for an answer the bench must not time.
StoredCount = Callable[[Answer], int]


@dataclass
class Sent:
    """What a run of senders stored, and how long each request took."""

    events: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def percentile_ms(self, pct: float) -> float:
        """The nearest-rank percentile of the request latencies."""
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]

    def figures(self) -> dict[str, float]:
        return {
            "events_per_s": self.events_per_s,
            "seconds": self.seconds,
            "requests": len(self.latencies_ms),
            "p50_ms": self.percentile_ms(50),
            "p99_ms": self.percentile_ms(99),
        }


def send_bodies(
    url: str,
    path: str,
    bodies: Iterable[bytes | Body],
    headers: dict[str, str],
    stored: StoredCount,
    duration: float,
    senders: int = 4,
) -> Sent:
    """POST each body once to `url` + `path` from `senders` threads until the bodies run out or `duration` passes.

    `bodies` may be a generator: the senders take the next body in turn, so a long run need not hold every
    body in memory at once (500-event batches are about 300 KiB each).

    Each request opens a connection of its own, as bench_ingest's batches always
    have. `seconds` runs from the first request to the end of the last, so it is
    less than `duration` when every body was sent before the deadline; a request
    under way at the deadline is waited for and counted.
    """
    host, port = url.split("//")[1].split(":")
    queue = iter(bodies)
    sent = Sent()
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def sender() -> None:
        while time.monotonic() < deadline:
            with lock:
                body = next(queue, None)
            if body is None or failures:
                return
            data, sent_headers = (body.data, {**headers, **body.headers}) if isinstance(body, Body) else (body, headers)
            started = time.monotonic()
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            try:
                conn.request("POST", path, data, sent_headers)
                response = conn.getresponse()
                answer = Answer(response.status, response.read())
            finally:
                conn.close()
            took = (time.monotonic() - started) * 1000
            try:
                count = stored(answer)
            except RuntimeError as exc:
                with lock:
                    failures.append(str(exc))
                return
            with lock:
                sent.events += count
                sent.latencies_ms.append(took)

    started = time.monotonic()
    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{path}: {failures[0]}")
    sent.seconds = time.monotonic() - started
    return sent
