"""Raw-event retention: remove the raw events before the horizon, keeping every figure made of them.

What stays: the rollups (summaries, funnels, series, breakdowns, and the
latency sketches that percentiles come from), the conversations, and the
/metrics totals. So that a rebuild can keep them too, each removed event is
first added to PrunedTotals (the totals a rebuild starts from), and
RetentionState.pruned_before records that no raw event before it is left
(rebuilds recompute only from there on).

How the rows go:

- PostgreSQL, partitioned by day (metrics_app/retention/partitions.py): a
  partition that ends at or before the cutoff is dropped whole, in one short
  transaction after its rows were added to PrunedTotals and their dedupe keys
  deleted. Rows before the cutoff in a partition that is not wholly old (a
  month made before retention was turned on, the default partition) go in
  batches as on SQLite.
- SQLite: a batched delete, a few thousand rows per transaction, by the
  "timestamp" index.

Only folded events are removed (the folder's row is held, so none is folded
meanwhile): the run folds what is pending first, and an event that arrives
late and unfolded waits for the next run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from metrics_app import database, horizon
from metrics_app.analytics import rollups, totals
from metrics_app.folding import services as folding
from metrics_app.models import RETENTION_NAME, AIMetric, EventKey, PrunedTotals, RetentionState
from metrics_app.retention import partitions

logger = logging.getLogger(__name__)

BATCH = 5000
# How long a retention transaction waits for a fold (or a rebuild) holding the folder's row.
WAIT_SECONDS = 30.0
_READ_COLUMNS = ("event_id", *totals.EVENT_FIELDS)


class RetentionOff(Exception):
    """MLOPS_RAW_RETENTION_DAYS is not set: raw events are kept for ever."""


@dataclass
class Plan:
    """What a run would remove (a dry run) or removed."""

    days: int
    cutoff: datetime
    partitions: list[str] = field(default_factory=list)  # dropped whole
    partition_events: int = 0
    batched_events: int = 0  # deleted row by row, in batches
    unfolded: int = 0  # before the cutoff and not folded yet: a run folds them first, and leaves any that come after
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return self.partition_events + self.batched_events

    def summary(self, *, done: bool) -> str:
        verb = "Removed" if done else "Would remove"
        how = []
        if self.partitions:
            how.append(f"{self.partition_events} by dropping {len(self.partitions)} partitions")
        if self.batched_events or not self.partitions:
            how.append(f"{self.batched_events} in batches")
        text = (f"{verb} {self.events} raw events before {self.cutoff:%Y-%m-%d %H:%M} UTC "
                f"(kept {self.days} days): {', '.join(how)}.")
        if self.unfolded and done:
            text += f" {self.unfolded} events before then are not folded yet and wait for the next run."
        elif self.unfolded:
            text += f" {self.unfolded} of them are not folded yet: the run folds them first."
        if done:
            text += f" Took {self.seconds:.1f} s."
        return text


def _days(days: int | None) -> int:
    days = days if days is not None else horizon.retention_days()
    if not days:
        raise RetentionOff("raw retention is off: set MLOPS_RAW_RETENTION_DAYS to a number of days")
    return days


def _whole(cutoff: datetime) -> list[partitions.Partition]:
    if not partitions.is_partitioned():
        return []
    return [p for p in partitions.partitions() if not p.is_default and p.upper is not None and p.upper <= cutoff]


def _count(table: str, where: str = "", params: Iterable[Any] = ()) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {connection.ops.quote_name(table)}{where}", list(params))
        return int(cursor.fetchone()[0])


def plan(days: int | None = None, now: datetime | None = None) -> Plan:
    """What a run now would remove, without removing anything (the command's --dry-run)."""
    days = _days(days)
    cutoff = horizon.cutoff(days, now)
    found = Plan(days, cutoff)
    folded_through = rollups.folded_through()
    old = AIMetric.objects.filter(timestamp__lt=cutoff)
    for partition in _whole(cutoff):
        found.partitions.append(partition.name)
        found.partition_events += _count(partition.name)
    found.unfolded = old.filter(id__gt=folded_through).count()
    found.batched_events = old.count() - found.partition_events
    return found


def prune(days: int | None = None, now: datetime | None = None, batch: int = BATCH,
          progress: Callable[[int], None] | None = None) -> Plan:
    """Remove the raw events before the cutoff of `days` (MLOPS_RAW_RETENTION_DAYS), keeping their figures."""
    started = time.perf_counter()
    days = _days(days)
    cutoff = horizon.cutoff(days, now)
    done = Plan(days, cutoff)
    partitions.ensure(now)
    folding.fold_pending()
    for partition in _whole(cutoff):
        removed = _drop_partition(partition)
        if removed is not None:
            done.partitions.append(partition.name)
            done.partition_events += removed
            if progress is not None:
                progress(removed)
    while True:
        removed = _delete_batch(cutoff, batch)
        if not removed:
            break
        done.batched_events += removed
        if progress is not None:
            progress(removed)
    done.unfolded = AIMetric.objects.filter(timestamp__lt=cutoff).count()
    done.seconds = time.perf_counter() - started
    _record(done)
    logger.info(done.summary(done=True))
    return done


def _retire(rows: list[dict[str, Any]]) -> None:
    """Add removed events to PrunedTotals and delete their dedupe keys, in the caller's transaction."""
    accumulator = totals.TotalsAccumulator(PrunedTotals)
    keys: dict[str, list[Any]] = {}
    for row in rows:
        accumulator.add(row)
        keys.setdefault(row["business_id"], []).append(row["event_id"])
    accumulator.write()
    for business_id, event_ids in keys.items():
        for start in range(0, len(event_ids), 500):
            EventKey.objects.filter(business_id=business_id, event_id__in=event_ids[start:start + 500]).delete()


def _delete_batch(cutoff: datetime, batch: int) -> int:
    """One transaction: the oldest `batch` folded events before the cutoff, retired and deleted."""
    with transaction.atomic():
        folded_through = rollups.folded_through(hold=True, wait_seconds=WAIT_SECONDS)
        rows = list(
            AIMetric.objects.filter(timestamp__lt=cutoff, id__lte=folded_through)
            .order_by("timestamp", "id").values("id", *_READ_COLUMNS)[:batch]
        )
        if not rows:
            return 0
        _retire(rows)
        ids = [row["id"] for row in rows]
        for start in range(0, len(ids), 500):
            AIMetric.objects.filter(timestamp__lt=cutoff, id__in=ids[start:start + 500]).delete()
    return len(rows)


def _drop_partition(partition: partitions.Partition) -> int | None:
    """Retire a whole partition's rows and drop it; None when it still holds unfolded events (left for later)."""
    table = connection.ops.quote_name(partition.name)
    with transaction.atomic():
        folded_through = rollups.folded_through(hold=True, wait_seconds=WAIT_SECONDS)
        with connection.cursor() as cursor:
            # No insert into it after this; it ends before the ingest's horizon, so none should come anyway.
            cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")
            cursor.execute(f"SELECT COUNT(*), COALESCE(MAX(id), 0) FROM {table}")
            count, highest = cursor.fetchone()
        if highest > folded_through:
            logger.info("partition %s holds events not folded yet; it is dropped by a later run", partition.name)
            return None
        rows = AIMetric.objects.filter(timestamp__gte=partition.lower, timestamp__lt=partition.upper)
        pending: list[dict[str, Any]] = []
        for row in database.in_id_pages(rows, _READ_COLUMNS, BATCH):
            pending.append(row)
            if len(pending) >= BATCH:
                _retire(pending)
                pending = []
        _retire(pending)
        partitions.drop(partition)
    return int(count)


def _record(done: Plan) -> None:
    with transaction.atomic():
        state, _ = RetentionState.objects.select_for_update().get_or_create(name=RETENTION_NAME)
        if state.pruned_before is None or done.cutoff > state.pruned_before:
            state.pruned_before = done.cutoff
        state.events_pruned += done.events
        state.last_run_at = timezone.now()
        state.last_run_events = done.events
        state.last_run_summary = done.summary(done=True)
        state.save()


def run_scheduled() -> str:
    """The worker's daily job: make the partitions ahead, then prune when retention is on."""
    made = partitions.ensure()
    if horizon.retention_days() is None:
        return f"raw retention is off (MLOPS_RAW_RETENTION_DAYS); made {len(made)} partitions"
    return prune().summary(done=True)
