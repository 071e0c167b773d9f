"""PostgreSQL: ai_metrics is partitioned by range of "timestamp"; these make its partitions and drop old ones.

Migration 0019 made one partition per UTC month that held events, and a
default partition for any time no partition covers, so an insert never
fails for want of one. From then on `ensure` makes the partitions ahead of
time: one per UTC day while raw retention is on (so it removes whole days by
dropping a table, never by deleting rows), one per month while it is off (a
year is twelve tables). A partition made for a period that the default
partition already holds rows of takes those rows over. On SQLite the table
is not partitioned and every function here answers that there is nothing to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from metrics_app import horizon
from metrics_app.models import AIMetric

PARENT = AIMetric._meta.db_table
DEFAULT = f"{PARENT}_default"
# How long partition changes wait for the table's lock before giving up (they run again the next day).
LOCK_TIMEOUT_MS = 5000
DAILY_AHEAD = timedelta(days=7)
MONTHLY_AHEAD = timedelta(days=62)

_BOUND = re.compile(r"FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    name: str
    lower: datetime | None  # None for the default partition
    upper: datetime | None

    @property
    def is_default(self) -> bool:
        return self.lower is None


def is_partitioned() -> bool:
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [PARENT])
        row = cursor.fetchone()
    return bool(row) and row[0] == "p"


def partitions() -> list[Partition]:
    """The partitions of ai_metrics, oldest first, the default partition last.

    Django sets each PostgreSQL connection's TimeZone to UTC, so the bounds read back in UTC.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            [PARENT],
        )
        rows = cursor.fetchall()
    found = []
    for name, bound in rows:
        match = _BOUND.search(bound)
        if match is None:
            found.append(Partition(name, None, None))
        else:
            lower, upper = (datetime.fromisoformat(value).astimezone(UTC) for value in match.groups())
            found.append(Partition(name, lower, upper))
    return sorted(found, key=lambda p: (p.is_default, p.lower or datetime.min.replace(tzinfo=UTC)))


def _next_boundary(start: datetime, daily: bool) -> datetime:
    if daily:
        return start.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)


def _floor(moment: datetime, daily: bool) -> datetime:
    moment = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return moment if daily else moment.replace(day=1)


def _name(lower: datetime, upper: datetime) -> str:
    whole_month = lower.day == 1 and upper == _next_boundary(lower, daily=False)
    return f"{PARENT}_p{lower:%Y_%m}" if whole_month else f"{PARENT}_p{lower:%Y_%m_%d}"


def ensure(now: datetime | None = None) -> list[str]:
    """Make the partitions from the newest one's end (or this period's start) until a week or two months ahead.

    Returns the names made. Days while retention is on, months while it is off.
    """
    if not is_partitioned():
        return []
    now = now or timezone.now()
    daily = horizon.retention_days() is not None
    until = now + (DAILY_AHEAD if daily else MONTHLY_AHEAD)
    ranged = [p for p in partitions() if not p.is_default]
    start = max(p.upper for p in ranged if p.upper) if ranged else _floor(now, daily)
    made = []
    while start < until:
        upper = _next_boundary(start, daily)
        made.append(create(start, upper))
        start = upper
    return made


def _lock_timeout(cursor: object) -> None:
    cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{LOCK_TIMEOUT_MS}ms"])  # type: ignore[attr-defined]


def create(lower: datetime, upper: datetime) -> str:
    """Make the partition for [lower, upper), taking over any rows of that period from the default partition."""
    name = _name(lower, upper)
    q = connection.ops.quote_name
    with transaction.atomic(), connection.cursor() as cursor:
        _lock_timeout(cursor)
        cursor.execute(
            f'SELECT EXISTS (SELECT 1 FROM {q(DEFAULT)} WHERE "timestamp" >= %s AND "timestamp" < %s)',
            [lower, upper],
        )
        if not cursor.fetchone()[0]:
            cursor.execute(f"CREATE TABLE {q(name)} PARTITION OF {q(PARENT)} FOR VALUES FROM (%s) TO (%s)",
                           [lower, upper])
            return name
        # The default partition holds rows of this period: move them to a table of their own, then attach it
        # (PostgreSQL checks that the default partition keeps none of them, and builds the indexes).
        cursor.execute(f"LOCK TABLE {q(DEFAULT)} IN ACCESS EXCLUSIVE MODE")
        cursor.execute(f"CREATE TABLE {q(name)} (LIKE {q(PARENT)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cursor.execute(
            f'WITH moved AS (DELETE FROM {q(DEFAULT)} WHERE "timestamp" >= %s AND "timestamp" < %s RETURNING *) '
            f"INSERT INTO {q(name)} SELECT * FROM moved",
            [lower, upper],
        )
        cursor.execute(f"ALTER TABLE {q(PARENT)} ATTACH PARTITION {q(name)} FOR VALUES FROM (%s) TO (%s)",
                       [lower, upper])
    return name


def drop(partition: Partition) -> None:
    """Drop a partition, in the caller's transaction (which must already have retired its rows)."""
    if partition.is_default:
        raise ValueError("the default partition is never dropped")
    q = connection.ops.quote_name
    with connection.cursor() as cursor:
        _lock_timeout(cursor)
        cursor.execute(f"ALTER TABLE {q(PARENT)} DETACH PARTITION {q(partition.name)}")
        cursor.execute(f"DROP TABLE {q(partition.name)}")
