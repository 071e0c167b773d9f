"""The events page of the staff console: filters, search, read-only, CSV export, no full count."""

from __future__ import annotations

import csv
import io
import re
import uuid
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from metrics_app.console import events as console
from metrics_app.console import export, lists
from metrics_app.models import AIMetric

pytestmark = pytest.mark.django_db
CHANGELIST = reverse("admin:metrics_app_aimetric_changelist")
EXPORT = reverse("admin:metrics_app_aimetric_export")


@pytest.fixture(autouse=True)
def _fresh_filter_choices():
    # Filter choices are cached for minutes; each test brings its own events.
    cache.clear()
    yield
    cache.clear()


def streamed(response) -> str:
    return b"".join(response.streaming_content).decode()


def listed_conversations(response) -> list[str]:
    """The conversation ids in the result table, top to bottom, as a person reads them."""
    html = response.content.decode()
    body = html.split('<table id="result_list">', 1)[1].split("</table>", 1)[0] if "result_list" in html else ""
    return re.findall(r'<td class="field-conversation_id">([^<]*)</td>', body)


@pytest.fixture
def traffic(store_event):
    now = timezone.now()
    rows = [
        store_event(business_id="acme-dental", conversation_id="c-book", model_name="gemini-1.5-flash",
                    intent_detected="appointment_booking", response_type="appointment_booking",
                    appointment_requested=True, appointment_booked=True, timestamp=now - timedelta(hours=1)),
        store_event(business_id="acme-dental", conversation_id="c-fail", model_name="gpt-4o-mini",
                    intent_detected="error", response_type="error", success_rate=0.0,
                    human_handoff_requested=True, timestamp=now - timedelta(hours=2)),
        store_event(business_id="acme-dental", conversation_id="c-old", model_name="gemini-1.5-flash",
                    intent_detected="pricing", response_type="text", timestamp=now - timedelta(days=40)),
        store_event(business_id="bloom-florist", conversation_id="c-other", model_name="claude-3-5-haiku",
                    intent_detected="pricing", response_type="text", timestamp=now - timedelta(hours=3)),
    ]
    return rows


def test_staff_see_every_event_newest_first(superuser, traffic, logged_in):
    response = logged_in(superuser).get(CHANGELIST)

    assert response.status_code == 200
    expected = [e.conversation_id for e in AIMetric.objects.order_by("-timestamp")]
    assert listed_conversations(response) == expected


@pytest.mark.parametrize(
    "query, wanted",
    [
        ("business=bloom-florist", lambda e: e.business_id == "bloom-florist"),
        ("model=gemini-1.5-flash", lambda e: e.model_name == "gemini-1.5-flash"),
        ("intent=pricing", lambda e: e.intent_detected == "pricing"),
        ("response_type=error", lambda e: e.response_type == "error"),
        ("failed=yes", lambda e: e.success_rate == 0 or e.response_type == "error"),
        ("failed=no", lambda e: not (e.success_rate == 0 or e.response_type == "error")),
        ("appointment_booked__exact=1", lambda e: e.appointment_booked),
        ("human_handoff_requested__exact=1", lambda e: e.human_handoff_requested),
        ("timestamp__gte={week_ago}", lambda e: e.timestamp >= timezone.now() - timedelta(days=7, seconds=30)),
    ],
)
def test_each_filter_shows_exactly_the_matching_events(superuser, traffic, query, wanted, logged_in):
    week_ago = (timezone.now() - timedelta(days=7)).isoformat().replace("+", "%2B")
    response = logged_in(superuser).get(f"{CHANGELIST}?{query.format(week_ago=week_ago)}")

    assert response.status_code == 200
    expected = [e.conversation_id for e in AIMetric.objects.order_by("-timestamp") if wanted(e)]
    assert expected, "the fixture must hold a match for every filter"
    assert listed_conversations(response) == expected


