"""Reads from a real streaming standby (pg_basebackup -R) on loopback, and the primary when it lags or is away."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import Permission
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection

from metrics_app.http.middleware import READS_FROM_HEADER
from metrics_app.models import Business
from tests.helpers import LiveService, on_postgres, require, staff_user
from tests.pgserver import TempPostgres
from tests.pgstandby import Standby

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]

CHECK_SECONDS = 1  # how long each worker keeps its measurement of the replica

READS = [
    "/api/analytics/summary", "/api/analytics/breakdown/intent", "/api/analytics/timeseries?bucket=hour",
    "/api/analytics/funnel", "/api/conversations/?limit=200", "/api/analytics/costs",
]


@pytest.fixture(scope="module")
def standby() -> Iterator[Standby]:
    if not on_postgres():
        pytest.skip("a streaming standby is PostgreSQL's; the run is on SQLite")
    primary = TempPostgres.from_env()
    require(primary is not None, "a PostgreSQL server started by tests.pgserver (./test.sh starts one)")
    assert primary is not None
    replica = Standby.of(primary)
    yield replica
    replica.destroy()


@pytest.fixture
def keys(make_key) -> dict[str, dict[str, str]]:
    business = Business.objects.create(id="acme-dental", time_zone="Europe/London")
    _, ingest = make_key(business, can_ingest=True, can_read=False)
    _, read = make_key(business, can_ingest=False, can_read=True)
    return {"ingest": {"Authorization": f"Bearer {ingest}"}, "read": {"Authorization": f"Bearer {read}"}}


@pytest.fixture
def services(live_service, standby) -> Callable[..., tuple[LiveService, LiveService]]:
    """The service with the replica, and one on the primary alone to compare with."""

    def start(max_lag: int = 2) -> tuple[LiveService, LiveService]:
        replica_env = {
            "DATABASE_REPLICA_URL": standby.url(connection.settings_dict["NAME"]),
            "DATABASE_REPLICA_MAX_LAG_SECONDS": str(max_lag), "DATABASE_REPLICA_CHECK_SECONDS": str(CHECK_SECONDS),
        }
        return live_service(extra_env=replica_env, folder=True), live_service()

    return start


def send(service: LiveService, headers: dict[str, str], tag: str, count: int = 40) -> None:
    events = [{"event_id": str(uuid.uuid4()), "conversation_id": f"{tag}-{n % 9}", "response_time_ms": 400 + 37 * n,
               "tokens_used": 100 + n, "input_tokens": 80 + n, "output_tokens": 20, "model_name": "gpt-4o-mini",
               "intent_detected": ["booking", "hours", "pricing"][n % 3], "appointment_booked": n % 11 == 0}
              for n in range(count)]
    status, _, body = service.request("POST", "/track/batch", {"events": events}, headers)
    assert status == 200 and body["created"] == count, body


def health(service: LiveService) -> dict[str, Any]:
    return service.request("GET", "/health")[2]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def settled(service: LiveService) -> bool:
    """Folded, and the replica has replayed all of it."""
    answer = health(service)
    return answer["folder"]["backlog_events"] == 0 and answer.get("replica", {}).get("lag_seconds") == 0


# One period for every read, so two answers of the same question are the same answer.
_NOW = datetime.now(UTC).replace(microsecond=0)
PERIOD = urlencode({"start": (_NOW - timedelta(days=1)).isoformat(), "end": (_NOW + timedelta(days=1)).isoformat()})


def read(service: LiveService, path: str, headers: dict[str, str]) -> tuple[str | None, Any]:
    path += ("&" if "?" in path else "?") + PERIOD
    status, response_headers, body = service.request("GET", path, headers=headers)
    assert status == 200, body
    return response_headers.get(READS_FROM_HEADER), body


def test_reads_come_from_the_replica_and_equal_the_primarys_once_it_has_caught_up(services, keys):
    with_replica, primary_only = services()
    send(with_replica, keys["ingest"], "first")
    wait_for(lambda: settled(with_replica), "the folder and the replica caught up")
    for path in READS:
        source, answer = read(with_replica, path, keys["read"])
        assert source == "replica", path
        assert answer == read(primary_only, path, keys["read"])[1], path
    assert read(with_replica, "/api/analytics/summary", keys["read"])[1]["summary"]["events"] == 40
    # Writes go to the primary whatever the replica's state: the ingest above is stored once, there.
    assert health(with_replica)["replica"] == {"status": "ok", "lag_seconds": 0.0}


def every_worker_looks_again() -> None:
    """Each gunicorn worker keeps its last measurement of the replica for CHECK_SECONDS and measures again on its
    next request after that: once that long has passed, every worker's next answer is measured after now."""
    time.sleep(CHECK_SECONDS + 0.2)


