"""The compare and the saved experiments, through the API: every per-arm figure against the raw rows.

The expected values are plain Python over the stored `AIMetric` rows, with
statsmodels and scipy for the intervals and tests, so a wrong query cannot
agree with them by sharing code.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import time_machine
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint, proportions_ztest

from metrics_app.folding.services import fold_pending
from metrics_app.models import AIMetric, Business, Experiment
from tests.analytics.helpers import store
from tests.experiments.helpers import experiment_conversations

pytestmark = pytest.mark.django_db

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NOW = START + timedelta(days=12)
NAME = "booking-prompt"
RATES = {"v6": 0.2, "v7": 0.4}


def conversations(business_id: str, count: int, seed: int, split: float = 0.5, start: datetime = START,
                  days: int = 10) -> list[dict[str, Any]]:
    return experiment_conversations(business_id, count, seed, start=start, days=days, split=split, name=NAME,
                                    booking=RATES)


@pytest.fixture
def dental(db) -> Business:
    return Business.objects.create(id="acme-dental", name="Acme Dental", time_zone="Europe/London")


@pytest.fixture
def traffic(dental: Business) -> None:
    store(conversations(dental.id, 800, seed=1))
    store(conversations("other-clinic", 200, seed=2))  # another business: never in acme-dental's figures
    fold_pending()


def expected_arms(business_id: str, start: datetime, end: datetime) -> tuple[dict[str, dict[str, Any]], int]:
    """Per arm, from the raw rows: each conversation's flags, cost and mean latency; and the mixed ones."""
    by_conversation: dict[str, list[AIMetric]] = defaultdict(list)
    for event in AIMetric.objects.filter(business_id=business_id):
        if event.conversation_id and start <= event.timestamp < end:
            by_conversation[event.conversation_id].append(event)
    arms: dict[str, dict[str, list]] = {v: defaultdict(list) for v in ("v6", "v7")}
    mixed = 0
    for events in by_conversation.values():
        versions = {e.prompt_version for e in events} & {"v6", "v7"}
        if len(versions) != 1:
            mixed += len(versions) == 2
            continue
        arm = arms[versions.pop()]
        arm["booked"].append(any(e.appointment_booked for e in events))
        arm["requested"].append(any(e.appointment_requested for e in events))
        arm["handed_off"].append(any(e.human_handoff_requested for e in events))
        arm["errored"].append(any(e.success_rate == 0 or e.response_type == "error" for e in events))
        arm["cost"].append(float(sum(e.cost_usd or 0 for e in events)))
        latencies = [e.response_time_ms for e in events if e.response_time_ms is not None]
        arm["latency"].append(sum(latencies) / len(latencies))
        arm["all_latencies"].extend(latencies)
    return arms, mixed


def compare(api, headers: dict[str, str] | None = None, **params: Any) -> Any:
    query = {"business_id": "acme-dental", "dimension": "prompt_version", "a": "v6", "b": "v7",
             "start": START.isoformat(), "end": NOW.isoformat(), **params}
    return api.get("/api/analytics/compare", query, **(headers or {}))


