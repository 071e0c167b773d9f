"""Another writer holds the database's lock: /health says "busy", keyed reads go on, writes answer 503 "busy".

And the per-key rate limiter, when it cannot count, refuses with 503 and
Retry-After rather than let a request through uncounted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.conf import settings
from django.db import connection

from metrics_app.keys import rate_limit
from metrics_app.models import AIMetric, RateLimitSlot
from tests.helpers import on_postgres

pytestmark = pytest.mark.slow

KEYS_REQUIRED = {"MLOPS_ALLOW_ANONYMOUS_CHAT": "false", "DB_BUSY_TIMEOUT": "1"}
SUMMARY = "/api/analytics/summary"
EVENT = {"business_id": "acme-dental", "response_time_ms": 900, "tokens_used": 80}


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


@contextmanager
def sqlite_write_lock(path: str) -> Iterator[None]:
    """A second connection that holds the file's write lock, as a long transaction elsewhere would."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


@contextmanager
def postgres_table_lock(table: str) -> Iterator[None]:
    import psycopg2

    s = connection.settings_dict
    other = psycopg2.connect(host=s["HOST"], port=s["PORT"], dbname=s["NAME"], user=s["USER"], password=s["PASSWORD"])
    try:
        with other.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        other.rollback()
        other.close()


def limiter_locked():
    if on_postgres():
        return postgres_table_lock(RateLimitSlot._meta.db_table)
    return sqlite_write_lock(str(rate_limit.counter_file()))


def test_a_locked_sqlite_database_is_busy_and_keyed_reads_go_on(live_service, business, make_key):
    if on_postgres():
        pytest.skip("SQLite's database-wide write lock; the run is on PostgreSQL")
    _, reader = make_key(business, can_ingest=False, can_read=True)
    _, writer = make_key(business)
    service = live_service(workers=1, extra_env=KEYS_REQUIRED)

    with sqlite_write_lock(connection.settings_dict["NAME"]):
        status, headers, health = service.request("GET", "/health")
        read_status, _, read = service.request("GET", SUMMARY, headers=bearer(reader))
        write_status, write_headers, write = service.request("POST", "/track", EVENT, bearer(writer))

    assert status == 503, health
    assert health["status"] == "unhealthy" and health["database"]["status"] == "busy"
    assert int(headers["Retry-After"]) == settings.MLOPS_RETRY_AFTER_SECONDS
    assert read_status == 200, read
    assert write_status == 503 and write["errors"] == {"database": ["busy"]}, write
    assert int(write_headers["Retry-After"]) == settings.MLOPS_RETRY_AFTER_SECONDS
    assert AIMetric.objects.count() == 0
    # The lock gone, both answer again.
    assert service.request("GET", "/health")[0] == 200
    assert service.request("POST", "/track", EVENT, bearer(writer))[0] == 201


def test_a_rate_limiter_that_cannot_count_refuses_with_503_and_retry_after(live_service, business, make_key):
    _, reader = make_key(business, can_ingest=False, can_read=True)
    _, writer = make_key(business)
    service = live_service(workers=1, extra_env=KEYS_REQUIRED)
    assert service.request("GET", SUMMARY, headers=bearer(reader))[0] == 200

    with limiter_locked():
        answers = [
            service.request("GET", SUMMARY, headers=bearer(reader)),
            service.request("POST", "/track", EVENT, bearer(writer)),
        ]

    for status, headers, body in answers:
        assert status == 503, body
        assert set(body) == {"error", "errors"} and "rate_limit" in body["errors"], body
        assert int(headers["Retry-After"]) == settings.MLOPS_RETRY_AFTER_SECONDS
    assert AIMetric.objects.count() == 0
    assert service.request("GET", SUMMARY, headers=bearer(reader))[0] == 200


def test_a_statement_cancelled_by_its_timeout_counts_as_busy_not_unreachable(db):
    """A read that runs out of statement_timeout answers 503 "busy" (retry), not "unreachable"."""
    from django.db import OperationalError, transaction

    from metrics_app import database

    if not on_postgres():
        pytest.skip("statement_timeout is PostgreSQL's; the run is on SQLite")
    with pytest.raises(OperationalError) as cancelled, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 10")
        cursor.execute("SELECT pg_sleep(1)")
    assert database.is_busy(cancelled.value)
