"""GET /api/analytics/likely-bookings and the console's follow-up page: who is listed, with what probability
(computed here by hand from the stored coefficients), and who may see it."""

from __future__ import annotations

import math
import uuid
import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.utils.html import escape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metrics_app.models import Business, Conversation
from metrics_app.predictions import selectors, services
from tests.helpers import assert_error_shape, staff_user
from tests.predictions.helpers import chat_events, store

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # a Monday, 13:00 in London
URL = "/api/analytics/likely-bookings"


def talk(name: str, last: datetime, *, keen: bool = True, **last_fields) -> list[dict]:
    """Two replies two minutes apart, the second at `last`: keen asks to book in a good mood, else complains."""
    base = {"business_id": "acme-dental", "conversation_id": name, "tokens_used": 100, "prompt_version": "v1",
            "kb_version": "kb-3", "intent_detected": "booking" if keen else "complaint"}
    return [
        {**base, "event_id": str(uuid.uuid4()), "timestamp": (last - timedelta(minutes=2)).isoformat(),
         "response_time_ms": 1000, "user_sentiment": 0.6 if keen else -0.6, "appointment_requested": keen},
        {**base, "event_id": str(uuid.uuid4()), "timestamp": last.isoformat(), "response_time_ms": 2000,
         "user_sentiment": 0.8 if keen else -0.4, **last_fields},
    ]


def by_hand(spec: dict, last: datetime, keen: bool) -> float:
    """The probability of a `talk` conversation from the stored coefficients, its features written out."""
    local = last.astimezone(zoneinfo.ZoneInfo("Europe/London"))
    angle = 2 * math.pi * (local.hour + local.minute / 60) / 24
    values = {
        "turns": 2, "log_minutes": math.log1p(2), "requested": float(keen), "handoff": 0,
        "log_latency_ms": math.log1p(1500), "hour_sin": math.sin(angle), "hour_cos": math.cos(angle),
        "weekend": float(local.isoweekday() >= 6), "has_sentiment": 1,
        "sentiment_latest": 0.8 if keen else -0.4, "sentiment_mean": 0.7 if keen else -0.5,
        "intent:booking" if keen else "intent:complaint": 1,
        "prompt_version:v1": 1, "kb_version:kb-3": 1,
    }
    logit = spec["intercept"] + sum(
        coefficient * (values.get(name, 0.0) - mean) / scale
        for name, coefficient, mean, scale in zip(spec["features"], spec["coefficients"], spec["mean"],
                                                  spec["scale"], strict=True)
    )
    return 1 / (1 + math.exp(-logit))


@pytest.fixture
def trained(business) -> Business:
    # Training conversations all ended more than the look-back ago, so only the ones below are follow-up candidates.
    store(chat_events(business.id, 1200, seed=7, end=NOW - timedelta(days=selectors.LOOK_BACK_DAYS + 1)))
    with time_machine.travel(NOW, tick=False):
        assert services.train(business).model.usable
    store([
        *talk("keen-ended", NOW - timedelta(minutes=45)),
        *talk("keen-open", NOW - timedelta(minutes=15)),
        *talk("cold", NOW - timedelta(minutes=20), keen=False),
        *talk("keen-booked", NOW - timedelta(minutes=20), appointment_booked=True),
        *talk("keen-handed-off", NOW - timedelta(minutes=20), human_handoff_requested=True),
        *talk("keen-still-talking", NOW - timedelta(minutes=5)),
        *talk("keen-long-ago", NOW - timedelta(days=selectors.LOOK_BACK_DAYS, minutes=5)),
    ])
    return business


@pytest.fixture
def reader(make_key, business) -> dict[str, str]:
    _, raw = make_key(business, can_ingest=False, can_read=True)
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def ask(api, headers: dict[str, str], **params):
    with time_machine.travel(NOW, tick=False):
        return api.get(URL, {"business_id": "acme-dental", **params}, **headers)


