"""Errors a client can cause: every one a 4xx in the error shape, the same at every door, never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest

from metrics_app.json_bodies import MAX_JSON_DEPTH

OUTCOME = "/api/conversations/outcome"


@pytest.fixture
def writer(make_key, business) -> dict[str, str]:
    _, raw = make_key(business, can_ingest=True, can_read=False)
    return {"Authorization": f"Bearer {raw}"}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def assert_error_shape(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "errors"} and body["errors"], body
    return body


# --- One strict JSON parser for every API.


@pytest.mark.django_db
@pytest.mark.parametrize("depth", [1000, MAX_JSON_DEPTH + 1])
def test_json_nested_too_deep_gets_the_same_400_from_the_outcome_api_and_the_ingest(api, writer, depth):
    outcome = api.post(OUTCOME, nested(depth), content_type="application/json", headers=writer)
    track = api.post("/track", nested(depth), content_type="application/json", headers=writer)

    assert assert_error_shape(outcome, 400) == assert_error_shape(track, 400)
    assert outcome.json()["errors"] == {"body": [f"at most {MAX_JSON_DEPTH} levels of arrays and objects"]}


@pytest.mark.django_db
def test_malformed_json_gets_the_same_400_from_the_outcome_api_and_the_ingest(api, writer):
    outcome = api.post(OUTCOME, b'{"conversation_id": NaN}', content_type="application/json", headers=writer)
    track = api.post("/track", b'{"conversation_id": NaN}', content_type="application/json", headers=writer)

    assert assert_error_shape(outcome, 400) == assert_error_shape(track, 400)
    assert outcome.json()["error"] == "Malformed JSON"


@pytest.mark.django_db
def test_an_outcome_body_over_1_mib_is_the_json_413(api, writer):
    body = json.dumps({"conversation_id": "chat-1", "appointment_booked": True, "note": "x" * (1024 * 1024)})

    response = api.post(OUTCOME, body, content_type="application/json", headers=writer)

    assert assert_error_shape(response, 413)["errors"] == {"body": ["at most 1048576 bytes"]}
