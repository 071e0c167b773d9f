"""Reads from a streaming replica (DATABASE_REPLICA_URL), with the primary as the fallback.

The analytics, conversation and console reads of a request may come from
the replica; everything else (writes, ingest, sessions, the folder) stays on
the primary. Within a request the reads go to one database only: the
router sends this app's reads to the alias `reading_alias()` names, and the
selectors' own SQL takes `reading()`, so a snapshot and the queries inside it
see the same server.

The replica is used only while it is healthy: reachable, and replaying the
primary's WAL no more than DATABASE_REPLICA_MAX_LAG_SECONDS behind. The
check runs at most once per REPLICA_CHECK_SECONDS per process; a replica
that lags or is down sends reads to the primary until a later check finds it
well again. A staff member who has just written (an outcome, a price) reads
from the primary for a while (`pin_to_primary`), so they see their own write.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

REPLICA = "replica"
OK, LAGGING, DOWN, OFF = "ok", "lagging", "down", "off"

_reads_from: contextvars.ContextVar[str] = contextvars.ContextVar("mlops_reads_from", default=DEFAULT_DB_ALIAS)


def configured() -> bool:
    return REPLICA in settings.DATABASES


def reading_alias() -> str:
    """The database this request's reads go to."""
    return _reads_from.get()


def reading() -> BaseDatabaseWrapper:
    """The connection of the database this request's reads go to."""
    return connections[_reads_from.get()]


@contextmanager
def reads_from(alias: str) -> Iterator[None]:
    """Within the block, this app's reads go to `alias`."""
    token = _reads_from.set(alias)
    try:
        yield
    finally:
        _reads_from.reset(token)


@dataclass(frozen=True)
class ReplicaState:
    status: str  # ok, lagging, down, or off (no replica configured)
    lag_seconds: float | None = None
    error: str = ""

    @property
    def usable(self) -> bool:
        return self.status == OK

    def as_dict(self, details: bool) -> dict[str, Any]:
        answer: dict[str, Any] = {"status": self.status}
        if self.lag_seconds is not None:
            answer["lag_seconds"] = round(self.lag_seconds, 3)
        if details and self.error:
            answer["error"] = self.error
        if self.status in (LAGGING, DOWN):
            answer["reads_from"] = "primary"
        return answer


# A healthy streaming replica replays a commit within milliseconds of the primary.
_REPLAY_GRACE_SECONDS = 0.05
_LAG_SQL = (
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() >= %s::pg_lsn, "
    "EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())"
)


def measure() -> ReplicaState:
    """The replica's state now: how far its replay is behind the primary's current WAL position."""
    if not configured():
        return ReplicaState(OFF)
    try:
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_lsn()")
            (primary_lsn,) = cursor.fetchone()
    except DatabaseError as exc:
        return ReplicaState(DOWN, error=f"primary: {type(exc).__name__}")  # the primary's own probe says more
    replica = connections[REPLICA]
    try:
        with replica.cursor() as cursor:
            cursor.execute(_LAG_SQL, [primary_lsn])
            in_recovery, caught_up, behind = cursor.fetchone()
            if in_recovery and not caught_up:
                # The time since the last replayed commit overstates the lag of a replica that is milliseconds
                # behind after a quiet spell: give replay a moment to reach the position read above first.
                time.sleep(_REPLAY_GRACE_SECONDS)
                cursor.execute(_LAG_SQL, [primary_lsn])
                in_recovery, caught_up, behind = cursor.fetchone()
    except DatabaseError as exc:
        replica.close()
        return ReplicaState(DOWN, error=type(exc).__name__)
    if not in_recovery:
        return ReplicaState(DOWN, error="not a standby: it accepts writes")
    lag = 0.0 if caught_up else (float(behind) if behind is not None else float("inf"))
    bound = settings.DATABASE_REPLICA_MAX_LAG_SECONDS
    return ReplicaState(OK if lag <= bound else LAGGING, lag)


class _Checked:
    """The last measurement of this process, refreshed at most every REPLICA_CHECK_SECONDS."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state: ReplicaState | None = None
        self.at = 0.0

    def get(self) -> ReplicaState:
        fresh = time.monotonic() - self.at < settings.DATABASE_REPLICA_CHECK_SECONDS
        if self.state is not None and fresh:
            return self.state
        with self.lock:
            if self.state is None or time.monotonic() - self.at >= settings.DATABASE_REPLICA_CHECK_SECONDS:
                self.state = measure()
                self.at = time.monotonic()
            return self.state

    def forget(self) -> None:
        self.state, self.at = None, 0.0


_checked = _Checked()


def state() -> ReplicaState:
    """The replica's state as this process last measured it (within REPLICA_CHECK_SECONDS)."""
    return _checked.get() if configured() else ReplicaState(OFF)


def forget_state() -> None:
    _checked.forget()


# --- Read your own writes: a session that wrote reads from the primary for a while.

PINNED_UNTIL = "mlops_primary_until"


def pin_to_primary(session: Any) -> None:
    session[PINNED_UNTIL] = time.time() + settings.DATABASE_REPLICA_PIN_SECONDS


def pinned(session: Any) -> bool:
    return float(session.get(PINNED_UNTIL) or 0) > time.time()


class Router:
    """This app's reads go where the request reads from; everything else, and every write, to the primary."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return _reads_from.get() if model._meta.app_label == "metrics_app" else DEFAULT_DB_ALIAS

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True  # the replica is a copy of the primary: a row read from either is the same row

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return db == DEFAULT_DB_ALIAS  # the replica replays the primary's migrations