def test_quiet_conversations_likely_to_book_are_listed_likeliest_first_with_their_probability(api, trained, reader):
    response = ask(api, reader)
    assert response.status_code == 200, response.content
    body = response.json()
    model = selectors.latest_model(trained.id)
    assert model is not None
    assert body["predictions_available"] is True and body["reason"] == model.reason
    base = model.metrics["base_rate"]
    assert body["threshold"] == pytest.approx(min(2 * base, (1 + base) / 2))
    assert body["scored"] == 3  # keen-ended, keen-open, cold: the others are booked, handed off, talking or old
    expected = {
        "keen-ended": by_hand(model.spec, NOW - timedelta(minutes=45), keen=True),
        "keen-open": by_hand(model.spec, NOW - timedelta(minutes=15), keen=True),
    }
    assert by_hand(model.spec, NOW - timedelta(minutes=20), keen=False) < body["threshold"]
    listed = {row["conversation_id"]: row for row in body["follow_ups"]}
    assert set(listed) == set(expected)
    assert [row["conversation_id"] for row in body["follow_ups"]] == sorted(expected, key=lambda c: -expected[c])
    for name, probability in expected.items():
        assert listed[name]["probability"] == pytest.approx(probability, rel=1e-9)
    assert listed["keen-ended"]["ended"] is True and listed["keen-open"]["ended"] is False
    assert listed["keen-open"]["quiet_minutes"] == 15.0 and listed["keen-open"]["turns"] == 2


def test_the_answer_carries_the_models_held_out_evaluation(api, trained, reader):
    body = ask(api, reader).json()
    model = selectors.latest_model(trained.id)
    assert model is not None
    evaluation = body["model"]
    assert (evaluation["brier"], evaluation["base_brier"], evaluation["base_rate"]) == (
        model.metrics["brier"], model.metrics["base_brier"], model.metrics["base_rate"])
    assert evaluation["brier"] < evaluation["base_brier"]
    assert evaluation["reliability"] == model.reliability and len(evaluation["reliability"]) == 10
    assert evaluation["trained_at"] == NOW.isoformat() and evaluation["status"] == "usable"


def test_quiet_minutes_moves_the_line_between_talking_and_quiet(api, trained, reader):
    names = [row["conversation_id"] for row in ask(api, reader, quiet_minutes=3).json()["follow_ups"]]
    assert "keen-still-talking" in names
    names = [row["conversation_id"] for row in ask(api, reader, quiet_minutes=30).json()["follow_ups"]]
    assert names == ["keen-ended"]
    assert len(ask(api, reader, quiet_minutes=3, limit=1).json()["follow_ups"]) == 1


def test_a_business_never_trained_has_no_predictions_and_is_told_how_to_get_them(api, business, reader):
    body = ask(api, reader).json()
    assert body["predictions_available"] is False and body["model"] is None
    assert body["reason"] == selectors.NEVER_TRAINED and body["follow_ups"] == []


def test_a_business_whose_model_is_no_better_than_the_base_rate_gets_no_predictions_and_why(api, business, reader):
    store(chat_events(business.id, 1200, seed=8, end=NOW - timedelta(days=8), signal=False))
    store(talk("keen-open", NOW - timedelta(minutes=15)))
    with time_machine.travel(NOW, tick=False):
        model = services.train(business).model
    body = ask(api, reader).json()
    assert body["predictions_available"] is False and body["follow_ups"] == [] and body["threshold"] is None
    assert body["reason"] == model.reason and "does not beat the base rate" in body["reason"]
    assert body["model"]["brier"] >= body["model"]["base_brier"] * (1 - services.MIN_SKILL)


# --- Who may ask, and bad questions.


def test_a_key_of_another_business_is_refused(api, trained, make_key):
    other = Business.objects.create(id="other-clinic")
    _, raw = make_key(other, can_ingest=False, can_read=True)
    assert_error_shape(ask(api, {"HTTP_AUTHORIZATION": f"Bearer {raw}"}), 403)


def test_an_ingest_key_and_an_anonymous_caller_are_refused(api, trained, make_key):
    _, raw = make_key(trained, can_ingest=True, can_read=False)
    assert ask(api, {"HTTP_AUTHORIZATION": f"Bearer {raw}"}).status_code == 403
    assert ask(api, {}).status_code in (401, 403)


def test_a_staff_member_limited_to_another_business_is_refused_and_one_of_theirs_answers(api, trained, logged_in):
    Business.objects.create(id="other-clinic")
    limited = staff_user("limited", businesses=["other-clinic"])
    assert_error_shape(ask(logged_in(limited), {}), 403)
    allowed = staff_user("allowed", businesses=["acme-dental"])
    assert ask(logged_in(allowed), {}).status_code == 200


