"""The seed's chat app as a real Next.js app: `next build`, `next start`, and a customer conversation over HTTP.

The app (clients/typescript/examples/nextjs) serves the seed's chat route,
clients/typescript/fixtures/app/api/chat/route.ts, with only its import path
changed, and the TypeScript drop-in linked from the package. Its model is the
fixture's deterministic stand-in (fixtures/lib/chat-model.ts), which makes no
network call. Tracking is configured only by MLOPS_SERVICE_URL and
MLOPS_API_KEY. What the service stored is read from its database and compared
with what the route answered.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from metrics_app.models import AIMetric
from tests.clients.helpers import ChatApp, client_env, restart_on_same_port
from tests.helpers import stop_service

pytestmark = pytest.mark.slow

# Eight customer turns; the fifth makes the stand-in model fail, as a provider outage would.
SCRIPT = [
    "Hello! Are you open on Saturdays?",
    "How much is a standard cleaning?",
    "Do you take new patients?",
    "I'd like to book an appointment next week.",
    "[model down] Tuesday morning please",
    "Tuesday at 10:00 works, please book it.",
    "Is there parking near the practice?",
    "Actually, can I talk to a person?",
]

# The sender waits up to 1 s to fill a batch and, after failures, backs off
# with jitter up to 30 s: a minute covers both with room to spare.
DELIVERY_TIMEOUT = 60.0


@dataclass
class Conversation:
    """One customer's chat through the app's HTTP route, as the chat widget sends it: the whole history each turn."""

    app: ChatApp
    business_id: str
    session_id: str = "session-nextjs"
    conversation_id: str = "conversation-nextjs"
    messages: list[dict[str, str]] = field(default_factory=list)
    expected: list[tuple[Any, ...]] = field(default_factory=list)

    def say(self, text: str) -> tuple[int, dict[str, Any]]:
        self.messages.append({"role": "user", "content": text})
        status, body = self.app.request(
            "POST", "/api/chat",
            {"messages": self.messages, "businessId": self.business_id, "conversationId": self.conversation_id},
            headers={"x-session-id": self.session_id},
        )
        self.messages.append({"role": "assistant", "content": body.get("message") or body.get("error", "")})
        if status == 200:
            # The row the route reports for this answer: (conversation, user length, type, reply length, success).
            self.expected.append((self.conversation_id, len(text), body["type"], len(body["message"]), 1.0))
        else:
            self.expected.append((None, 0, "error", 0, 0.0))
        return status, body

    def say_all(self, texts: list[str]) -> list[int]:
        return [self.say(text)[0] for text in texts]


def tracking_stats(app: ChatApp) -> dict[str, Any]:
    status, stats = app.request("GET", "/api/tracking")
    assert status == 200, stats
    return stats


def wait_for_stats(app: ChatApp, done, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    stats = tracking_stats(app)
    while not done(stats):
        if time.monotonic() > deadline:
            pytest.fail(f"the chat app's tracker did not get there within {timeout} s ({what}): {stats}\n{app.log()[-3000:]}")
        time.sleep(0.2)
        stats = tracking_stats(app)
    return stats


def wait_until_delivered(app: ChatApp, replies: int) -> dict[str, Any]:
    """The tracker's stats once the service has answered for every reply (bounded)."""
    return wait_for_stats(
        app, lambda s: s["pending"] == 0 and s["created"] + s["duplicates"] >= replies, DELIVERY_TIMEOUT,
        f"{replies} replies delivered",
    )


def assert_each_reply_stored_once(conversation: Conversation, stats: dict[str, Any]) -> None:
    replies = len(SCRIPT)
    assert stats["created"] + stats["duplicates"] == replies, stats
    assert (stats["pending"], stats["dropped"], stats["rejected"], stats["refused"]) == (0, 0, 0, 0), stats
    rows = AIMetric.objects.filter(business_id=conversation.business_id, session_id=conversation.session_id)
    event_ids = list(rows.values_list("event_id", flat=True))
    assert len(event_ids) == replies
    assert len(set(event_ids)) == replies
    stored = Counter(
        (conversation_id, user_length, response_type, reply_length, float(success))
        for conversation_id, user_length, response_type, reply_length, success in rows.values_list(
            "conversation_id", "user_message_length", "response_type", "ai_response_length", "success_rate"
        )
    )
    assert stored == Counter(conversation.expected)
    assert AIMetric.objects.filter(business_id=conversation.business_id).count() == replies


EXPECTED_STATUSES = [200, 200, 200, 200, 500, 200, 200, 200]


def test_the_nextjs_chat_app_stores_every_reply_once(live_service, business, make_key, serve_chat_app):
    _, raw_key = make_key(business, can_ingest=True)
    service = live_service(workers=2)
    app = serve_chat_app(client_env(service, raw_key))
    conversation = Conversation(app, business.id)

    assert conversation.say_all(SCRIPT) == EXPECTED_STATUSES

    stats = wait_until_delivered(app, len(SCRIPT))
    assert_each_reply_stored_once(conversation, stats)


def test_the_nextjs_chat_app_stores_every_reply_once_across_a_service_restart(
    live_service, business, make_key, serve_chat_app
):
    _, raw_key = make_key(business, can_ingest=True)
    service = live_service(workers=2)
    app = serve_chat_app(client_env(service, raw_key))
    conversation = Conversation(app, business.id)

    statuses = conversation.say_all(SCRIPT[:3])
    stop_service(service)
    # The chat goes on while the service is away; its replies wait in the tracker's queue.
    statuses += conversation.say_all(SCRIPT[3:5])
    wait_for_stats(app, lambda s: s["retries"] >= 1, 15.0, "a failed delivery while the service is down")
    service = restart_on_same_port(service, live_service, workers=2)
    statuses += conversation.say_all(SCRIPT[5:])

    assert statuses == EXPECTED_STATUSES
    stats = wait_until_delivered(app, len(SCRIPT))
    assert stats["retries"] >= 1
    assert_each_reply_stored_once(conversation, stats)
