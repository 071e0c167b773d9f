"""Whether the database can take a write now: "ok", "busy" or "unreachable".

SQLite lets one writer at a time hold the whole file. While another writer
holds it (a long transaction, a backup, a second process), reads still work
but every write waits, so `SELECT 1` says nothing about it: the probe takes the
write lock for a moment instead. A lock held by another writer is "busy", not
"unreachable": the database is there and the client should simply retry.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import QuerySet

OK = "ok"
BUSY = "busy"
UNREACHABLE = "unreachable"

# How long /health waits for SQLite's write lock before it says "busy". Writes
# normally hold it for milliseconds; a load balancer's probe times out in seconds.
PROBE_WAIT_SECONDS = 1.0

_SQLITE_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED (the module names them from Python 3.11 on)
# PostgreSQL's lock_not_available (a lock_timeout ran out) and query_canceled (a statement_timeout did):
# the server is there and answering, only too loaded for this statement now.
_POSTGRES_BUSY_CODES = {"55P03", "57014"}


def is_busy(exc: BaseException) -> bool:
    """A database error that means "locked by another writer, retry soon" rather than "gone"."""
    cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    if getattr(cause, "pgcode", None) in _POSTGRES_BUSY_CODES:
        return True
    if not isinstance(cause, sqlite3.OperationalError):
        return False
    code = getattr(cause, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in _SQLITE_BUSY_CODES
    return "is locked" in str(cause)


@contextmanager
def sqlite_lock_wait(connection: BaseDatabaseWrapper, seconds: float) -> Iterator[None]:
    """Within the block, an SQLite write waits at most `seconds` for the lock (0: not at all).

    Elsewhere a writer waits the connection's own timeout (DB_BUSY_TIMEOUT).
    Nothing changes on other databases.
    """
    if connection.vendor != "sqlite":
        yield
        return
    configured = float(connection.settings_dict["OPTIONS"].get("timeout", 5))
    with connection.cursor() as cursor:
        cursor.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
        try:
            yield
        finally:
            cursor.execute(f"PRAGMA busy_timeout = {int(configured * 1000)}")


@dataclass(frozen=True)
class Probe:
    state: str
    error: str | None = None


def probe(connection: BaseDatabaseWrapper) -> Probe:
    """A real round trip; on SQLite also a moment's hold of the write lock."""
    try:
        if connection.vendor == "sqlite" and not connection.in_atomic_block:
            with sqlite_lock_wait(connection, PROBE_WAIT_SECONDS), connection.cursor() as cursor:
                cursor.execute("BEGIN IMMEDIATE")
                cursor.execute("ROLLBACK")
        else:
            # PostgreSQL locks rows, not the database; an open transaction (tests) already holds SQLite's lock.
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
    except DatabaseError as exc:
        if is_busy(exc):
            return Probe(BUSY, type(exc).__name__)
        connection.close()
        return Probe(UNREACHABLE, type(exc).__name__)
    return Probe(OK)


@contextmanager
def snapshot(connection: BaseDatabaseWrapper) -> Iterator[None]:
    """Within the block, every read sees the database as of one moment, and no write waits on it.

    PostgreSQL: a read-only REPEATABLE READ transaction. SQLite (WAL): a
    deferred transaction, which reads one snapshot and takes no write lock
    (the project's transactions are IMMEDIATE, so it is opened by hand). Inside
    a transaction already open, the block reads in that one.
    """
    if connection.in_atomic_block:
        yield
        return
    if connection.vendor == "postgresql":
        with transaction.atomic(using=connection.alias):
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield
        return
    connection.ensure_connection()
    if connection.connection.in_transaction:  # a snapshot opened by an outer block
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("BEGIN DEFERRED")
    try:
        yield
    except BaseException:
        try:
            with connection.cursor() as cursor:
                cursor.execute("ROLLBACK")
        except DatabaseError:
            pass  # a connection broken by the error itself: the error says more
        raise
    with connection.cursor() as cursor:
        cursor.execute("COMMIT")


def in_id_pages(rows: QuerySet, fields: tuple[str, ...], chunk: int) -> Iterator[dict[str, Any]]:
    """`rows` as `values(*fields)` dicts (with "id") in id order, `chunk` rows a query, each after the last id.

    Memory holds one chunk whatever the cursor: behind a transaction pooler (DATABASE_POOLING) Django reads
    .iterator() through ordinary cursors, which fetch every row at once. Unlike one cursor, a later page
    sees rows committed meanwhile: bound `rows` by a settled id where that matters.
    """
    ordered = rows.order_by("id").values("id", *fields)
    last: int | None = None
    while True:
        page = list((ordered if last is None else ordered.filter(id__gt=last))[:chunk])
        yield from page
        if len(page) < chunk:
            return
        last = page[-1]["id"]


def rows_by_key_sql(
    connection: BaseDatabaseWrapper, table: str, key: tuple[str, ...], columns: tuple[str, ...], count: int,
    lock: bool = False,
) -> str:
    """A SELECT of `columns` from `table` for `count` values of its unique `key`, given as `count` x len(key) params.

    Each key is one lookup of the unique index, in the keys' order, so with `lock` (FOR UPDATE, PostgreSQL
    only) sorted keys take their row locks in one order. The plain `WHERE (key) IN (VALUES ...)` is not:
    SQLite scans the whole table for it and tests each row against the list, and PostgreSQL plans it from the
    table's statistics, which after a VACUUM of an emptied table (a rebuild, a prune, an erasure) say no rows,
    and then walks the whole index comparing every row with every key.
    """
    q = connection.ops.quote_name
    listed = ", ".join(["(" + ", ".join(["%s"] * len(key)) + ")"] * count)
    selected = ", ".join(f"t.{q(c)}" for c in columns)
    if connection.vendor != "postgresql":
        # SQLite keeps the left table of a CROSS JOIN outside: the list drives, the index answers.
        match = " AND ".join(f"t.{q(column)} = wanted.column{n + 1}" for n, column in enumerate(key))
        return f"SELECT {selected} FROM (VALUES {listed}) AS wanted CROSS JOIN {q(table)} AS t ON {match}"
    wanted = ", ".join(f"k{n}" for n in range(len(key)))
    match = " AND ".join(f"t.{q(column)} = wanted.k{n}" for n, column in enumerate(key))
    # LIMIT 1 keeps the subquery a lookup per key (the key is unique) instead of being folded into a join.
    return (
        f"SELECT found.* FROM (VALUES {listed}) AS wanted ({wanted}) CROSS JOIN LATERAL ("
        f"SELECT {selected} FROM {q(table)} AS t WHERE {match} LIMIT 1{' FOR UPDATE' if lock else ''}) AS found"
    )
