"""End to end: a chat app (one script per client) talks to the real service.

Each script replays customer conversations (5 replies each, one of them a
model failure) with tracking configured only by MLOPS_SERVICE_URL and
MLOPS_API_KEY. The stored rows are counted from the database, independently
of what the clients say about themselves.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

from metrics_app.models import AIMetric
from tests.clients.helpers import (
    PY_DIR,
    TURNS_PER_CONVERSATION,
    client_env,
    restart_on_same_port,
    run_chat_app,
)
from tests.helpers import LiveService, fold_all
from tests.monitoring.helpers import total

pytestmark = pytest.mark.slow

CONVERSATIONS = 6
EXPECTED_STATUSES = [200, 200, 200, 500, 200] * CONVERSATIONS


def chat_app_command(client: str, request: pytest.FixtureRequest) -> tuple[list[str], Path]:
    if client == "typescript":
        package = request.getfixturevalue("typescript_package")
        return ["node", "build-test/fixtures/chat-app.js"], package
    return [sys.executable, str(PY_DIR / "examples" / "chat_backend.py")], PY_DIR


def assert_each_reply_stored_once(business_id: str) -> None:
    rows = AIMetric.objects.filter(business_id=business_id)
    replies = CONVERSATIONS * TURNS_PER_CONVERSATION
    assert rows.count() == replies
    # Every conversation's session has all five of its replies: none lost, none doubled.
    per_session = Counter(rows.values_list("session_id", flat=True))
    assert per_session == {f"session-{c}": TURNS_PER_CONVERSATION for c in range(CONVERSATIONS)}
    assert rows.filter(response_type="error", success_rate=0).count() == CONVERSATIONS
    assert rows.filter(appointment_requested=True).count() == CONVERSATIONS
    assert rows.filter(human_handoff_requested=True).count() == 2 * CONVERSATIONS
    assert len(set(rows.values_list("event_id", flat=True))) == replies


def assert_client_delivered_everything(summary: dict) -> None:
    stats = summary["stats"]
    assert summary["statuses"] == EXPECTED_STATUSES
    assert summary["flushed"]["complete"] is True, stats
    assert stats["created"] + stats["duplicates"] == CONVERSATIONS * TURNS_PER_CONVERSATION
    assert (stats["pending"], stats["dropped"], stats["rejected"], stats["refused"]) == (0, 0, 0, 0)


@pytest.mark.parametrize("client", ["typescript", "python"])
def test_a_chat_app_reports_every_reply_exactly_once_across_a_service_restart(
    client, request, live_service, business, make_key
):
    _, raw_key = make_key(business, can_ingest=True)
    command, cwd = chat_app_command(client, request)
    service: list[LiveService] = [live_service(workers=2)]

    def restart(stage: str) -> None:
        if stage == "PAUSED":
            # The first half is sent (or still queued); the service goes away.
            from tests.helpers import stop_service

            stop_service(service[0])
        else:
            # The second half has failed at least once against the closed port.
            service[0] = restart_on_same_port(service[0], live_service, workers=2)

    env = client_env(service[0], raw_key, CHAT_BUSINESS_ID=business.id, CHAT_CONVERSATIONS=str(CONVERSATIONS),
                     CHAT_PAUSE="1")
    summary = run_chat_app(command, cwd, env, on_pause=restart)

    assert_client_delivered_everything(summary)
    assert summary["stats"]["retries"] >= 1
    assert_each_reply_stored_once(business.id)


@pytest.mark.parametrize("client", ["typescript", "python"])
def test_metrics_move_by_the_number_of_replies_a_chat_app_reported(client, request, live_service, business, make_key):
    _, raw_key = make_key(business, can_ingest=True)
    command, cwd = chat_app_command(client, request)
    service = live_service(workers=2)
    status, _, before = service.request("GET", "/metrics")
    assert status == 200

    summary = run_chat_app(command, cwd, client_env(service, raw_key, CHAT_BUSINESS_ID=business.id,
                                                     CHAT_CONVERSATIONS=str(CONVERSATIONS)))

    fold_all()
    _, _, after = service.request("GET", "/metrics")
    assert_client_delivered_everything(summary)
    assert_each_reply_stored_once(business.id)
    replies = CONVERSATIONS * TURNS_PER_CONVERSATION
    assert total(after, "ai_requests_total") - total(before, "ai_requests_total") == replies
    assert total(after, "ai_requests_total", business_id=business.id) == replies
