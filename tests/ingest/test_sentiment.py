"""user_message and user_sentiment: the message is scored with VADER and dropped; a client's score is kept."""

from __future__ import annotations

import logging
import socket
from decimal import Decimal

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from metrics_app.ingest import sentiment
from metrics_app.models import AIMetric
from tests.helpers import assert_error_shape, assert_stored_nowhere, post_json
from tests.ingest.otlp_helpers import Call, genai_spans, protobuf_body

pytestmark = pytest.mark.django_db

CANARY = "canary-51d2e8-customer-message"
MESSAGES = [
    "Thank you so much, the appointment was perfect!",
    "This is terrible. I waited an hour and nobody called me back.",
    "Can I book a cleaning on Tuesday at 10?",
    "The dentist was great, but the price is NOT ok :(",
    "I am not unhappy with it\nbut I wouldn't say I love it either",
]


def reference(text: str) -> Decimal:
    return Decimal(repr(SentimentIntensityAnalyzer().polarity_scores(text)["compound"]))


def stored_score() -> Decimal | None:
    return AIMetric.objects.get().user_sentiment


@pytest.mark.parametrize("message", MESSAGES)
def test_a_message_is_stored_as_vaders_own_compound_score(api, seed_event, message):
    seed_event["user_message"] = message
    assert post_json(api, "/track", seed_event).status_code == 201
    assert stored_score() == reference(message)


def test_only_the_messages_opening_is_scored(api, seed_event):
    opening = "I love this place, wonderful staff. " * 40
    message = opening[:sentiment.SCORED_CHARACTERS] + " awful, horrible, the worst." * 50
    seed_event["user_message"] = message
    assert post_json(api, "/track", seed_event).status_code == 201
    assert stored_score() == reference(message[:sentiment.SCORED_CHARACTERS]) > 0


def test_a_clients_own_score_is_kept_as_sent_and_wins_over_the_message(api, seed_event):
    seed_event.update(user_sentiment=-0.25, user_message="Thank you so much, that was wonderful!")
    assert post_json(api, "/track", seed_event).status_code == 201
    assert stored_score() == Decimal("-0.2500")


def test_an_event_without_either_has_no_score(api, seed_event):
    seed_event["user_message"] = ""
    assert post_json(api, "/track", seed_event).status_code == 201
    assert stored_score() is None


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("user_sentiment", 1.5, "between -1 and 1"),
    ("user_sentiment", -1.0001, "between -1 and 1"),
    ("user_sentiment", "0.5", "JSON number"),
    ("user_sentiment", True, "JSON number"),
    ("user_message", 42, "string"),
    ("user_message", ["hello"], "string"),
    ("user_message", "x" * 10_001, "at most 10000 characters"),
])
def test_a_bad_score_or_message_gets_400_naming_the_field(api, seed_event, field, value, reason):
    seed_event[field] = value
    body = assert_error_shape(post_json(api, "/track", seed_event), 400, field)
    assert reason in body["errors"][field][0]
    assert not AIMetric.objects.exists()


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity"])
def test_a_score_that_is_no_finite_number_is_refused(api, raw):
    body = (b'{"business_id": "b", "response_time_ms": 10, "tokens_used": 1, "user_sentiment": ' + raw + b"}")
    response = api.post("/track", data=body, content_type="application/json")
    assert response.status_code == 400
    assert not AIMetric.objects.exists()


def test_an_otlp_span_carries_its_score_and_its_message_content_is_never_scored(api, business, make_key):
    key = make_key(business, can_ingest=True)[1]
    spans = genai_spans([Call("gpt-4o-mini", 800, 100, 20, sentiment=0.625),
                         Call("gpt-4o-mini", 900, 100, 20, conversation="conv-otlp-2")])
    response = api.post("/v1/traces", data=protobuf_body(spans), content_type="application/x-protobuf",
                        headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.content
    scores = dict(AIMetric.objects.values_list("conversation_id", "user_sentiment"))
    assert scores == {"conv-otlp-1": Decimal("0.6250"), "conv-otlp-2": None}


def test_the_message_is_stored_logged_answered_and_shown_nowhere(api, seed_event, superuser, logged_in, caplog):
    caplog.set_level(logging.DEBUG)
    message = f"I hate waiting, {CANARY}, really bad"
    answers = [post_json(api, "/track", {**seed_event, "user_message": message})]
    batch = [{**seed_event, "user_message": f"{CANARY} {n} thanks, great!"} for n in range(3)]
    answers.append(post_json(api, "/track/batch", {"events": batch}))
    # Refused events answer their errors without the text, whichever field is wrong.
    answers.append(post_json(api, "/track", {**seed_event, "tokens_used": -1, "user_message": CANARY}))
    answers.append(post_json(api, "/track/batch", {"events": [{**seed_event, "user_sentiment": 9,
                                                               "user_message": CANARY}]}))
    assert [a.status_code for a in answers] == [201, 200, 400, 207]
    assert AIMetric.objects.filter(user_sentiment__isnull=False).count() == 4
    for response in answers:
        assert CANARY.encode() not in response.content
    admin = logged_in(superuser)
    event = AIMetric.objects.order_by("id").first()
    for page in ("/admin/metrics_app/aimetric/", f"/admin/metrics_app/aimetric/{event.pk}/change/"):
        response = admin.get(page)
        assert response.status_code == 200
        assert CANARY.encode() not in response.content
    assert b"user_sentiment" in response.content or b"User sentiment" in response.content
    assert CANARY not in caplog.text
    assert_stored_nowhere(CANARY)


def test_scoring_needs_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the sentiment scorer opened a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    sentiment._analyzer.cache_clear()  # read the lexicons again, with the network refused
    assert sentiment.score(MESSAGES[0]) == reference(MESSAGES[0]) > 0