def test_an_agency_key_asking_for_a_business_that_does_not_exist_gets_a_404(api, business, make_key):
    _, raw = make_key(None, can_ingest=False, can_read=True)
    response = api.get(URL, {"business_id": "nobody-here"}, HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_error_shape(response, 404)


@pytest.mark.parametrize("params, field", [
    ({"business_id": None}, "business_id"),
    ({"quiet_minutes": "0"}, "quiet_minutes"),
    ({"quiet_minutes": "ten"}, "quiet_minutes"),
    ({"quiet_minutes": str(selectors.MAX_QUIET_MINUTES + 1)}, "quiet_minutes"),
    ({"limit": "1000"}, "limit"),
    ({"business_id": "x" * 300}, "business_id"),
    ({"business_id": "no spaces"}, "business_id"),
])
def test_bad_input_gets_a_400_in_the_one_error_shape(api, business, reader, params, field):
    query = {"business_id": "acme-dental", **params}
    response = api.get(URL, {k: v for k, v in query.items() if v is not None}, **reader)
    assert_error_shape(response, 400, field)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.sampled_from(["business_id", "quiet_minutes", "limit"]), st.text(max_size=30)))
def test_no_query_gets_a_500(api, business, make_key, params):
    _, raw = make_key(None, can_ingest=False, can_read=True)
    response = api.get(URL, params, HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code in (200, 400, 403, 404), response.content


def test_the_schema_documents_the_endpoint_and_its_errors(api, db):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"][URL]["get"]
    assert {"200", "400", "403", "404"} <= set(operation["responses"])
    assert {p["name"] for p in operation["parameters"]} >= {"business_id", "quiet_minutes", "limit"}


# --- The console's follow-up page.

PAGE = "/admin/metrics_app/bookingmodel/follow-up/"


def page(client, **params):
    with time_machine.travel(NOW, tick=False):
        return client.get(PAGE, params)


def test_the_page_lists_the_follow_ups_linked_to_their_conversations_beside_the_evaluation(trained, logged_in,
                                                                                            superuser):
    response = page(logged_in(superuser), business="acme-dental")
    assert response.status_code == 200
    html = response.content.decode()

    for name in ("keen-ended", "keen-open"):
        pk = Conversation.objects.get(conversation_id=name).pk
        assert f'href="/admin/metrics_app/conversation/{pk}/change/"' in html
    assert "cold" not in [row["conversation_id"] for row in response.context["rows"]]
    model = selectors.latest_model(trained.id)
    assert model is not None and escape(model.reason) in html
    assert f"{model.metrics['brier']:.4f}" in html and f"{model.metrics['base_brier']:.4f}" in html


def test_a_limited_staff_member_sees_only_their_businesses_on_the_page(trained, logged_in, staff_factory):
    Business.objects.create(id="other-clinic")
    limited = staff_factory("limited", businesses=["other-clinic"],
                            perms=("metrics_app.view_bookingmodel", "metrics_app.view_conversation"))
    response = page(logged_in(limited), business="acme-dental")
    assert response.status_code == 200
    assert [b.id for b in response.context["businesses"]] == ["other-clinic"]
    assert response.context["business"].id == "other-clinic" and response.context["rows"] == []
    assert "not yours to see" in response.content.decode()


def test_staff_without_the_booking_model_permission_may_not_open_the_page(trained, logged_in, staff_factory):
    assert page(logged_in(staff_factory("viewer", perms=()))).status_code == 403


def test_the_trainings_list_shows_only_visible_businesses(trained, logged_in, staff_factory):
    other = Business.objects.create(id="other-clinic")
    with time_machine.travel(NOW, tick=False):
        services.train(other)
    limited = staff_factory("limited", businesses=["other-clinic"], perms=("metrics_app.view_bookingmodel",))
    response = logged_in(limited).get("/admin/metrics_app/bookingmodel/")
    assert response.status_code == 200
    assert [row.business_id for row in response.context["cl"].result_list] == ["other-clinic"]
    assert "Likely bookings to follow up" in response.content.decode()


def test_the_conversations_list_links_to_the_follow_up_page(business, logged_in, superuser):
    response = logged_in(superuser).get("/admin/metrics_app/conversation/")
    assert response.status_code == 200
    assert f'href="{PAGE}"' in response.content.decode()
