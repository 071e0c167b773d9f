"""The folder: folds stored events into conversations and rollups, in id order, one batch per transaction.

The request path only inserts events. Everything derived from them (the
conversations, the 15-minute rollups, the Prometheus totals) is added here,
by one process at a time, so no request ever waits on a row that another
business's requests also update.

Which events are folded is one number, `FolderState.folded_through`: every
event with a lower or equal id is in the rollups, every higher one is not.
It moves in the transaction that folds the batch, so a crash loses nothing
and folds nothing twice: the next fold starts where the last commit left off.
For that number to be safe, no event below it may still be on its way:

- SQLite has one writer at a time, and a fold transaction is one, so the
  highest id it sees is final.
- On PostgreSQL, ids are handed out before commit, so a lower id may commit
  after a higher one is visible. The fold first takes a SHARE lock on the
  event table for a moment, which waits for every insert in flight to finish,
  and reads the highest id under it: the "settled horizon". Only ids up to it
  are folded.

One folder runs at a time, by a lease on the same row (holder, lease_until),
renewed by every batch and taken over when it runs out. A lease is an
ordinary row update, so it holds behind a transaction-pooling PgBouncer,
where a session advisory lock would not. Anyone may fold outside the loop
(`fold_pending`, the outcome API catching up on a conversation): the row
lock each fold takes keeps two folds from overlapping.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from metrics_app import horizon as retention_horizon
from metrics_app.analytics import rollups, totals
from metrics_app.conversations import services as conversations
from metrics_app.models import FOLDER_NAME, AIMetric, FolderState

logger = logging.getLogger(__name__)

# What a fold reads of each event: its id, conversation and store time, and what rollups are made of.
FOLDED_COLUMNS = tuple(dict.fromkeys(("id", "conversation_id", "created_at", *rollups.EVENT_COLUMNS)))
# How long the horizon's lock may wait for inserts in flight (they take milliseconds).
HORIZON_LOCK_TIMEOUT_MS = 2000


class LeaseLost(Exception):
    """Another folder holds the lease: this one must stop folding."""


class RebuildNeeded(Exception):
    """A migration changed what the rollups hold: rebuild_analytics must rebuild them before folding goes on."""


def _state_table() -> str:
    return connection.ops.quote_name(FolderState._meta.db_table)


def _events_table() -> str:
    return connection.ops.quote_name(AIMetric._meta.db_table)


def _highest_id() -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {_events_table()}")
        return int(cursor.fetchone()[0])


def _settled_horizon() -> int:
    """PostgreSQL: the highest event id below which no insert is still in flight (see the module's docstring)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{HORIZON_LOCK_TIMEOUT_MS}ms"])
        cursor.execute(f"LOCK TABLE {_events_table()} IN SHARE MODE")
        cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {_events_table()}")
        return int(cursor.fetchone()[0])


def _lock_state(holder: str | None) -> int:
    """Lock the folder's row for this transaction and return folded_through; LeaseLost if `holder` lost the lease."""
    state = FolderState.objects.select_for_update().filter(name=FOLDER_NAME).first()
    if state is None:  # migration 0009 makes the row; a flushed database has none
        _ensure_state()
        state = FolderState.objects.select_for_update().get(name=FOLDER_NAME)
    if holder is not None and (
        state.holder != holder or state.lease_until is None or state.lease_until <= timezone.now()
    ):
        raise LeaseLost(f"the lease is held by {state.holder or 'nobody'}")
    return state.folded_through


def _ensure_state() -> None:
    """Make the folder's row if it is missing; two processes making it at once both succeed."""
    FolderState.objects.bulk_create([FolderState(name=FOLDER_NAME)], ignore_conflicts=True)


def fold_batch(limit: int | None = None, holder: str | None = None) -> int:
    """Fold the next events after folded_through, at most `limit`; returns how many were folded.

    With `holder`, only while that holder has the lease (LeaseLost otherwise).
    """
    limit = limit or settings.MLOPS_FOLDER_BATCH
    with transaction.atomic():
        folded_through = _lock_state(holder)
        if rollups.rebuild_pending():
            raise RebuildNeeded("the rollups' layout changed: run manage.py rebuild_analytics")
    if _highest_id() <= folded_through:
        return 0  # nothing new: take no lock on the event table
    horizon = _settled_horizon() if connection.vendor == "postgresql" else None
    with transaction.atomic():
        folded_through = _lock_state(holder)
        if horizon is None:
            horizon = _highest_id()  # SQLite: this transaction is the only writer
        events = list(
            AIMetric.objects.filter(id__gt=folded_through, id__lte=horizon)
            .order_by("id").values(*FOLDED_COLUMNS)[:limit]
        )
        reached = events[-1]["id"] if len(events) == limit else horizon
        if events:
            conversations.apply_events(events)
            rollups.add_events(events)
            counted = totals.TotalsAccumulator()
            for event in events:
                counted.add(event)
            counted.write()
        if reached > folded_through:
            FolderState.objects.filter(name=FOLDER_NAME).update(
                folded_through=reached, folded_at=timezone.now(), events_folded=_plus("events_folded", len(events)),
            )
    return len(events)


def _plus(column: str, amount: int) -> Any:
    return F(column) + amount


class FolderBehind(Exception):
    """The folder is too far behind for a request to catch up on its own."""


def fold_pending(limit: int | None = None, until: int | None = None, max_batches: int | None = None) -> int:
    """Fold every event stored so far (or up to id `until`), batch by batch; returns how many.

    With `max_batches`, FolderBehind when `until` is not reached within that many.
    """
    total = batches = 0
    while True:
        if until is not None and rollups.folded_through() >= until:
            return total
        if max_batches is not None and batches >= max_batches:
            raise FolderBehind(f"more than {max_batches} batches to fold before event {until}")
        folded = fold_batch(limit)
        total += folded
        batches += 1
        if not folded:
            return total


# A request that needs its conversation folded folds at most this many batches itself.
REQUEST_FOLD_BATCHES = 5


def fold_conversation(business_id: str, conversation_id: str) -> bool:
    """Fold far enough that this conversation's stored events are all folded; False when it has none."""
    highest = AIMetric.objects.filter(business_id=business_id, conversation_id=conversation_id).aggregate(
        highest=Max("id")
    )["highest"]
    if highest is None:
        return False
    fold_pending(until=highest, max_batches=REQUEST_FOLD_BATCHES)
    return True


# --- The lease.


def new_holder() -> str:
    """A name for this folder process: host, pid and a random part (a pid is reused; this is not)."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def take_lease(holder: str, seconds: float | None = None) -> bool:
    """Take or renew the lease for `seconds`; False while another holder's lease runs."""
    now = timezone.now()
    until = now + timedelta(seconds=seconds or settings.MLOPS_FOLDER_LEASE_SECONDS)
    free = Q(holder=holder) | Q(holder="") | Q(lease_until__isnull=True) | Q(lease_until__lte=now)
    with transaction.atomic():
        _ensure_state()
        taken = FolderState.objects.filter(free, name=FOLDER_NAME).update(holder=holder, lease_until=until)
    return taken == 1


def give_up_lease(holder: str) -> None:
    FolderState.objects.filter(name=FOLDER_NAME, holder=holder).update(holder="", lease_until=None)


def note_error(error: BaseException) -> None:
    """Record a failed fold on the folder's row, for /health, /metrics and the admin."""
    try:
        FolderState.objects.filter(name=FOLDER_NAME).update(
            errors=_plus("errors", 1), last_error=f"{type(error).__name__}: {error}"[:2000],
            last_error_at=timezone.now(),
        )
    except DatabaseError:
        logger.exception("could not record the folder's error")


def run(stop: Callable[[], bool], *, idle_seconds: float = 0.2, holder: str | None = None,
        on_batch: Callable[[int], None] | None = None) -> None:
    """Fold until `stop()` says so: batch after batch while there is a backlog, every `idle_seconds` when not.

    Only while this process holds the lease; otherwise it waits for the lease
    to run out. A failed fold is recorded and retried after a growing pause
    (up to 30 s). The lease is given up on the way out, so a successor need
    not wait for it to expire.
    """
    holder = holder or new_holder()
    pause = idle_seconds
    try:
        while not stop():
            try:
                if not take_lease(holder):
                    _sleep(stop, settings.MLOPS_FOLDER_LEASE_SECONDS / 3)
                    continue
                folded = fold_batch(holder=holder)
                pause = idle_seconds
                if on_batch is not None and folded:
                    on_batch(folded)
                if not folded:
                    _sleep(stop, idle_seconds)
            except LeaseLost as lost:
                logger.warning("folder %s lost its lease: %s", holder, lost)
            except RebuildNeeded as waiting:
                logger.warning("folder waits: %s", waiting)
                _sleep(stop, 5.0)
            except DatabaseError as exc:
                logger.exception("fold failed; retrying in %.1f s", pause)
                note_error(exc)
                connection.close()  # a broken connection is reopened by the next query
                _sleep(stop, pause)
                pause = min(pause * 2 if pause >= 1 else 1.0, 30.0)
    finally:
        try:
            give_up_lease(holder)
        except DatabaseError:
            logger.warning("could not give up the lease of %s; it runs out by itself", holder)


def _sleep(stop: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stop() and time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


# --- What the folder has done, for /health, /metrics and the admin.


@dataclass(frozen=True)
class FolderStatus:
    folded_through: int
    highest_id: int
    backlog_events: int
    lag_seconds: float
    folded_at: datetime | None
    events_folded: int
    errors: int
    last_error: str
    last_error_at: datetime | None
    holder: str
    lease_until: datetime | None
    rebuild_needed: bool = False

    @property
    def running(self) -> bool:
        return bool(self.holder) and self.lease_until is not None and self.lease_until > timezone.now()

    @property
    def degraded(self) -> bool:
        """Too far behind, or events waiting for a minute with no folder to fold them."""
        stalled = not self.running and self.lag_seconds > STALLED_AFTER_SECONDS
        return self.backlog_events > settings.MLOPS_FOLDER_MAX_BACKLOG or stalled or self.rebuild_needed

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "degraded" if self.degraded else "ok",
            "running": self.running,
            "backlog_events": self.backlog_events,
            "lag_seconds": round(self.lag_seconds, 3),
            "folded_through": self.folded_through,
            "errors": self.errors,
        }


# Unfolded events this old with no folder holding the lease: nobody is folding.
STALLED_AFTER_SECONDS = 60.0
# A backlog is counted exactly up to this many events; past it the answer says "at least" this many.
BACKLOG_COUNT_LIMIT = 1_000_000


def status() -> FolderStatus:
    """The folder's row, with its backlog (events stored but not folded) and lag (age of the oldest of them)."""
    state = FolderState.objects.filter(name=FOLDER_NAME).first() or FolderState(name=FOLDER_NAME)
    pending = AIMetric.objects.filter(id__gt=state.folded_through)
    backlog = pending.order_by().values("id")[:BACKLOG_COUNT_LIMIT].count()
    oldest = pending.order_by("id").values_list("created_at", flat=True).first()
    lag = max(0.0, (timezone.now() - oldest).total_seconds()) if oldest is not None else 0.0
    return FolderStatus(
        folded_through=state.folded_through, highest_id=_highest_id(), backlog_events=backlog, lag_seconds=lag,
        folded_at=state.folded_at, events_folded=state.events_folded, errors=state.errors,
        last_error=state.last_error, last_error_at=state.last_error_at, holder=state.holder,
        lease_until=state.lease_until, rebuild_needed=state.rebuild_needed,
    )


def rebuild(progress: Callable[[int], None] | None = None) -> tuple[int, dict[str, Any]]:
    """Recompute conversations and rollups from the raw events; returns (conversations, rollup row counts).

    Ingest goes on meanwhile: the rebuild covers the events up to the settled
    horizon it starts from, and holds the folder's row so no fold runs beside
    it; the events stored meanwhile are folded after it, as usual.

    After retention pruned raw events (metrics_app/retention), the rollups
    and conversations of the pruned period are kept, and only what the raw
    events still cover is recomputed: from the pruned_before horizon on. The
    events before it that are still stored are folded first, so the kept
    rollups hold them. `counts["kept_before"]` says where the rebuild began.
    """
    since = retention_horizon.pruned_before()
    if since is not None:
        fold_pending()
    horizon = _settled_horizon() if connection.vendor == "postgresql" else None
    with transaction.atomic():
        folded_through = _lock_state(None)
        if horizon is None:
            horizon = _highest_id()
        # A fold that committed after the horizon was read went past it; its ids are settled too (it read
        # them under its own horizon), and the conversations it made must be rebuilt, not dropped.
        horizon = max(horizon, folded_through)
        started = time.perf_counter()
        made = conversations.rebuild_conversations(through=horizon, since=since)
        took = {"conversations": time.perf_counter() - started}
        counts = rollups.rebuild(progress=progress, through=horizon, took=took, since=since)
        started = time.perf_counter()
        counts["totals"] = totals.rebuild(through=horizon)
        took["totals"] = time.perf_counter() - started
        counts["seconds"] = took  # type: ignore[assignment]  # where the time went, for the command to print
        counts["kept_before"] = since  # type: ignore[assignment]
        FolderState.objects.filter(name=FOLDER_NAME).update(
            folded_through=horizon, folded_at=timezone.now(), rebuild_needed=False
        )
    return made, counts


def rebuild_needed() -> bool:
    return rollups.rebuild_pending()
