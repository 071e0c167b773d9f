"""The analytics dashboard page in the admin: who may open it, and the filters it hands to the API."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from django.urls import reverse

from metrics_app.console.dashboard import parse_filters
from metrics_app.models import Business

pytestmark = pytest.mark.django_db
DASHBOARD = reverse("admin:metrics_app_aimetric_dashboard")
NOW = datetime(2026, 3, 18, 10, 20, tzinfo=UTC)
ZONES = {"acme-dental": "Europe/London", "kathmandu-physio": "Asia/Kathmandu", "adelaide-vets": "Australia/Adelaide"}


def page_config(response) -> dict:
    match = re.search(r'<script id="dashboard-config" type="application/json">(.*?)</script>', response.content.decode())
    assert match, "the page must carry its configuration for the script"
    return json.loads(match.group(1))


@pytest.fixture
def businesses(db):
    return [Business.objects.create(id=b, name=b.replace("-", " ").title(), time_zone=tz) for b, tz in ZONES.items()]


def test_the_dashboard_needs_a_staff_login(api):
    response = api.get(DASHBOARD)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_staff_without_the_events_permission_may_not_open_it(staff_factory, logged_in):
    assert logged_in(staff_factory("nobody", perms=())).get(DASHBOARD).status_code == 403


def test_the_page_loads_its_scripts_and_styles_from_the_service_itself(superuser, businesses, logged_in):
    html = logged_in(superuser).get(DASHBOARD).content.decode()

    sources = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html)
    assets = [s for s in sources if s.endswith((".js", ".css"))]
    assert any(s.endswith("metrics_app/dashboard/charts.js") for s in assets)
    assert any(s.endswith("metrics_app/dashboard/dashboard.js") for s in assets)
    assert all(s.startswith("/") and not s.startswith("//") for s in assets), assets


def test_the_page_asks_the_api_for_the_chosen_business_and_period(superuser, businesses, logged_in):
    response = logged_in(superuser).get(DASHBOARD, {"business": "kathmandu-physio", "period": "30d"})

    config = page_config(response)
    assert config["api"]["summary"] == "/api/analytics/summary"
    assert config["params"]["business_id"] == "kathmandu-physio"
    assert config["params"]["tz"] == "Asia/Kathmandu"
    start = datetime.fromisoformat(config["params"]["start"])
    end = datetime.fromisoformat(config["params"]["end"])
    assert end - start == timedelta(days=30)
    assert (start.hour, start.minute, start.utcoffset()) == (0, 0, timedelta(hours=5, minutes=45))
    previous = config["previous"]
    assert previous["end"] == config["params"]["start"]
    assert datetime.fromisoformat(previous["start"]) == start - timedelta(days=30)


def test_a_limited_staff_member_is_offered_only_their_businesses(staff_factory, businesses, logged_in):
    limited = staff_factory("acme-only", businesses=["acme-dental"])
    client = logged_in(limited)

    html = client.get(DASHBOARD).content.decode()
    assert re.findall(r'<option value="([^"]+)"', html.split('name="business"')[1].split("</select>")[0]) == ["acme-dental"]
    assert "All your businesses" in html

    response = client.get(DASHBOARD, {"business": "kathmandu-physio"})
    assert "not yours to see" in response.content.decode()
    assert "business_id" not in page_config(response)["params"]  # the API then limits itself to theirs


def test_the_api_refuses_a_limited_staff_member_another_business(staff_factory, businesses, logged_in):
    limited = staff_factory("acme-only", businesses=["acme-dental"])

    response = logged_in(limited).get("/api/analytics/summary", {"business_id": "kathmandu-physio"})

    assert response.status_code == 403
    assert set(response.json()) == {"error", "errors"}


@pytest.mark.parametrize(
    "zone, offset",
    [("Asia/Kathmandu", timedelta(hours=5, minutes=45)), ("Australia/Adelaide", timedelta(hours=10, minutes=30))],
)
def test_periods_are_whole_local_days_in_zones_with_odd_offsets(zone, offset):
    filters, problems = parse_filters({"business": "b", "period": "7d"}, zones={"b": zone}, now=NOW)

    assert problems == []
    assert (filters.start.hour, filters.start.minute, filters.start.utcoffset()) == (0, 0, offset)
    assert filters.end - filters.start == timedelta(days=7)
    local_today = NOW.astimezone(filters.start.tzinfo).date()
    assert filters.end.date() == local_today + timedelta(days=1)


def test_the_last_24_hours_are_whole_hours_in_hour_buckets():
    filters, _ = parse_filters({"period": "1d"}, zones={}, now=NOW)

    assert (filters.start, filters.end) == (datetime(2026, 3, 17, 11, tzinfo=UTC), datetime(2026, 3, 18, 11, tzinfo=UTC))
    assert filters.bucket == "hour" and filters.tz == "UTC"


def test_custom_dates_cover_both_days_whole():
    filters, problems = parse_filters({"period": "custom", "start": "2026-02-01", "end": "2026-02-03"}, zones={}, now=NOW)

    assert problems == []
    assert (filters.start, filters.end) == (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 4, tzinfo=UTC))
    assert filters.label == "2026-02-01 to 2026-02-03"


@pytest.mark.parametrize(
    "query, problem",
    [
        ({"period": "custom", "start": "2026-02-05", "end": "2026-02-01"}, "first not after the second"),
        ({"period": "custom", "start": "nonsense", "end": "2026-02-01"}, "Give both dates"),
        ({"period": "forever"}, "Unknown period"),
        ({"period": "90d", "bucket": "hour"}, "Hourly buckets"),
        ({"bucket": "minute"}, "hours or days"),
        ({"period": "custom", "start": "2020-01-01", "end": "2026-01-01"}, "at most 366 days"),
        ({"business": "x" * 5000}, "not yours to see"),
    ],
)
def test_odd_filters_are_corrected_and_explained(query, problem):
    filters, problems = parse_filters(query, zones={}, now=NOW)

    assert any(problem in p for p in problems), problems
    assert filters.end > filters.start
    assert (filters.end - filters.start) <= timedelta(days=366)
    assert filters.bucket == "day"  # every corrected period is longer than the two days hours are for


def test_odd_filters_on_the_page_never_fail(superuser, businesses, logged_in):
    client = logged_in(superuser)
    # A NUL character is refused on every page before it can reach a query.
    assert client.get(f"{DASHBOARD}?{urlencode({'start': chr(0)})}").status_code == 400
    for query in ({"period": "custom", "start": "9999-12-31", "end": "9999-12-31"},
                  {"business": "<script>"}, {"bucket": "day", "end": "0001-01-01", "start": "0001-01-01"}):
        response = client.get(f"{DASHBOARD}?{urlencode(query)}")
        assert response.status_code == 200, query
        assert "<script>" not in response.content.decode().split("<body", 1)[1].replace("<script src", "")