@pytest.fixture
def reader(make_key, dental) -> dict[str, str]:
    _, raw = make_key(dental, can_ingest=False, can_read=True)
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_each_arms_figures_equal_the_raw_rows_and_reference_statistics(api, traffic, reader):
    response = compare(api, reader)
    assert response.status_code == 200, response.content
    body = response.json()
    expected, mixed = expected_arms("acme-dental", START, NOW)
    assert body["conversations_in_both_arms"] == mixed
    for arm, version in (("a", "v6"), ("b", "v7")):
        found, rows = body["arms"][arm], expected[version]
        n = len(rows["booked"])
        assert found["variant"] == version and found["conversations"] == n
        for rate, flag in (("booking_rate", "booked"), ("appointment_request_rate", "requested"),
                           ("handoff_rate", "handed_off"), ("error_rate", "errored")):
            low, high = proportion_confint(sum(rows[flag]), n, method="wilson")
            assert found[rate]["value"] == pytest.approx(sum(rows[flag]) / n)
            assert (found[rate]["ci_low"], found[rate]["ci_high"]) == (pytest.approx(low), pytest.approx(high))
        assert found["cost_usd"] == pytest.approx(sum(rows["cost"]))
        assert found["cost_per_conversation_usd"]["value"] == pytest.approx(np.mean(rows["cost"]))
        assert found["cost_per_booked_appointment_usd"] == pytest.approx(sum(rows["cost"]) / sum(rows["booked"]))
        assert found["conversation_latency_mean_ms"]["value"] == pytest.approx(np.mean(rows["latency"]))
        # The replies that carry the variant: from the latency sketches, within 1% of the exact percentile.
        replies = sorted(e.response_time_ms for e in AIMetric.objects.filter(
            business_id="acme-dental", prompt_version=version, timestamp__gte=START, timestamp__lt=NOW))
        for name, fraction in (("latency_p50_ms", 0.5), ("latency_p95_ms", 0.95)):
            assert found[name] == pytest.approx(float(np.quantile(replies, fraction)), rel=0.01)
    a, b = expected["v6"], expected["v7"]
    x_a, n_a, x_b, n_b = sum(a["booked"]), len(a["booked"]), sum(b["booked"]), len(b["booked"])
    booking = body["comparisons"]["booking_rate"]
    low, high = confint_proportions_2indep(x_b, n_b, x_a, n_a, method="newcomb", compare="diff")
    assert booking["difference"] == pytest.approx(x_b / n_b - x_a / n_a)
    assert (booking["ci_low"], booking["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert booking["p_value"] == pytest.approx(proportions_ztest([x_b, x_a], [n_b, n_a])[1], rel=1e-6)
    cost = body["comparisons"]["cost_per_conversation_usd"]
    welch = stats.ttest_ind(b["cost"], a["cost"], equal_var=False)
    assert cost["p_value"] == pytest.approx(welch.pvalue, rel=1e-6)
    latency = body["comparisons"]["conversation_latency_mean_ms"]
    welch = stats.ttest_ind(b["latency"], a["latency"], equal_var=False)
    assert latency["difference"] == pytest.approx(np.mean(b["latency"]) - np.mean(a["latency"]))
    assert latency["p_value"] == pytest.approx(welch.pvalue, rel=1e-6)


def test_the_verdict_names_the_arm_that_books_more(api, traffic, reader):
    body = compare(api, reader).json()
    verdict = body["verdict"]
    assert verdict["status"] == "winner" and verdict["winner"] == "v7", verdict
    assert verdict["always_valid_p_value"] < 0.05
    assert "v7 wins on booking rate" in verdict["text"]
    series = body["series"]
    assert [point["date"] for point in series][:2] == ["2026-03-02", "2026-03-03"]
    assert series[-1]["a"]["conversations"] == body["arms"]["a"]["conversations"]
    assert series[-1]["b"]["conversations_booked"] == body["arms"]["b"]["conversations_booked"]
    assert verdict["decided_on"] in {point["date"] for point in series}
    p_values = [point["always_valid_p_value"] for point in series]
    assert p_values == sorted(p_values, reverse=True)  # once significant, it stays so


def test_a_few_days_of_data_say_not_enough_data_with_the_conversations_still_needed(api, traffic, reader):
    body = compare(api, reader, end=(START + timedelta(days=1)).isoformat()).json()
    verdict = body["verdict"]
    assert verdict["status"] == "not_enough_data" and verdict["winner"] is None
    still = verdict["conversations_still_needed_per_arm"]
    needed = verdict["conversations_needed_per_arm"]
    assert still["a"] == needed["a"] - body["arms"]["a"]["conversations"]
    assert "Not enough data" in verdict["text"] and f"{still['a']:,} more" in verdict["text"]


def test_the_lift_asked_for_sets_the_sample_size(api, traffic, reader):
    small = compare(api, reader, lift=0.02).json()["verdict"]["conversations_needed_per_arm"]["a"]
    large = compare(api, reader, lift=0.2).json()["verdict"]["conversations_needed_per_arm"]["a"]
    assert small > 10 * large


def test_other_businesses_events_never_count(api, traffic, reader):
    body = compare(api, reader).json()
    stored = AIMetric.objects.filter(business_id="acme-dental").values("conversation_id").distinct().count()
    assert body["arms"]["a"]["conversations"] + body["arms"]["b"]["conversations"] <= stored
    assert compare(api, reader, business_id="other-clinic").status_code == 403


@pytest.mark.parametrize(("params", "field"), [
    ({"b": "v6"}, "b"),
    ({"dimension": "colour"}, "dimension"),
    ({"prompt_version": "v6"}, "prompt_version"),
    ({"primary_metric": "vibes"}, "primary_metric"),
    ({"minimum_lift": "2"}, "minimum_lift"),
    ({"split_a": "1"}, "split_a"),
    ({"start": "2026-03-10T00:00:00Z", "end": "2026-03-01T00:00:00Z"}, "start"),
])
def test_a_bad_question_is_a_400_naming_the_parameter(api, dental, reader, params, field):
    response = compare(api, reader, **params)
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_an_anonymous_caller_is_refused(api, dental):
    assert compare(api).status_code in (401, 403)


# --- Saved experiments.


def make_experiment(api, headers: dict[str, str], at: datetime = START, **fields: Any) -> Any:
    body = {"business_id": "acme-dental", "name": NAME, "variant_a": "v6", "variant_b": "v7", **fields}
    with time_machine.travel(at, tick=False):
        return api.post("/api/experiments/", body, content_type="application/json", **headers)


@pytest.fixture
def writer(make_key, dental) -> dict[str, str]:
    _, raw = make_key(dental, can_ingest=True, can_read=False)
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_an_experiment_counts_only_conversations_since_its_start(api, dental, writer, reader):
    early = conversations(dental.id, 300, seed=5, start=START - timedelta(days=6), days=5)
    store(early)
    made = make_experiment(api, writer)
    assert made.status_code == 201, made.content
    store(conversations(dental.id, 400, seed=6))
    fold_pending()
    experiment_id = made.json()["id"]
    with time_machine.travel(NOW, tick=False):
        body = api.get(f"/api/experiments/{experiment_id}/results", **reader).json()
    expected, _ = expected_arms(dental.id, START, NOW)
    assert body["arms"]["a"]["conversations"] == len(expected["v6"]["booked"])
    assert body["arms"]["b"]["conversations"] == len(expected["v7"]["booked"])
    assert body["period"]["start"] == START.isoformat()
    assert body["experiment"]["name"] == NAME and body["sample_ratio"]["mismatch"] is False
    for arm in body["arms"].values():
        assert arm["conversations_checked_by_hash"] == arm["conversations"]
        assert arm["conversations_on_other_arm_by_hash"] == 0


def test_a_start_in_the_past_is_refused_so_the_window_cannot_be_slid(api, dental, writer):
    response = make_experiment(api, writer, at=NOW, started_at=START.isoformat())
    assert response.status_code == 400
    assert "started_at" in response.json()["errors"]
    assert not Experiment.objects.exists()


def test_a_conversation_that_began_before_the_start_is_left_out(api, dental, writer, reader):
    event = {**conversations(dental.id, 1, seed=9)[0], "prompt_version": "v6"}
    store([{**event, "timestamp": (START - timedelta(minutes=10)).isoformat()},
           {**event, "event_id": str(uuid.uuid4()), "timestamp": (START + timedelta(minutes=5)).isoformat()}])
    fold_pending()
    made = make_experiment(api, writer).json()
    with time_machine.travel(NOW, tick=False):
        body = api.get(f"/api/experiments/{made['id']}/results", **reader).json()
    assert body["conversations_begun_before_start"] == 1
    assert body["arms"]["a"]["conversations"] + body["arms"]["b"]["conversations"] == 0


def test_a_skewed_split_is_flagged_as_a_sample_ratio_mismatch(api, dental, writer, reader):
    made = make_experiment(api, writer, split_a=0.5).json()
    store(conversations(dental.id, 600, seed=3, split=0.7))  # the chat app assigns 70/30, not 50/50
    fold_pending()
    with time_machine.travel(NOW, tick=False):
        body = api.get(f"/api/experiments/{made['id']}/results", **reader).json()
    assert body["sample_ratio"]["mismatch"] is True
    assert "Sample-ratio mismatch" in body["sample_ratio"]["text"]
    # The hash at 50/50 puts some of those conversations in the other arm: they are counted.
    assert body["arms"]["a"]["conversations_on_other_arm_by_hash"] > 0


def test_an_experiment_name_is_unique_per_business(api, dental, writer):
    assert make_experiment(api, writer).status_code == 201
    again = make_experiment(api, writer)
    assert again.status_code == 400 and "name" in again.json()["errors"]


def test_a_read_key_cannot_make_an_experiment_and_a_key_cannot_make_one_for_another_business(
        api, dental, reader, make_key):
    assert make_experiment(api, reader).status_code == 403
    other = Business.objects.create(id="other-clinic")
    _, raw = make_key(other, can_ingest=True)
    refused = make_experiment(api, {"HTTP_AUTHORIZATION": f"Bearer {raw}"})
    assert refused.status_code == 403
    assert not Experiment.objects.exists()


def test_another_businesses_experiment_is_not_found(api, dental, writer, make_key):
    made = make_experiment(api, writer).json()
    other = Business.objects.create(id="other-clinic")
    _, raw = make_key(other, can_ingest=False, can_read=True)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    for path in (f"/api/experiments/{made['id']}", f"/api/experiments/{made['id']}/results"):
        assert api.get(path, **headers).status_code == 404
    assert api.get("/api/experiments/", **headers).json() == []


def test_stopping_an_experiment_ends_its_period_there(api, dental, writer, reader):
    made = make_experiment(api, writer).json()
    store(conversations(dental.id, 200, seed=4))
    fold_pending()
    stop_at = START + timedelta(days=5)
    with time_machine.travel(stop_at, tick=False):
        stopped = api.post(f"/api/experiments/{made['id']}/stop", **writer)
    assert stopped.status_code == 200 and stopped.json()["is_running"] is False
    with time_machine.travel(NOW, tick=False):
        again = api.post(f"/api/experiments/{made['id']}/stop", **writer).json()
        body = api.get(f"/api/experiments/{made['id']}/results", **reader).json()
    assert again["ended_at"] == stopped.json()["ended_at"]
    assert datetime.fromisoformat(body["period"]["end"]) == stop_at
    expected, _ = expected_arms(dental.id, START, stop_at)
    assert body["arms"]["b"]["conversations"] == len(expected["v7"]["booked"])


def test_a_start_more_than_a_year_ahead_is_refused(api, dental, writer):
    response = make_experiment(api, writer, started_at="2031-01-01T00:00:00Z")
    assert response.status_code == 400 and "started_at" in response.json()["errors"]
