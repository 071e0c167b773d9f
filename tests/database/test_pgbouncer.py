"""The PostgreSQL pass reaches its server through PgBouncer in transaction pooling mode, and what reads
rows in chunks (the CSV export, the rebuilds) works there although one Django connection's transactions
run on different server sessions."""

from __future__ import annotations

import csv
import io
import os
import uuid
from collections.abc import Iterator
from io import StringIO
from urllib.parse import urlsplit

import psycopg2
import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection
from django.urls import reverse

from metrics_app.ingest import services
from metrics_app.ingest.validation import check_event
from metrics_app.models import AIMetric, MetricTotals
from tests.helpers import on_postgres, pgbouncer_admin, require

pytestmark = pytest.mark.postgres_only

# More than one chunk of the export (2,000 rows) and of a test's own iterator below.
EVENTS = 4_500


@pytest.fixture
def pgbouncer() -> str:
    """The URL of the PgBouncer in front of the pass's server (whose admin console answers SHOW)."""
    if not on_postgres():
        pytest.skip("PgBouncer stands in front of PostgreSQL; the run is on SQLite")
    url = os.environ.get("MLOPS_TEST_PGBOUNCER_ADMIN_URL", "")
    require(bool(url), "PgBouncer in front of the test server (the pgbouncer package; tests.pgserver starts it)")
    return url


def config() -> dict[str, str]:
    return {row[0]: row[1] for row in pgbouncer_admin("SHOW CONFIG")}


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


@pytest.fixture
def other_client(pgbouncer: str) -> Iterator[psycopg2.extensions.connection]:
    """A second client of the same PgBouncer database, as another gunicorn worker would be."""
    s = connection.settings_dict
    other = psycopg2.connect(host=s["HOST"], port=s["PORT"], user=s["USER"], dbname=s["NAME"])
    yield other
    other.close()


def test_the_suite_talks_to_pgbouncer_in_transaction_mode(pgbouncer, db):
    bouncer = urlsplit(pgbouncer)
    assert (connection.settings_dict["HOST"], int(connection.settings_dict["PORT"])) == (bouncer.hostname,
                                                                                         bouncer.port)
    assert config()["pool_mode"] == "transaction"
    backend_pid()
    pools = {row[0]: row for row in pgbouncer_admin("SHOW POOLS")}
    assert connection.settings_dict["NAME"] in pools, pools
    assert connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] is True


def test_one_connection_s_transactions_run_on_whichever_server_session_is_free(
    pgbouncer, transactional_db, other_client
):
    first = backend_pid()
    client = connection.connection
    # The other client takes the server session just released (PgBouncer hands out the last one freed)
    # and holds it in an open transaction.
    with other_client.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        held = cursor.fetchone()[0]
    assert held == first

    second = backend_pid()

    assert connection.connection is client, "the same client connection throughout"
    assert second != held
    other_client.rollback()


def test_a_session_setting_does_not_follow_the_connection_but_the_time_zone_does(
    pgbouncer, transactional_db, other_client
):
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('mlops.left_behind', 'yes', false)")
        cursor.execute("SELECT current_setting('TimeZone')")
        assert cursor.fetchone()[0] == "UTC"
    with other_client.cursor() as cursor:  # holds the session that took the setting
        cursor.execute("SELECT 1")
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('mlops.left_behind', true), current_setting('TimeZone')")
        # PgBouncer re-applies the few parameters it tracks (the time zone Django sets among them);
        # anything else a session sets stays behind with the server session.
        assert cursor.fetchone() == (None, "UTC")
    other_client.rollback()


def store_many(count: int) -> None:
    events = []
    for n in range(count):
        checked = check_event({"business_id": "acme-dental", "event_id": str(uuid.uuid4()),
                               "response_time_ms": 1000 + n, "tokens_used": 100, "model_name": "gpt-4o"})
        assert checked.ok, checked.errors
        events.append(checked.values)
    services.record_events(events)


def test_a_chunked_read_outside_a_transaction_survives_a_change_of_server_session(
    pgbouncer, transactional_db, other_client, monkeypatch
):
    store_many(10)
    rows = AIMetric.objects.order_by("id").values_list("id", flat=True)

    def read_with_another_client_in_between() -> list[int]:
        chunks = rows.iterator(chunk_size=2)
        seen = [next(chunks)]
        with other_client.cursor() as cursor:  # takes the session the read began on
            cursor.execute("SELECT 1")
        seen += list(chunks)
        other_client.rollback()
        return seen

    assert read_with_another_client_in_between() == list(rows)

    # What the setting prevents: a WITH HOLD cursor declared on one session, fetched from on another.
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", False)
    # The cursor is gone on the session the next fetch lands on; Django's own close of it fails the same way.
    with pytest.raises((DatabaseError, psycopg2.Error), match='cursor "_django_curs_.*" does not exist'):
        read_with_another_client_in_between()


def test_the_csv_export_streams_every_event_through_pgbouncer(pgbouncer, transactional_db, superuser, logged_in):
    store_many(EVENTS)

    response = logged_in(superuser).get(reverse("admin:metrics_app_aimetric_export"))

    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == EVENTS
    assert {row["event_id"] for row in rows} == {str(e) for e in AIMetric.objects.values_list("event_id", flat=True)}


def test_rebuild_analytics_reads_every_event_through_pgbouncer(pgbouncer, transactional_db):
    store_many(EVENTS)
    out = StringIO()

    call_command("rebuild_analytics", "--quiet-progress", stdout=out)

    assert f"from {EVENTS} events" in out.getvalue()
    assert sum(MetricTotals.objects.values_list("events", flat=True)) == EVENTS
