"""The fold's reads of stored sketches and conversations look each key up by its unique index: SQLite scanned
the whole table for a list of keys, and PostgreSQL did too when the table's statistics said it was empty (as a
VACUUM leaves them after a rebuild, a prune or an erasure emptied it), so a fold of 8,000 events took minutes
instead of seconds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from metrics_app import database
from metrics_app.conversations import services as conversations
from metrics_app.models import Conversation, LatencySketch
from tests.helpers import on_postgres

START = datetime(2026, 5, 1, tzinfo=UTC)
SKETCH_KEY = ("business_id", "dimension", "value", "span_minutes", "bucket")


def stored_sketches(count: int) -> list[tuple]:
    LatencySketch.objects.bulk_create(
        LatencySketch(business_id="acme-dental", dimension="", value="", span_minutes=15,
                      bucket=START + timedelta(minutes=15 * n), bins=b"\x00") for n in range(count))
    return [("acme-dental", "", "", 15, START + timedelta(minutes=15 * n)) for n in range(0, count, 40)]


def plan(sql: str, params: list) -> dict:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
        answer = cursor.fetchone()[0]
    return (json.loads(answer) if isinstance(answer, str) else answer)[0]["Plan"]


def scans_of(node: dict, table: str) -> list[dict]:
    found = [node] if node.get("Relation Name") == table else []
    for child in node.get("Plans", []):
        found += scans_of(child, table)
    return found


def said_empty(table: str) -> None:
    """The statistics a VACUUM of the emptied table left: pages, and no rows in them."""
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pg_class SET reltuples = 0 WHERE oid = %s::regclass", [table])


@pytest.fixture
def postgres(business) -> None:
    if not on_postgres():
        pytest.skip("the plan of PostgreSQL's planner; the run is on SQLite (the test above checks its plan)")


def sqlite_plan(sql: str, params: list) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        return [row[-1] for row in cursor.fetchall()]


def test_sketch_reads_are_one_index_lookup_per_key_on_sqlite(db):
    if on_postgres():
        pytest.skip("SQLite's query plan; the run is on PostgreSQL (the test below checks its plan)")
    keys = stored_sketches(4000)
    table = LatencySketch._meta.db_table
    sql = database.rows_by_key_sql(connection, table, SKETCH_KEY, (*SKETCH_KEY, "bins"), len(keys))
    params = [connection.ops.adapt_datetimefield_value(v) if isinstance(v, datetime) else v
              for key in keys for v in key]
    steps = sqlite_plan(sql, params)
    assert any(step.startswith("SEARCH t USING INDEX") and all(f"{c}=?" in step for c in SKETCH_KEY)
               for step in steps), steps
    assert not any(step.startswith("SCAN t") for step in steps), steps
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        assert len(cursor.fetchall()) == len(keys)


def test_sketch_reads_are_one_index_lookup_per_key_when_the_statistics_say_the_table_is_empty(postgres):
    keys = stored_sketches(4000)
    table = LatencySketch._meta.db_table
    said_empty(table)
    sql = database.rows_by_key_sql(connection, table, SKETCH_KEY, (*SKETCH_KEY, "bins"), len(keys))
    [scan] = scans_of(plan(sql, [value for key in keys for value in key]), table)
    assert scan["Node Type"] == "Index Scan" and all(column in scan["Index Cond"] for column in SKETCH_KEY)
    assert scan["Actual Loops"] == len(keys) and scan["Actual Rows"] == 1
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for key in keys for value in key])
        assert [row[4] for row in cursor.fetchall()] == [key[4] for key in keys]


def test_the_fold_locks_and_reads_stored_conversations_by_key_when_the_statistics_say_the_table_is_empty(postgres):
    Conversation.objects.bulk_create(
        Conversation(business_id="acme-dental", conversation_id=f"chat-{n:05d}", first_at=START, last_at=START)
        for n in range(3000))
    said_empty(Conversation._meta.db_table)
    wanted = [("acme-dental", f"chat-{n:05d}") for n in range(2990, 0, -100)] + [("acme-dental", "never-stored")]
    states = conversations._locked_states(wanted)
    assert sorted(states) == sorted(wanted[:-1])
    assert all(state.first_at == START for state in states.values())
    sql = database.rows_by_key_sql(connection, Conversation._meta.db_table, ("business_id", "conversation_id"),
                                   ("conversation_id",), len(wanted), lock=True)
    scans = scans_of(plan(sql, [value for key in sorted(wanted) for value in key]), Conversation._meta.db_table)
    assert [scan["Node Type"] for scan in scans] == ["Index Scan"] and scans[0]["Actual Loops"] == len(wanted)
