"""manage.py metrics_totals: the totals per business without Prometheus, from the database or from /metrics."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.management import CommandError, call_command

from tests.helpers import fold_all, post_json
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
    fold_all()
    out, _ = run("--json", "--url", f"{service.url}/metrics")
    assert_same_totals(json.loads(out), expected(events))
    from_database, _ = run("--json")
    assert_same_totals(json.loads(out), json.loads(from_database))


@pytest.mark.django_db
def test_it_fails_with_a_clear_message_when_the_service_is_unreachable():
    with pytest.raises(CommandError, match="could not read http://127.0.0.1"):
        run("--url", f"http://127.0.0.1:{free_port()}/metrics")


def exposition(totals: dict[str, dict[str, float]]) -> str:
    """A /metrics page whose counters hold `totals`, as the service would write it."""
    from metrics_app.management.commands.metrics_totals import COLUMNS

    lines = []
    for column, name in COLUMNS.items():
        lines.append(f"# TYPE {name} counter")
        for business, row in totals.items():
            lines.append(f'{name}{{business_id="{business}"}} {float(row[column])}')
    return "\n".join(lines) + "\n"


@pytest.fixture
def metrics_page() -> Iterator[tuple[str, dict]]:
    """A stand-in /metrics on 127.0.0.1: set page["text"] to what it serves."""
    page = {"text": ""}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name for the handler
            body = page["text"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics", page
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.django_db
def test_counts_are_whole_numbers_in_the_json_from_the_database_and_from_metrics(api, metrics_page):
    events = sent_events()
    assert post_json(api, "/track/batch", {"events": events}).status_code == 200
    url, page = metrics_page
    page["text"] = exposition(expected(events))
    for args in (["--json"], ["--json", "--url", url]):
        out, _ = run(*args)
        for row in json.loads(out).values():
            for column, value in row.items():
                assert type(value) is (float if column == "cost_usd" else int), (args, column, value)
        assert '"events": 15,' in out and '"events": 15.0' not in out


@pytest.mark.django_db
def test_it_explains_why_metrics_counted_fewer_events_than_the_database_holds(metrics_page):
    call_command("generate_demo_data", "--events", "60", "--days", "2", stdout=io.StringIO(), stderr=io.StringIO())
    url, page = metrics_page
    page["text"] = exposition({"techconsult-pro": dict.fromkeys(
        ("events", "failed", "tokens", "cost_usd", "requested", "booked", "handoffs"), 1)})
    _, err = run("--url", url)
    assert "/metrics and the database disagree" in err
    assert "(1 events counted, 60 stored)" in err
    assert "not in them yet" in err and "rebuild_analytics" in err and "Run without --url" in err


@pytest.mark.django_db
def test_it_says_nothing_more_when_metrics_and_the_database_agree(api, metrics_page):
    events = sent_events()
    assert post_json(api, "/track/batch", {"events": events}).status_code == 200
    url, page = metrics_page
    page["text"] = exposition(expected(events))
    _, err = run("--url", url)
    assert "disagree" not in err and "2 businesses, 30 events in all" in err
