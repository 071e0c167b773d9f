"""manage.py metrics_totals: the totals per business without Prometheus, from the database or from /metrics."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from django.core.management import CommandError, call_command

from tests.conftest import post_json
from tests.pgserver import free_port


def sent_events() -> list[dict]:
    events = []
    for i in range(30):
        events.append({
            "business_id": ("dental-one", "dental-two")[i % 2],
            "event_id": str(uuid.uuid4()),
            "response_time_ms": 400 + i,
            "tokens_used": 50 + i,
            "api_cost_usd": 0.0005 * (i + 1),
            "success_rate": 0 if i % 7 == 0 else 1,
            "appointment_requested": i % 3 == 0,
            "appointment_booked": i % 6 == 0,
            "human_handoff_requested": i % 5 == 0,
        })
    return events


def expected(events: list[dict]) -> dict[str, dict[str, float]]:
    """The totals computed from what was sent, independently of the command."""
    found: dict[str, dict[str, float]] = {}
    for e in events:
        row = found.setdefault(e["business_id"], dict.fromkeys(
            ("events", "failed", "tokens", "cost_usd", "requested", "booked", "handoffs"), 0.0))
        row["events"] += 1
        row["failed"] += e["success_rate"] == 0
        row["tokens"] += e["tokens_used"]
        row["cost_usd"] += e["api_cost_usd"]
        row["requested"] += e["appointment_requested"]
        row["booked"] += e["appointment_booked"]
        row["handoffs"] += e["human_handoff_requested"]
    return found


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("metrics_totals", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def assert_same_totals(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for business, row in want.items():
        for column, value in row.items():
            assert got[business][column] == pytest.approx(value, abs=1e-9), (business, column)


@pytest.mark.django_db
def test_it_prints_the_totals_per_business_from_the_database(api):
    events = sent_events()
    assert post_json(api, "/track/batch", {"events": events}).status_code == 200
    out, err = run("--json")
    assert_same_totals(json.loads(out), expected(events))
    assert "2 businesses, 30 events" in err

    table, _ = run("--business", "dental-two")
    lines = table.splitlines()
    assert lines[0].split() == ["business_id", "events", "failed", "tokens", "cost_usd", "requested", "booked",
                                "handoffs"]
    assert len(lines) == 3 and lines[2].split()[:2] == ["dental-two", "15"]


@pytest.mark.slow
def test_it_reads_the_same_totals_from_a_running_services_metrics(live_service, settings):
    token = "totals-command-token-long-enough"
    settings.MLOPS_METRICS_TOKEN = token
    service = live_service(workers=2, extra_env={"MLOPS_METRICS_TOKEN": token})
    events = sent_events()
    status, _, body = service.request("POST", "/track/batch", {"events": events})
    assert status == 200, body
    out, _ = run("--json", "--url", f"{service.url}/metrics")
    assert_same_totals(json.loads(out), expected(events))
    from_database, _ = run("--json")
    assert_same_totals(json.loads(out), json.loads(from_database))


@pytest.mark.django_db
def test_it_fails_with_a_clear_message_when_the_service_is_unreachable():
    with pytest.raises(CommandError, match="could not read http://127.0.0.1"):
        run("--url", f"http://127.0.0.1:{free_port()}/metrics")
