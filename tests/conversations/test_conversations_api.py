"""Conversations: folded right from the events (late, out of order, retried), listed, and outcomes recorded later."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from metrics_app import listeners
from metrics_app.models import AIMetric, Business, Conversation, EventRollup
from tests.analytics.helpers import NOW
from tests.analytics.helpers import store as store_unfolded
from tests.helpers import fold_all

PERIOD = {"start": (NOW - timedelta(days=2)).isoformat(), "end": NOW.isoformat()}


def store(events: list[dict[str, Any]]) -> None:
    """Store events and fold them, as the folder does a moment after ingest: lists show folded conversations."""
    store_unfolded(events)
    fold_all()


def turn(n: int, minutes: int, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"00000000-0000-4000-8000-{n:012d}",
        "business_id": "acme-dental",
        "conversation_id": "chat-1",
        "response_time_ms": 1000 + n,
        "tokens_used": 100,
        "input_tokens": 80,
        "output_tokens": 20,
        "model_name": "gemini-1.5-flash",
        "timestamp": (NOW - timedelta(hours=3) + timedelta(minutes=minutes)).isoformat(),
        **fields,
    }


@pytest.fixture
def reader(make_key, business) -> dict[str, str]:
    _, raw = make_key(business, can_ingest=False, can_read=True)
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def writer(make_key, business) -> dict[str, str]:
    _, raw = make_key(business, can_ingest=True, can_read=False)
    return {"Authorization": f"Bearer {raw}"}


def test_late_out_of_order_and_retried_events_keep_the_conversation_right(business):
    store([turn(2, 10), turn(3, 20, appointment_requested=True)])
    store([turn(1, 0), turn(2, 10), turn(4, 30)])  # a late first turn, a retry, a new last turn
    store([turn(3, 20)])
    conversation = Conversation.objects.get(business=business, conversation_id="chat-1")
    stored = AIMetric.objects.filter(conversation_id="chat-1")
    assert conversation.turns == stored.count() == 4
    assert conversation.first_at == min(e.timestamp for e in stored)
    assert conversation.last_at == max(e.timestamp for e in stored)
    assert conversation.appointment_requested and not conversation.appointment_booked


def test_the_same_conversation_id_under_two_businesses_is_two_conversations(business):
    store([turn(1, 0), turn(2, 5, business_id="other-biz")])
    assert Conversation.objects.filter(conversation_id="chat-1").count() == 2


def test_the_list_shows_turns_tokens_cost_latency_and_outcome(api, reader, business):
    store([turn(1, 0), turn(2, 4, appointment_requested=True), turn(3, 9, human_handoff_requested=True)])
    response = api.get("/api/conversations/", PERIOD, headers=reader)
    assert response.status_code == 200, response.content
    (item,) = response.json()["conversations"]
    events = list(AIMetric.objects.filter(conversation_id="chat-1"))
    assert item["conversation_id"] == "chat-1"
    assert item["turns"] == 3
    assert item["tokens"] == sum(e.tokens_used for e in events)
    assert item["cost_usd"] == pytest.approx(float(sum(e.cost_usd for e in events)))
    assert item["latency_mean_ms"] == pytest.approx(sum(e.response_time_ms for e in events) / 3)
    assert (item["appointment_requested"], item["appointment_booked"], item["human_handoff_requested"]) == (
        True, False, True
    )


def test_the_detail_lists_the_events_in_time_order(api, reader, business):
    store([turn(2, 5), turn(1, 0), turn(3, 7)])
    pk = Conversation.objects.get(conversation_id="chat-1").pk
    response = api.get(f"/api/conversations/{pk}", headers=reader)
    assert response.status_code == 200
    events = response.json()["events"]
    assert [e["response_time_ms"] for e in events] == [1001, 1002, 1003]


def test_a_booking_recorded_later_marks_the_conversation_and_moves_the_counter_once(
    api, writer, reader, business, django_capture_on_commit_callbacks
):
    store([turn(1, 0), turn(2, 5, appointment_requested=True)])
    heard: list[list[tuple[str, str | None]]] = []
    listeners.on_bookings_recorded(heard.append)
    try:
        body = {"conversation_id": "chat-1", "appointment_booked": True, "note": "confirmed by the calendar"}
        with django_capture_on_commit_callbacks(execute=True):
            first = api.post("/api/conversations/outcome", json.dumps(body), content_type="application/json",
                             headers=writer)
        with django_capture_on_commit_callbacks(execute=True):
            again = api.post("/api/conversations/outcome", json.dumps(body), content_type="application/json",
                             headers=writer)
    finally:
        listeners.forget(heard.append)
    assert first.status_code == 200, first.content
    assert first.json()["changed"] == ["appointment_booked"]
    assert again.json()["changed"] == []
    # The repeat changed nothing at all, not even when the outcome was recorded.
    assert again.json()["conversation"]["outcome_recorded_at"] == first.json()["conversation"]["outcome_recorded_at"]
    assert heard == [[("acme-dental", "gemini-1.5-flash")]]
    assert AIMetric.objects.filter(conversation_id="chat-1", appointment_booked=True).count() == 1
    funnel = api.get("/api/analytics/funnel", PERIOD, headers=reader).json()["funnel"]
    assert {s["step"]: s["conversations"] for s in funnel["steps"]}["appointment_booked"] == 1
    summary = api.get("/api/analytics/summary", PERIOD, headers=reader).json()["summary"]
    assert summary["appointments_booked"] == 1
    assert summary["cost_per_booked_appointment_usd"] == pytest.approx(summary["cost_usd"])


@pytest.mark.parametrize("folded", ["nothing", "the first turn"])
def test_an_outcome_for_events_not_yet_folded_succeeds_and_is_counted_once(api, writer, reader, business, folded):
    store_unfolded([turn(1, 0)])
    if folded == "the first turn":
        fold_all()
    store_unfolded([turn(2, 5, appointment_requested=True)])  # the latest turn, which takes the flag, is unfolded
    body = {"conversation_id": "chat-1", "appointment_booked": True}
    answer = api.post("/api/conversations/outcome", json.dumps(body), content_type="application/json",
                      headers=writer)
    assert answer.status_code == 200, answer.content
    assert answer.json()["changed"] == ["appointment_booked"]

    def booked() -> tuple[int, int]:
        summary = api.get("/api/analytics/summary", PERIOD, headers=reader).json()["summary"]
        return summary["appointments_booked"], summary["conversations_booked"]

    assert booked() == (1, 1)
    fold_all()
    assert booked() == (1, 1)
    conversation = Conversation.objects.get(conversation_id="chat-1")
    assert (conversation.turns, conversation.appointment_booked, conversation.appointment_requested) == (2, True, True)
    kept = sorted(EventRollup.objects.values_list("business_id", "bucket", "booked", "requested"))
    call_command("rebuild_analytics", "--quiet-progress", stdout=StringIO())
    assert sorted(EventRollup.objects.values_list("business_id", "bucket", "booked", "requested")) == kept


def test_a_read_only_key_may_not_record_outcomes(api, reader, business):
    store([turn(1, 0)])
    response = api.post("/api/conversations/outcome", json.dumps({"conversation_id": "chat-1", "appointment_booked": True}),
                        content_type="application/json", headers=reader)
    assert response.status_code == 403
    assert not Conversation.objects.get(conversation_id="chat-1").appointment_booked


def test_a_key_may_not_record_outcomes_for_another_business(api, writer, business):
    store([turn(1, 0, business_id="other-biz")])
    body = {"business_id": "other-biz", "conversation_id": "chat-1", "appointment_booked": True}
    response = api.post("/api/conversations/outcome", json.dumps(body), content_type="application/json", headers=writer)
    assert response.status_code == 403
    assert not Conversation.objects.get(conversation_id="chat-1").appointment_booked


def test_an_outcome_for_an_unknown_conversation_is_a_404_and_an_empty_one_a_400(api, writer, business):
    missing = api.post("/api/conversations/outcome", json.dumps({"conversation_id": "nope", "appointment_booked": True}),
                       content_type="application/json", headers=writer)
    assert missing.status_code == 404
    empty = api.post("/api/conversations/outcome", json.dumps({"conversation_id": "nope"}),
                     content_type="application/json", headers=writer)
    assert empty.status_code == 400
    assert "non_field_errors" in empty.json()["errors"]


def test_a_staff_user_limited_to_another_business_cannot_see_the_conversation(api, business):
    from metrics_app.models import StaffBusinessAccess

    store([turn(1, 0)])
    other = Business.objects.create(id="other-biz")
    staff = User.objects.create_user("limited", password="pw-for-tests-only", is_staff=True)
    StaffBusinessAccess.objects.create(user=staff, business=other)
    api.force_login(staff)
    pk = Conversation.objects.get(conversation_id="chat-1").pk
    assert api.get(f"/api/conversations/{pk}").status_code == 404
    assert api.get("/api/conversations/", PERIOD).json()["conversations"] == []


def test_an_outcome_while_an_upgrade_rebuild_is_pending_is_a_503_not_a_500(api, writer, business):
    from metrics_app.folding import services as folding
    from metrics_app.models import FolderState
    from tests.helpers import assert_error_shape

    folding.take_lease("nobody", seconds=1)  # makes the folder's row
    FolderState.objects.update(rebuild_needed=True)
    store_unfolded([turn(1, 0)])
    body = {"conversation_id": "chat-1", "appointment_booked": True}
    answer = api.post("/api/conversations/outcome", json.dumps(body), content_type="application/json",
                      headers=writer)
    assert_error_shape(answer, 503)
    assert not Conversation.objects.exists()


def test_an_outcome_that_waits_too_long_for_the_folder_answers_503_busy(api, writer, transactional_db, monkeypatch):
    """A rebuild holds the folder's row for minutes: an outcome meanwhile is refused in time, not left hanging."""
    import threading

    from django.db import connection, transaction

    from metrics_app.conversations import services
    from metrics_app.models import FolderState
    from tests.helpers import assert_error_shape, on_postgres

    if not on_postgres():
        pytest.skip("the folder's row lock with a timeout is PostgreSQL's; SQLite writers take turns")
    Business.objects.get_or_create(id="acme-dental")
    store([turn(1, 0)])
    monkeypatch.setattr(services, "OUTCOME_WAIT_SECONDS", 0.3)
    held, release = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        with transaction.atomic():
            FolderState.objects.select_for_update().get()
            held.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    try:
        assert held.wait(10)
        body = {"conversation_id": "chat-1", "appointment_booked": True}
        answer = api.post("/api/conversations/outcome", json.dumps(body), content_type="application/json",
                          headers=writer)
    finally:
        release.set()
        holder.join()
    assert_error_shape(answer, 503)
    assert answer.json()["errors"] == {"database": ["busy"]}
    assert not Conversation.objects.filter(appointment_booked=True).exists()
