"""No input, however odd, makes /track or /track/batch answer 500."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metrics_app.ingest.validation import FIELD_NAMES, check_event
from metrics_app.models import AIMetric
from tests.helpers import json_values, post_json

pytestmark = pytest.mark.django_db

# Events built from the real field names, so most of them get past the first check.
events = st.dictionaries(st.sampled_from([*FIELD_NAMES, "extra"]), json_values, max_size=len(FIELD_NAMES) + 1)
near_valid = st.fixed_dictionaries(
    {"business_id": st.sampled_from(["acme", "b-2"]), "response_time_ms": st.integers(0, 5000),
     "tokens_used": st.integers(0, 5000)},
    optional={name: json_values for name in FIELD_NAMES if name not in ("business_id", "response_time_ms", "tokens_used")},
)

def verdict(event: object) -> bool:
    """Whether the validator accepts `event`: the one thing that decides between stored and refused."""
    return isinstance(event, dict) and check_event(event).ok


def stored(event: dict) -> bool:
    values = check_event(event).values
    return AIMetric.objects.filter(business_id=values["business_id"], event_id=values["event_id"]).exists()


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(payload=st.one_of(events, near_valid, json_values))
def test_track_never_answers_500(api, payload):
    # Hypothesis may send an event it sent before: that one is a duplicate.
    expected = (200 if stored(payload) else 201) if verdict(payload) else 400
    response = post_json(api, "/track", payload)
    assert response.status_code == expected, response.content
    body = response.json()
    if response.status_code == 400:
        assert set(body) == {"error", "errors"}


@FUZZ
@given(batch=st.lists(st.one_of(events, near_valid), max_size=8))
def test_track_batch_never_answers_500(api, batch):
    expected = 400 if not batch else 200 if all(verdict(event) for event in batch) else 207
    response = post_json(api, "/track/batch", {"events": batch})
    assert response.status_code == expected, response.content


@FUZZ
@given(raw=st.binary(max_size=400))
def test_raw_bytes_never_answer_500(api, raw):
    response = api.post("/track", data=raw or b"{", content_type="application/json")
    assert response.status_code == 400, response.content  # at most 400 random bytes never spell a valid event
    json.loads(response.content)