def test_filter_choices_offer_only_recent_values_of_visible_businesses(staff_factory, traffic, logged_in):
    limited = staff_factory("acme-only", businesses=["acme-dental"])
    html = logged_in(limited).get(CHANGELIST).content.decode()

    assert "?model=gpt-4o-mini" in html and "?model=gemini-1.5-flash" in html
    assert "claude-3-5-haiku" not in html  # only bloom-florist used it
    assert "?business=acme-dental" in html and "bloom-florist" not in html


def test_a_staff_member_limited_to_one_business_never_sees_another(staff_factory, traffic, logged_in):
    limited = staff_factory("acme-only", businesses=["acme-dental"])
    client = logged_in(limited)

    assert listed_conversations(client.get(CHANGELIST)) == ["c-book", "c-fail", "c-old"]
    assert listed_conversations(client.get(f"{CHANGELIST}?business=bloom-florist")) == []
    other = AIMetric.objects.get(conversation_id="c-other")
    page = client.get(reverse("admin:metrics_app_aimetric_change", args=[other.pk]))
    assert page.status_code == 302  # the admin's answer for an object you may not see: back to the list
    assert "c-other" not in streamed(client.get(EXPORT))


@pytest.mark.parametrize("term_of", [lambda e: str(e.event_id), lambda e: e.conversation_id])
def test_search_finds_an_event_by_its_ids(superuser, store_event, term_of, logged_in):
    wanted = store_event(conversation_id="conv-wanted", session_id="sess-wanted")
    store_event(conversation_id="conv-other", session_id="sess-other")

    response = logged_in(superuser).get(CHANGELIST, {"q": term_of(wanted)})

    assert listed_conversations(response) == ["conv-wanted"]


@pytest.mark.parametrize("term", ["not-a-uuid", "x" * 5000, "' OR 1=1 --", "%", "c-"])
def test_odd_searches_find_nothing_and_never_fail(superuser, traffic, term, logged_in):
    response = logged_in(superuser).get(CHANGELIST, {"q": term})

    assert response.status_code == 200
    assert listed_conversations(response) == []


def test_a_search_with_a_nul_character_is_refused_not_failed(superuser, traffic, logged_in):
    # PostgreSQL would refuse it in a query; every page refuses it the same way.
    response = logged_in(superuser).get(CHANGELIST, {"q": "c-book\x00"})
    assert response.status_code == 400
    assert response.json()["errors"] == {"q": ["must not contain NUL (0x00) characters"]}


def test_an_unknown_filter_is_refused_politely(superuser, traffic, logged_in):
    client = logged_in(superuser)

    assert client.get(f"{CHANGELIST}?no_such_field=1").status_code == 302  # Django's "?e=1" page
    response = client.get(f"{EXPORT}?no_such_field=1")
    assert response.status_code == 400
    assert response.json()["error"] == "Unknown filter"


