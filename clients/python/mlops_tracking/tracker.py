"""The background sender: a bounded queue drained in batches to POST /track/batch.

Contract: `track()` returns at once and never raises; the network is only
touched by one daemon thread. An event without `kb_version` gets its
business's own knowledge-base version, read from the service now and then. Every event carries its own `event_id`, made
once and reused on every retry, so the service stores a retried event once.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import weakref
from collections import deque
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Mapping

log = logging.getLogger("mlops_tracking")
UTC = timezone.utc

# The service refuses bodies over 1 MiB; stay clear of it with room for the wrapper.
MAX_BODY_BYTES = 1024 * 1024 - 1024
MAX_BATCH = 500
MAX_RETRY_AFTER = 300.0
# Room kept in a batch for a kb_version filled at send time; versions are "kb-" and 12 hex digits.
KB_FIELD_BYTES = 64
MAX_KB_VERSION_LENGTH = 40
WHOLE_NUMBER_FIELDS = (
    "response_time_ms",
    "tokens_used",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_write_input_tokens",
    "reasoning_output_tokens",
    "user_message_length",
    "ai_response_length",
)
# The service scores a customer's `user_message` for `user_sentiment` and drops the text; it takes at most
# this many characters (and scores the opening), so a longer one is cut rather than the event refused.
MAX_USER_MESSAGE_LENGTH = 10_000

# (url, body, headers, timeout) -> (status, headers, body); a body of None is a GET.
Sender = Callable[[str, "bytes | None", dict[str, str], float], tuple[int, dict[str, str], bytes]]


@dataclass
class TrackerStats:
    pending: int = 0  # queued or in the request being sent
    created: int = 0  # stored by the service for the first time
    duplicates: int = 0  # already stored (a retry whose first answer was lost)
    rejected: int = 0  # refused by the service's validation
    refused: int = 0  # lost to a 4xx that a retry cannot fix (bad key, wrong business)
    dropped: int = 0  # oldest events dropped because the queue was full (the newest are kept)
    abandoned: int = 0  # still queued when a shutdown flush gave up
    retries: int = 0  # requests that failed and were tried again
    last_error: str | None = None


@dataclass(frozen=True)
class FlushResult:
    complete: bool
    pending: int


@dataclass
class _Entry:
    event_id: str
    body: bytes
    queued_at: float
    kb_for: str | None = None  # the business whose kb_version the event still needs, filled when it is sent


@dataclass(frozen=True)
class _KbVersion:
    version: str | None  # None: the service gave none (no read scope, no knowledge base yet)
    read_at: float


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, moment.timestamp() - (time.time() if now is None else now))
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _urllib_send(
    url: str, body: bytes | None, headers: dict[str, str], timeout: float
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the configured service URL)
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers or {}), error.read()


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


class MetricsTracker:
    """Queues events and sends them from a daemon thread; see the module docstring."""

    def __init__(
        self,
        service_url: str | None = None,
        api_key: str | None = None,
        *,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        max_queue_size: int = 10_000,
        request_timeout: float = 5.0,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        shutdown_timeout: float = 5.0,
        flush_at_exit: bool = True,
        kb_version: bool = True,
        kb_version_ttl: float = 60.0,
        sender: Sender | None = None,
    ) -> None:
        """`kb_version`: fill a missing kb_version with the business's own knowledge-base version, read from
        GET /api/knowledge-base/ and kept for `kb_version_ttl` seconds. It needs a key with the read scope (or
        none, against a development service); without one the events go without it."""
        url = service_url or _env("MLOPS_SERVICE_URL") or "http://localhost:5000"
        self.service_url = url.rstrip("/")
        self._api_key = api_key if api_key is not None else _env("MLOPS_API_KEY")
        self.batch_size = max(1, min(int(batch_size), MAX_BATCH))
        self.flush_interval = max(0.0, float(flush_interval))
        self.max_queue_size = max(int(max_queue_size), self.batch_size)
        self.request_timeout = float(request_timeout)
        self.initial_backoff = float(initial_backoff)
        self.max_backoff = float(max_backoff)
        self.shutdown_timeout = float(shutdown_timeout)
        self.kb_version = bool(kb_version)
        self.kb_version_ttl = max(0.0, float(kb_version_ttl))
        self._send_raw = sender or _urllib_send
        self._flush_at_exit = flush_at_exit
        self._reset_state()
        if hasattr(os, "register_at_fork"):
            # A forked worker (gunicorn --preload) inherits the queue but not the
            # thread or a usable lock: it starts empty, the parent sends its own.
            me = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: (tracker := me()) and tracker._reset_state())

    def _reset_state(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[_Entry] = deque()
        self._in_flight = 0
        self._retry_at = 0.0
        self._failures = 0
        self._flush_waiters = 0
        self._thread: threading.Thread | None = None
        self._stats = TrackerStats()
        self._warned_down = False
        self._warned_kb = False
        self._kb_versions: dict[str, _KbVersion] = {}
        self._exit_hooked = False

    # --- public

    def track(self, data: Mapping[str, Any]) -> str | None:
        """Queue one event; return its event_id (None when it cannot be sent). Never raises."""
        try:
            event = dict(data)
            for name in WHOLE_NUMBER_FIELDS:
                value = event.get(name)
                # The service wants whole non-negative numbers; time maths and
                # token estimates are not always.
                if isinstance(value, float) and math.isfinite(value):
                    event[name] = max(0, round(value))
                elif isinstance(value, int) and not isinstance(value, bool) and value < 0:
                    event[name] = 0
            message = event.get("user_message")
            if isinstance(message, str) and len(message) > MAX_USER_MESSAGE_LENGTH:
                event["user_message"] = message[:MAX_USER_MESSAGE_LENGTH]
            event_id = str(event.get("event_id") or uuid.uuid4())
            event["event_id"] = event_id
            # Sent later in a batch, so the reply time is taken now.
            event.setdefault("timestamp", datetime.now(UTC))
            if event["timestamp"] is None:
                event["timestamp"] = datetime.now(UTC)
            kb_for = self._kb_version_of(event)
            body = json.dumps(event, default=_json_default, separators=(",", ":"), allow_nan=False).encode()
            if len(body) + (KB_FIELD_BYTES if kb_for else 0) > MAX_BODY_BYTES - 64:
                with self._cond:
                    self._stats.rejected += 1
                log.error("metrics event %s is larger than a request may be; not sent", event_id)
                return None
            with self._cond:
                self._queue.append(_Entry(event_id, body, time.monotonic(), kb_for))
                self._enforce_bound()
                self._ensure_thread()
                self._cond.notify_all()
            return event_id
        except Exception as error:  # noqa: BLE001 - nothing may reach the chat path
            try:
                self._stats.last_error = f"{type(error).__name__}: {error}"
                log.error("metrics event not queued: %s", self._stats.last_error)
            except Exception:  # noqa: BLE001, S110 - a broken logger must not break the chat
                pass
            return None

    def stats(self) -> TrackerStats:
        with self._cond:
            return TrackerStats(**{**asdict(self._stats), "pending": len(self._queue) + self._in_flight})

    def flush(self, timeout: float = 10.0) -> FlushResult:
        """Send what is queued now; return when the service answered for all of it or at the deadline.

        A wait the service asked for (Retry-After) is still honoured. Never raises.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._flush_waiters += 1
            try:
                if self._queue:
                    self._ensure_thread()
                self._cond.notify_all()
                while self._queue or self._in_flight:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            finally:
                self._flush_waiters -= 1
            pending = len(self._queue) + self._in_flight
        return FlushResult(complete=pending == 0, pending=pending)

    def shutdown(self, timeout: float | None = None) -> FlushResult:
        """Flush with the shutdown deadline; what is left is counted as abandoned."""
        result = self.flush(self.shutdown_timeout if timeout is None else timeout)
        with self._cond:
            if self._queue:
                self._stats.abandoned += len(self._queue)
                log.error(
                    "metrics: %d event(s) not delivered before shutdown (%s)",
                    len(self._queue), self._stats.last_error or "no answer",
                )
                self._queue.clear()
        return result

    # --- the business's knowledge-base version

    def _kb_version_of(self, event: dict[str, Any]) -> str | None:
        """Fill a missing kb_version from what is known now (the version that answered); else return the business
        whose version the sender thread must read."""
        if event.get("kb_version") is not None:
            return None
        event.pop("kb_version", None)
        business_id = event.get("business_id")
        if not self.kb_version or not isinstance(business_id, str) or not business_id:
            return None
        known = self._fresh_kb_version(business_id)
        if known is None:
            return business_id
        if known.version is not None:
            event["kb_version"] = known.version
        return None

    def _fresh_kb_version(self, business_id: str) -> _KbVersion | None:
        known = self._kb_versions.get(business_id)
        if known is None or time.monotonic() - known.read_at > self.kb_version_ttl:
            return None
        return known

    def _read_kb_version(self, business_id: str) -> None:
        if self._fresh_kb_version(business_id) is not None:
            return
        headers = {"User-Agent": "mlops-chat-tracking-python/0.1"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = f"{self.service_url}/api/knowledge-base/?{urllib.parse.urlencode({'business_id': business_id})}"
        try:
            status, _, raw = self._send_raw(url, None, headers, self.request_timeout)
        except Exception:  # noqa: BLE001 - the service is away: the batch's own request says so; read again then
            return
        if status >= 500:
            return
        try:
            version = json.loads(raw).get("version") if status == 200 else None
        except (ValueError, AttributeError):
            version = None
        if not isinstance(version, str) or not version or len(version) > MAX_KB_VERSION_LENGTH:
            version = None
            if not self._warned_kb:
                # A key without the read scope (403), no knowledge base yet (404): no version for a while.
                self._warned_kb = True
                log.warning("metrics: no kb_version for %s (GET /api/knowledge-base/ answered %s); "
                            "events go without it", business_id, status)
        self._kb_versions[business_id] = _KbVersion(version, time.monotonic())

    def _event_body(self, entry: _Entry) -> bytes:
        known = self._fresh_kb_version(entry.kb_for) if entry.kb_for else None
        if known is None or known.version is None:
            return entry.body
        return b'{"kb_version":' + json.dumps(known.version).encode() + b"," + entry.body[1:]

    # --- the sender thread

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="mlops-tracking", daemon=True)
            self._thread.start()
        if self._flush_at_exit and not self._exit_hooked:
            self._exit_hooked = True
            me = weakref.ref(self)
            atexit.register(lambda: (tracker := me()) and tracker._at_exit())

    def _at_exit(self) -> None:
        if self.stats().pending:
            self.shutdown()

    def _enforce_bound(self) -> None:
        # The batch in flight is not counted: memory stays under max_queue_size
        # plus one batch, and when that batch comes back unsent it is the oldest
        # and goes first, so what is kept is always the newest events.
        over = len(self._queue) - self.max_queue_size
        if over <= 0:
            return
        if not self._stats.dropped:
            log.error("metrics queue full (%d events): dropping the oldest until the service answers",
                      self.max_queue_size)
        for _ in range(over):
            self._queue.popleft()
        self._stats.dropped += over

    def _take_batch(self) -> list[_Entry]:
        batch: list[_Entry] = []
        size = 16
        while self._queue and len(batch) < self.batch_size:
            entry = self._queue[0]
            entry_size = len(entry.body) + 1 + (KB_FIELD_BYTES if entry.kb_for else 0)
            if size + entry_size > MAX_BODY_BYTES:
                break
            size += entry_size
            batch.append(self._queue.popleft())
        return batch

    def _next_batch(self) -> list[_Entry]:
        """Wait (holding the condition) until a batch is due, then take it."""
        while True:
            now = time.monotonic()
            if not self._queue:
                self._cond.wait()
                continue
            if now < self._retry_at:
                self._cond.wait(self._retry_at - now)
                continue
            if len(self._queue) < self.batch_size and not self._flush_waiters:
                due = self._queue[0].queued_at + self.flush_interval
                if now < due:
                    self._cond.wait(due - now)
                    continue
            batch = self._take_batch()
            if batch:
                self._in_flight = len(batch)
                return batch

    def _run(self) -> None:
        while True:
            batch: list[_Entry] = []
            try:
                with self._cond:
                    batch = self._next_batch()
                retry_after = self._send(batch)
            except Exception as error:  # noqa: BLE001 - the thread must outlive any surprise
                self._stats.last_error = f"{type(error).__name__}: {error}"
                retry_after = self._backoff()
            with self._cond:
                self._in_flight = 0
                if retry_after is not None:
                    self._queue.extendleft(reversed(batch))
                    self._enforce_bound()
                    self._stats.retries += 1
                    self._failures += 1
                    self._retry_at = time.monotonic() + retry_after
                    if not self._warned_down:
                        self._warned_down = True
                        log.warning("metrics service unavailable (%s); retrying in the background",
                                    self._stats.last_error)
                else:
                    if self._warned_down:
                        log.warning("metrics service reachable again")
                    self._warned_down = False
                    self._failures = 0
                    self._retry_at = 0.0
                self._cond.notify_all()

    def _backoff(self) -> float:
        # Full jitter: a random wait up to an exponentially growing cap, so many
        # chat servers coming back at once do not retry in step.
        cap = min(self.max_backoff, self.initial_backoff * 2 ** min(self._failures, 20))
        return random.uniform(0, cap)  # noqa: S311 - jitter, not a secret

    def _send(self, batch: list[_Entry]) -> float | None:
        """POST one batch; None when done with it, else the seconds to wait before retrying it."""
        for business_id in dict.fromkeys(entry.kb_for for entry in batch if entry.kb_for):
            self._read_kb_version(business_id)
        body = b'{"events":[' + b",".join(self._event_body(entry) for entry in batch) + b"]}"
        headers = {"Content-Type": "application/json", "User-Agent": "mlops-chat-tracking-python/0.1"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            status, response_headers, raw = self._send_raw(
                f"{self.service_url}/track/batch", body, headers, self.request_timeout
            )
        except (OSError, ValueError) as error:
            # Refused, reset, timed out: the events may or may not be stored;
            # their event_ids make the retry safe either way.
            self._stats.last_error = f"{type(error).__name__}: {error}"
            return self._backoff()
        if status in (200, 207):
            try:
                answer = json.loads(raw)
            except ValueError as error:
                # The service stored the batch and said so; only its words were lost.
                self._stats.last_error = f"unreadable answer: {error}"
                answer = {}
            with self._cond:
                self._stats.created += int(answer.get("created", len(batch)))
                self._stats.duplicates += int(answer.get("duplicates", 0))
                rejected = int(answer.get("rejected", 0))
                self._stats.rejected += rejected
            if rejected:
                first = next((r for r in answer.get("results", []) if r.get("status") == "rejected"), {})
                self._stats.last_error = f"{rejected} event(s) rejected: {json.dumps(first.get('errors', {}))}"
                log.error("metrics: %s", self._stats.last_error)
            return None
        self._stats.last_error = f"HTTP {status} {raw[:300].decode(errors='replace')}"
        if status in (408, 429) or status >= 500:
            header = {name.lower(): value for name, value in response_headers.items()}.get("retry-after")
            asked = parse_retry_after(header)
            if asked is None:
                return self._backoff()
            # The service's own wait wins over our backoff (capped in case of a silly header).
            return min(asked, MAX_RETRY_AFTER) + random.uniform(0, 0.25)  # noqa: S311
        # Any other 4xx fails the same way again: a bad key, another business's
        # key, a body the service will not take.
        with self._cond:
            self._stats.refused += len(batch)
        log.error("metrics: the service refused %d event(s): %s", len(batch), self._stats.last_error)
        return None
