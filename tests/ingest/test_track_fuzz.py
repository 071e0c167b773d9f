"""No input, however odd, makes /track or /track/batch answer 500."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metrics_app.ingest.validation import FIELD_NAMES
from tests.helpers import json_values, post_json

pytestmark = pytest.mark.django_db

# Events built from the real field names, so most of them get past the first check.
events = st.dictionaries(st.sampled_from([*FIELD_NAMES, "extra"]), json_values, max_size=len(FIELD_NAMES) + 1)
near_valid = st.fixed_dictionaries(
    {"business_id": st.sampled_from(["acme", "b-2"]), "response_time_ms": st.integers(0, 5000),
     "tokens_used": st.integers(0, 5000)},
    optional={name: json_values for name in FIELD_NAMES if name not in ("business_id", "response_time_ms", "tokens_used")},
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(payload=st.one_of(events, near_valid, json_values))
def test_track_never_answers_500(api, payload):
    response = post_json(api, "/track", payload)
    assert response.status_code in (200, 201, 400), response.content
    body = response.json()
    if response.status_code == 400:
        assert set(body) == {"error", "errors"}


@FUZZ
@given(batch=st.lists(st.one_of(events, near_valid), max_size=8))
def test_track_batch_never_answers_500(api, batch):
    response = post_json(api, "/track/batch", {"events": batch})
    assert response.status_code in (200, 207, 400), response.content


@FUZZ
@given(raw=st.binary(max_size=400))
def test_raw_bytes_never_answer_500(api, raw):
    response = api.post("/track", data=raw or b"{", content_type="application/json")
    assert response.status_code in (201, 400), response.content
    json.loads(response.content)
