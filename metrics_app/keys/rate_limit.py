"""The per-key request counters: shared by every server process, kept where a busy event table cannot block them.

- PostgreSQL: a small table of the service's database (mlops_rate_limit_slot)
  where each admitted request inserts its own numbered slot, so requests of
  one key never queue on one row lock; every host that serves the database
  shares the slots.
- SQLite: a writer locks the whole database file, so a count there would wait
  behind any write to the events and a keyed read would fail with them. The
  counters live in a file of their own beside the database instead
  (`<database>-ratelimit.sqlite3`), shared by the processes of the one host
  that an SQLite install has.

A counter that cannot answer within WAIT_SECONDS raises LimiterUnavailable, and
the request is refused with 503 and Retry-After: a limit fails closed.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from django.db import DatabaseError, connection

from metrics_app.models import ApiKey, RateLimitSlot

# A count takes microseconds; a counter still locked after this long is not coming back soon.
WAIT_SECONDS = 2.0


class LimiterUnavailable(Exception):
    """The request could not be counted, so it may not go through."""


def count_request(key: ApiKey, minute: int, limit: int) -> int:
    """Count one request of `key` in `minute` (minutes since the epoch): its place in the minute.

    A place above `limit` means refused. On PostgreSQL a refused request
    takes no place, on SQLite it does; either way every request up to the
    limit-th is admitted and none after it.
    """
    if connection.vendor == "sqlite":
        return _count_in_sqlite_file(key.prefix, minute)
    return _claim_slot(key.pk, minute, limit)


# --- PostgreSQL: a table of the service's database.


def _claim_slot(key_id: int, minute: int, limit: int) -> int:
    """Claim the next slot of the key's minute; its number, or limit + 1 when every slot is taken.

    One statement takes the slot above the highest one committed, unless that
    is past the limit. When another request took the same slot first (a
    conflict: nothing inserted), the statement runs again and finds the next.
    Each claim commits at once, so the slots taken are exactly the requests
    admitted: never more than `limit`, and none refused while a slot is free.
    """
    table = connection.ops.quote_name(RateLimitSlot._meta.db_table)
    # One round trip: the settings hold for this statement's own transaction. A slot lost to a crash is
    # harmless; waiting for the WAL flush is not.
    claim = (
        f"SET LOCAL synchronous_commit = off; SET LOCAL lock_timeout = '{int(WAIT_SECONDS * 1000)}ms'; "
        f"INSERT INTO {table} (key_id, minute, slot) "
        f"SELECT %s, %s, COALESCE(MAX(slot), 0) + 1 FROM {table} WHERE key_id = %s AND minute = %s "
        f"HAVING COALESCE(MAX(slot), 0) < %s "
        f"ON CONFLICT (key_id, minute, slot) DO NOTHING RETURNING slot"
    )
    try:
        with connection.cursor() as cursor:
            while True:
                cursor.execute(claim, [key_id, minute, key_id, minute, limit])
                row = cursor.fetchone()
                if row is not None:
                    slot = int(row[0])
                    break
                cursor.execute(
                    f"SELECT COALESCE(MAX(slot), 0) FROM {table} WHERE key_id = %s AND minute = %s", [key_id, minute]
                )
                if int(cursor.fetchone()[0]) >= limit:
                    return limit + 1
            if slot == 1:
                cursor.execute(f"DELETE FROM {table} WHERE key_id = %s AND minute < %s", [key_id, minute - 1])
    except DatabaseError as exc:
        raise LimiterUnavailable(f"the rate-limit table did not answer: {exc}") from exc
    return slot


# --- SQLite: a file of its own. One connection per thread (gunicorn's gthread workers), opened after the fork.

_local = threading.local()

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS request_count ("
    " key TEXT NOT NULL, minute INTEGER NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (key, minute)"
    ") WITHOUT ROWID"
)
_COUNT = (
    "INSERT INTO request_count (key, minute, count) VALUES (?, ?, 1) "
    "ON CONFLICT (key, minute) DO UPDATE SET count = count + 1 RETURNING count"
)


def counter_file() -> Path:
    """The counters' file: beside the SQLite database, named after it."""
    database = Path(connection.settings_dict["NAME"])
    return database.with_name(f"{database.stem}-ratelimit{database.suffix or '.sqlite3'}")


def _counter_connection() -> sqlite3.Connection:
    path = counter_file()
    cached = getattr(_local, "counter", None)
    if cached is not None and cached[0] == (os.getpid(), path):
        return cached[1]
    conn = sqlite3.connect(path, timeout=WAIT_SECONDS, isolation_level=None)
    try:
        # WAL and no fsync: many processes count at once, and a count lost to a power cut is harmless.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(_SCHEMA)
    except sqlite3.Error:
        conn.close()
        raise
    _local.counter = ((os.getpid(), path), conn)
    return conn


def _count_in_sqlite_file(key: str, minute: int) -> int:
    # Keyed by the key's prefix, which is random and never reused, unlike a row id.
    try:
        conn = _counter_connection()
        ((count,),) = conn.execute(_COUNT, (key, minute)).fetchall()
        if count == 1:
            # Writers take turns on this file, so one sweep of every key's past minutes is safe and cheap.
            conn.execute("DELETE FROM request_count WHERE minute < ?", (minute - 1,))
    except sqlite3.Error as exc:
        raise LimiterUnavailable(f"the rate-limit file {counter_file()} did not answer: {exc}") from exc
    return count


def forget(keys: list[ApiKey]) -> int:
    """Drop the counters of these keys (a business erasure); the rows or file entries dropped.

    On PostgreSQL their slots go with the keys' rows too (the foreign key
    cascades); deleting them here first keeps the count for the record.
    """
    if not keys:
        return 0
    if connection.vendor == "sqlite":
        if not counter_file().exists():
            return 0
        try:
            conn = _counter_connection()
            prefixes = [key.prefix for key in keys]
            marks = ", ".join("?" * len(prefixes))
            return conn.execute(f"DELETE FROM request_count WHERE key IN ({marks})", prefixes).rowcount
        except sqlite3.Error as exc:
            raise LimiterUnavailable(f"the rate-limit file {counter_file()} did not answer: {exc}") from exc
    deleted, _ = RateLimitSlot.objects.filter(key__in=keys).delete()
    return deleted