def test_events_are_read_only_for_everyone(superuser, traffic, logged_in):
    client = logged_in(superuser)
    event = traffic[0]
    change_url = reverse("admin:metrics_app_aimetric_change", args=[event.pk])

    page = client.get(change_url)
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert client.post(change_url, {"response_time_ms": 1}).status_code == 403
    assert client.get(reverse("admin:metrics_app_aimetric_add")).status_code == 403
    assert client.post(reverse("admin:metrics_app_aimetric_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    event.refresh_from_db()
    assert event.response_time_ms == 1000 and AIMetric.objects.count() == 4


def test_staff_without_the_view_permission_cannot_open_the_events(staff_factory, traffic, logged_in):
    nobody = staff_factory("no-perms", perms=())

    assert logged_in(nobody).get(CHANGELIST).status_code == 403
    assert logged_in(nobody).get(EXPORT).status_code == 403


def test_the_csv_export_holds_exactly_the_filtered_events(superuser, traffic, logged_in):
    response = logged_in(superuser).get(EXPORT, {"business": "acme-dental", "model": "gemini-1.5-flash"})

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    assert response["Content-Disposition"].startswith('attachment; filename="ai-events-')
    rows = list(csv.DictReader(io.StringIO(streamed(response))))
    expected = AIMetric.objects.filter(business_id="acme-dental", model_name="gemini-1.5-flash").order_by("timestamp")
    assert [r["event_id"] for r in rows] == [str(e.event_id) for e in expected]
    first = rows[-1]
    booked = expected.last()
    assert first["conversation_id"] == booked.conversation_id
    assert first["appointment_booked"] == "True"
    assert int(first["response_time_ms"]) == booked.response_time_ms
    assert first["timestamp"] == booked.timestamp.isoformat()


def test_the_csv_export_reads_page_after_page_without_losing_or_repeating_a_row(store_event, monkeypatch):
    moment = timezone.now() - timedelta(hours=1)
    # Seven events share one timestamp, so pages end in the middle of a tie; two come before and after.
    for offset in (-2, -1, *[0] * 7, 1, 2):
        store_event(timestamp=moment + timedelta(seconds=offset))
    expected = list(AIMetric.objects.order_by("timestamp", "id").values_list("event_id", flat=True))
    at = export.EXPORT_FIELDS.index("event_id")

    with CaptureQueriesContext(connection) as queries:
        rows = list(export.export_rows(AIMetric.objects.all(), page=3))

    assert [row[at] for row in rows] == expected
    # Pages of 3, 3 (the tie), 3 (the tie), then 0 left of the tie and 2 after it: one query a page but two
    # for the last, none of them unbounded.
    assert len(queries.captured_queries) == 5
    assert all("LIMIT 3" in query["sql"] for query in queries.captured_queries)

    monkeypatch.setattr(export, "MAX_EXPORT_ROWS", 5)
    assert [row[at] for row in export.export_rows(AIMetric.objects.all(), page=3)] == expected[:5]


def test_the_csv_export_of_selected_events_is_an_action(superuser, traffic, logged_in):
    chosen = traffic[:2]
    response = logged_in(superuser).post(
        CHANGELIST, {"action": "export_selected_csv", "_selected_action": [e.pk for e in chosen]}
    )

    rows = list(csv.DictReader(io.StringIO(streamed(response))))
    assert sorted(r["event_id"] for r in rows) == sorted(str(e.event_id) for e in chosen)


def test_client_text_that_a_spreadsheet_would_run_is_quoted_in_the_export(superuser, store_event, logged_in):
    store_event(intent_detected="=HYPERLINK(\"http://evil\")", conversation_id="+1-555")

    response = logged_in(superuser).get(EXPORT)

    row = next(csv.DictReader(io.StringIO(streamed(response))))
    assert row["intent_detected"] == "'=HYPERLINK(\"http://evil\")"
    assert row["conversation_id"] == "'+1-555"


def test_the_list_never_counts_the_whole_table(superuser, store_event, monkeypatch, logged_in):
    monkeypatch.setattr(lists, "EXACT_COUNT_LIMIT", 3)
    for _ in range(5):
        store_event()
    with CaptureQueriesContext(connection) as queries:
        response = logged_in(superuser).get(CHANGELIST)

    assert response.status_code == 200
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper() and "ai_metrics" in q["sql"]]
    assert counts, "the paginator should count, within its limit"
    for sql in counts:
        assert "LIMIT" in sql.upper(), f"an unbounded count of the event table: {sql}"
    # More rows than the exact limit: the page says so without a full count.
    assert response.context["cl"].result_count >= 4


def test_the_page_shows_a_bounded_number_of_rows(superuser, store_event, logged_in):
    for i in range(console.AIMetricAdmin.list_per_page + 5):
        store_event(conversation_id=f"c-{i}")

    response = logged_in(superuser).get(CHANGELIST)

    assert len(listed_conversations(response)) == console.AIMetricAdmin.list_per_page
    assert str(uuid.UUID(int=0)) not in response.content.decode()