def test_a_lagging_or_stopped_replica_sends_reads_to_the_primary_and_health_says_so(services, keys, standby):
    with_replica, primary_only = services(max_lag=1)
    send(with_replica, keys["ingest"], "before")
    wait_for(lambda: settled(with_replica), "caught up")
    standby.pause_replay()
    try:
        send(with_replica, keys["ingest"], "during", count=25)
        wait_for(lambda: health(with_replica)["replica"]["status"] == "lagging", "the lag passes its bound")
        every_worker_looks_again()
        answer = health(with_replica)
        assert answer["status"] == "degraded" and answer["replica"]["reads_from"] == "primary"
        assert answer["replica"]["status"] == "lagging" and answer["replica"]["lag_seconds"] > 1
        source, summary = read(with_replica, "/api/analytics/summary", keys["read"])
        assert source == "primary"
        assert summary == read(primary_only, "/api/analytics/summary", keys["read"])[1]
        assert summary["summary"]["events"] == 65
    finally:
        standby.resume_replay()
    wait_for(lambda: read(with_replica, "/api/analytics/summary", keys["read"])[0] == "replica", "back on the replica")
    every_worker_looks_again()
    assert health(with_replica)["status"] == "healthy"

    standby.server.stop()
    try:
        wait_for(lambda: health(with_replica)["replica"]["status"] == "down", "the replica is seen down")
        every_worker_looks_again()
        answer = health(with_replica)
        assert answer["status"] == "degraded" and answer["replica"]["status"] == "down"
        source, summary = read(with_replica, "/api/analytics/summary", keys["read"])
        assert source == "primary" and summary["summary"]["events"] == 65
    finally:
        standby.server.start()
        standby.server.wait_ready()
    wait_for(lambda: health(with_replica)["replica"]["status"] == "ok", "the replica is back")


def session_cookie(user: Any) -> dict[str, str]:
    """A signed-in admin session for `user`, as the login page would make it, with a CSRF token."""
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    token = "k" * 32
    return {"Cookie": f"sessionid={session.session_key}; csrftoken={token}", "X-CSRFToken": token}


def test_a_staff_members_reads_right_after_their_own_write_come_from_the_primary(services, keys, standby):
    with_replica, _ = services(max_lag=120)  # a replica that is behind, but within its bound
    send(with_replica, keys["ingest"], "chat")
    wait_for(lambda: settled(with_replica), "caught up")
    staff = staff_user("owner", businesses=["acme-dental"])
    staff.user_permissions.add(Permission.objects.get(codename="view_conversation"))
    owner = session_cookie(staff)
    conversation = "/api/conversations/?conversation_id=chat-3"
    assert read(with_replica, conversation, owner)[0] == "replica"
    # The console's lists read the replica too.
    status, headers, page = with_replica.request("GET", "/admin/metrics_app/conversation/", headers=owner)
    assert status == 200 and "chat-3" in page and headers[READS_FROM_HEADER] == "replica"
    standby.pause_replay()
    try:
        status, _, body = with_replica.request(
            "POST", "/api/conversations/outcome",
            {"business_id": "acme-dental", "conversation_id": "chat-3", "appointment_booked": True}, owner)
        assert status == 200, body
        source, answer = read(with_replica, conversation, owner)
        assert source == "primary"
        assert answer["conversations"][0]["appointment_booked"] is True
        # A key without a session reads the replica, which has not replayed the outcome yet.
        source, stale = read(with_replica, conversation, keys["read"])
        assert source == "replica" and stale["conversations"][0]["appointment_booked"] is False
    finally:
        standby.resume_replay()
