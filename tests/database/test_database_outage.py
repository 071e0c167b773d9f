"""The real PostgreSQL server stops in the middle of ingest: 503, then nothing half-written.

The service talks to the server directly here, not through the PgBouncer of the PostgreSQL pass: these
tests are about what the service does when PostgreSQL goes away, and behind a pooler that first depends
on the pooler. One test shows what it depends on: PgBouncer holds a query for a server connection up to
its query_wait_timeout, then closes the client, and the request gets its 503.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.db import connection

from metrics_app.models import AIMetric
from tests.helpers import direct_database_url_for_subprocess, on_postgres, pgbouncer_admin, require
from tests.pgserver import TempPostgres

pytestmark = pytest.mark.postgres_only

BATCH = 50


@dataclass
class _Server:
    """The pass's PostgreSQL server, stopped and started under a service that talks to it directly."""

    server: TempPostgres

    def stop(self, mode: str) -> None:
        self.server.stop(mode)

    def start(self) -> None:
        self.server.start()
        self.server.wait_ready()
        if os.environ.get("MLOPS_TEST_PGBOUNCER_ADMIN_URL"):
            # PgBouncer's idle server connections died with the server: new ones for the test's own queries.
            pgbouncer_admin("RECONNECT")
        connection.close()


@pytest.fixture
def pg_server() -> Iterator[_Server]:
    if not on_postgres():
        pytest.skip("this test stops a PostgreSQL server; the run is on SQLite")
    server = TempPostgres.from_env()
    require(server is not None, "a PostgreSQL server started by tests.pgserver (./test.sh starts one)")
    assert server is not None
    yield _Server(server)
    _Server(server).start()  # whatever happened, leave the server running for the tests after this one


def direct_service(live_service, workers: int):
    return live_service(workers=workers, extra_env={
        "DATABASE_URL": direct_database_url_for_subprocess(), "DATABASE_POOLING": "none",
    })


def batch(tag: str) -> dict:
    return {
        "events": [
            {"business_id": "acme", "event_id": str(uuid.uuid4()), "conversation_id": tag,
             "response_time_ms": 900, "tokens_used": 100 + i}
            for i in range(BATCH)
        ]
    }


class _Senders:
    """Four threads sending the batches one by one, keeping each batch's answer."""

    def __init__(self, service, batches: dict[str, dict]) -> None:
        self.service, self.batches = service, batches
        self.answers: dict[str, int] = {}
        self.retry_after: list[str] = []
        self.outage_seen = threading.Event()
        self._names = iter(list(batches))
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._send) for _ in range(4)]
        for thread in self.threads:
            thread.start()

    def _send(self) -> None:
        while True:
            with self._lock:
                name = next(self._names, None)
            if name is None:
                return
            status, headers, _ = self.service.request("POST", "/track/batch", self.batches[name])
            self.answers[name] = status
            if status == 503:
                self.retry_after.append(headers.get("Retry-After", ""))
                self.outage_seen.set()


def test_a_stopped_database_gets_503_and_no_batch_is_half_written(live_service, pg_server):
    service = direct_service(live_service, workers=2)
    batches = {f"batch-{n}": batch(f"batch-{n}") for n in range(400)}
    senders = _Senders(service, batches)
    answers, retry_after, outage_seen, threads = (
        senders.answers, senders.retry_after, senders.outage_seen, senders.threads
    )
    # Stop the server while batches are in flight.
    while len(answers) < 20:
        threading.Event().wait(0.01)
    pg_server.stop("immediate")
    outage_seen.wait(timeout=30)
    status, headers, body = service.request("GET", "/health")
    assert status == 503 and body["status"] == "unhealthy"
    pg_server.start()
    for thread in threads:
        thread.join(timeout=120)

    assert outage_seen.is_set(), "no request met the stopped database"
    assert retry_after and all(value.isdigit() and int(value) >= 1 for value in retry_after)
    assert set(Counter(answers.values())) <= {200, 503}

    connection.close()
    per_batch = Counter(AIMetric.objects.values_list("conversation_id", flat=True))
    for name, status in answers.items():
        if status == 200:
            assert per_batch[name] == BATCH, f"{name} was acknowledged but holds {per_batch[name]} rows"
    # A batch refused with 503 may have committed just before the server stopped; whatever the
    # answer, every batch with rows holds all of them.
    assert set(per_batch.values()) == {BATCH}, per_batch

    # The client retries what got 503: everything ends up stored exactly once.
    for name, status in answers.items():
        if status != 200:
            status, _, body = service.request("POST", "/track/batch", batches[name])
            assert status == 200, body
    per_batch = Counter(AIMetric.objects.values_list("conversation_id", flat=True))
    assert per_batch == {name: BATCH for name in batches}
    assert service.request("GET", "/health")[0] == 200


@pytest.mark.parametrize("through", ["the server itself", "pgbouncer"])
def test_a_single_event_sent_while_the_database_is_down_gets_503_and_is_stored_once_on_retry(
    live_service, pg_server, through
):
    if through == "pgbouncer":
        require(bool(os.environ.get("MLOPS_TEST_PGBOUNCER_ADMIN_URL")), "PgBouncer in front of the test server")
        service = live_service(workers=1)
    else:
        service = direct_service(live_service, workers=1)
    event = {"business_id": "acme", "event_id": str(uuid.uuid4()), "response_time_ms": 1200, "tokens_used": 90}
    pg_server.stop("fast")

    started = time.monotonic()
    status, headers, body = service.request("POST", "/track", event)
    # Behind PgBouncer, after its query_wait_timeout (TempPgBouncer): well before gunicorn's own timeout.
    assert time.monotonic() - started < 20
    assert status == 503, body
    assert int(headers["Retry-After"]) >= 1
    assert set(body) == {"error", "errors"}

    pg_server.start()
    status, _, body = service.request("POST", "/track", event)
    assert status == 201, body
    assert service.request("POST", "/track", event)[0] == 200
    connection.close()
    assert AIMetric.objects.filter(event_id=event["event_id"]).count() == 1
