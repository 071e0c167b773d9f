"""The dashboard in headless Chromium, served by gunicorn: what its charts draw is what the API answers."""

from __future__ import annotations

import io
import json
import zoneinfo
from collections import Counter
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.utils import timezone

from metrics_app.models import AIMetric, Business
from tests.console.browser import PASSWORD, api, log_in

pytestmark = [pytest.mark.slow]

BUSINESS = "mountain-physio"  # a demo business in Asia/Kathmandu (UTC+05:45)


def open_dashboard(driver: Any, service: Any, query: dict[str, str]) -> dict[str, Any]:
    """Load the page, wait until its script has drawn everything, and read back what it drew."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{service.url}/admin/metrics_app/aimetric/dashboard/?{urlencode(query)}")
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "mlops-dashboard"))
    root = driver.find_element(By.ID, "mlops-dashboard")
    WebDriverWait(driver, 60).until(lambda _: root.get_attribute("data-state") != "loading")
    state = root.get_attribute("data-state")
    status = driver.find_element(By.ID, "dashboard-status").text
    assert state == "ready", f"the dashboard did not draw: {status}\n{service.log()[-3000:]}"
    intents = driver.find_element(By.ID, "chart-intents")
    WebDriverWait(driver, 60).until(lambda _: intents.get_attribute("data-state") not in (None, "loading"))
    assert intents.get_attribute("data-state") == "ready", intents.text
    return driver.execute_script("""
        const marks = (id) => [...document.querySelectorAll(`#${id} .mark`)].map((m) => ({
            series: m.dataset.series, x: m.dataset.x, value: Number(m.dataset.value)}));
        const charts = {};
        for (const id of ["chart-volume", "chart-latency", "chart-cost", "chart-funnel", "chart-intents"]) {
            charts[id] = marks(id);
        }
        const kpis = {};
        for (const card of document.querySelectorAll(".mlops-kpi")) {
            kpis[card.dataset.kpi] = card.dataset.value === "" ? null : Number(card.dataset.value);
        }
        const options = [...document.querySelectorAll('select[name="business"] option')].map((o) => o.value);
        const legends = {};
        for (const id of ["chart-volume", "chart-latency"]) {
            legends[id] = [...document.querySelectorAll(`#${id} .mlops-legend li`)].map((li) => ({
                name: li.textContent, colour: getComputedStyle(li.querySelector(".swatch")).backgroundColor}));
        }
        const volumeLines = [...document.querySelectorAll("#chart-volume path.line")].map(
            (line) => getComputedStyle(line).stroke);
        const tables = {};
        for (const id of ["table-after-hours", "table-sentiment"]) {
            tables[id] = [...document.querySelectorAll(`#${id} tbody tr`)].map((row) => ({
                key: row.dataset.key, values: [...row.cells].map((c) => c.dataset.value), texts: [...row.cells].map(
                    (c) => c.textContent)}));
        }
        return {charts, kpis, options, legends, volumeLines, tables,
                config: JSON.parse(document.getElementById("dashboard-config").textContent)};
    """)


def series_of(marks: list[dict[str, Any]], name: str) -> list[tuple[str, float]]:
    return [(m["x"], m["value"]) for m in marks if m["series"] == name]


@pytest.fixture
def demo(live_service, published_prices) -> Any:
    call_command("generate_demo_data", "--events", "600", "--days", "4", "--seed", "21", "--no-progress",
                 stdout=io.StringIO(), stderr=io.StringIO())
    User.objects.create_superuser("boss", "boss@example.com", PASSWORD)
    return live_service(workers=2)


def test_every_figure_the_dashboard_draws_equals_the_api_answer_for_the_same_filters(demo, browser):
    zone = zoneinfo.ZoneInfo(Business.objects.get(id=BUSINESS).time_zone)
    today = timezone.now().astimezone(zone).date()
    query = {"business": BUSINESS, "period": "custom", "start": str(today - timedelta(days=3)), "end": str(today),
             "bucket": "day"}
    log_in(browser, demo, "boss")

    page = open_dashboard(browser, demo, query)

    params = page["config"]["params"]
    assert params["business_id"] == BUSINESS and params["tz"] == "Asia/Kathmandu" and params["bucket"] == "day"
    charts, kpis = page["charts"], page["kpis"]
    series = api(demo, browser, "/api/analytics/timeseries", params)["series"]
    assert len(series) == 4  # four local days

    # Volume, cost and latency: one mark per bucket and series, with the API's figure.
    assert series_of(charts["chart-volume"], "events") == [(b["start"], b["events"]) for b in series]
    assert series_of(charts["chart-volume"], "conversations") == [(b["start"], b["conversations"]) for b in series]
    assert series_of(charts["chart-cost"], "cost_usd") == [(b["start"], b["cost_usd"]) for b in series]
    for name in ("p50", "p95", "p99"):
        expected = [(b["start"], b[f"latency_{name}_ms"]) for b in series if b[f"latency_{name}_ms"] is not None]
        assert series_of(charts["chart-latency"], name) == expected

    # The volume card says which mark is which: a legend for the bars and one for the line, in two colours.
    volume_legend = page["legends"]["chart-volume"]
    assert [item["name"] for item in volume_legend] == ["events", "conversations"]
    assert volume_legend[0]["colour"] != volume_legend[1]["colour"]
    assert page["volumeLines"] == [volume_legend[1]["colour"]]
    assert [item["name"] for item in page["legends"]["chart-latency"]] == ["p50", "p95", "p99"]

    # The funnel and the summary figures.
    funnel = api(demo, browser, "/api/analytics/funnel", params)["funnel"]
    expected_funnel = [(s["step"], s["conversations"]) for s in funnel["steps"]] + [
        ("human_handoffs", funnel["human_handoffs"])]
    assert series_of(charts["chart-funnel"], "funnel") == expected_funnel
    summary = api(demo, browser, "/api/analytics/summary", params)["summary"]
    assert kpis == {
        "events": summary["events"], "conversations": summary["conversations"],
        "success_rate": summary["success_rate"], "error_rate": summary["error_rate"],
        "p50": summary["latency_p50_ms"], "p95": summary["latency_p95_ms"], "cost": summary["cost_usd"],
        "cost_per_conversation": summary["cost_per_conversation_usd"], "bookings": summary["conversations_booked"],
        "cost_per_booking": summary["cost_per_booked_appointment_usd"], "handoff_rate": summary["handoff_rate"],
        "cached_share": summary["cached_input_share"], "cache_savings": summary["cache_savings_usd"],
        "sentiment": summary["sentiment_mean"],
    }
    assert 0 < kpis["cached_share"] < 1 and kpis["cache_savings"] > 0  # the demo's prompts are cached
    assert -1 < kpis["sentiment"] < 1 and summary["sentiment_scored_events"] > 0  # the demo's clients score messages

    # Open and after hours: the business's own split, as the opening-hours API answers it.
    split = api(demo, browser, "/api/analytics/opening-hours", params)
    assert split["opening_hours_set"]
    after_hours = {row["key"]: [float(v) for v in row["values"][1:]] for row in page["tables"]["table-after-hours"]}
    assert after_hours == {key: [split["open"][key], split["after_hours"][key]] for key in (
        "conversations", "conversations_with_request", "conversations_booked", "events", "cost_usd")}
    assert after_hours["conversations"][1] > 0  # the demo's customers write in the evening too

    # Intents over time: the busiest intents, each from the time series filtered to it.
    rows = api(demo, browser, "/api/analytics/breakdown/intent", {**params, "limit": 6})["rows"]
    sentiment = {row["key"]: [float(v) for v in row["values"][1:]] for row in page["tables"]["table-sentiment"]}
    assert sentiment == {row["key"] or "": [row["sentiment_mean"], row["sentiment_scored_events"]]
                         for row in rows if row["sentiment_scored_events"]}
    assert sentiment
    top = [r["key"] for r in rows if r["key"] is not None][:5]
    assert sorted({m["series"] for m in charts["chart-intents"]}) == sorted(top)
    for intent in top:
        by_intent = api(demo, browser, "/api/analytics/timeseries", {**params, "intent": intent})["series"]
        assert series_of(charts["chart-intents"], intent) == [(b["start"], b["events"]) for b in by_intent]

    # And the API's figures are the raw rows' own: events per local day, counted here from the table.
    start, end = params["start"], params["end"]
    rows_in_period = AIMetric.objects.filter(business_id=BUSINESS, timestamp__gte=start, timestamp__lt=end)
    per_day = Counter(e.timestamp.astimezone(zone).date().isoformat() for e in rows_in_period)
    assert [(b["start"][:10], b["events"]) for b in series] == [
        (b["start"][:10], per_day.get(b["start"][:10], 0)) for b in series]
    assert sum(per_day.values()) == kpis["events"] > 0


def test_a_limited_staff_member_sees_only_their_business_in_the_browser(demo, browser, staff_factory):
    staff = staff_factory("physio-staff", businesses=[BUSINESS])
    staff.set_password(PASSWORD)
    staff.save()
    log_in(browser, demo, "physio-staff")

    page = open_dashboard(browser, demo, {"period": "7d"})

    assert page["options"] == ["", BUSINESS]  # "All your businesses" and theirs
    assert "business_id" not in page["config"]["params"]
    total = sum(value for _, value in series_of(page["charts"]["chart-volume"], "events"))
    start, end = page["config"]["params"]["start"], page["config"]["params"]["end"]
    assert total == AIMetric.objects.filter(business_id=BUSINESS, timestamp__gte=start, timestamp__lt=end).count()
    assert total < AIMetric.objects.filter(timestamp__gte=start, timestamp__lt=end).count()
    assert json.dumps(page).count("bright-smile-dental") == 0
