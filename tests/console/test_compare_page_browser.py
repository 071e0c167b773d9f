"""The compare page in headless Chromium, served by gunicorn: every bar, whisker, line point and word of the
verdict it draws is the compare API's answer to the same question."""

from __future__ import annotations

import zoneinfo
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from metrics_app.experiments import services
from metrics_app.models import Business
from tests.analytics.helpers import store
from tests.console.browser import PASSWORD, api, log_in
from tests.experiments.helpers import experiment_conversations
from tests.helpers import fold_all

pytestmark = [pytest.mark.slow]

BUSINESS = "acme-dental"
NAME = "booking-prompt"
BOOKING = {"v6": 0.2, "v7": 0.45}  # v7 books clearly more: the verdict has a winner
FIGURES = ("booking_rate", "appointment_request_rate", "handoff_rate", "error_rate", "cost_per_conversation_usd",
           "conversation_latency_mean_ms")
DAYS = 9


def conversations(count: int, seed: int, *, start: Any, split: float = 0.5) -> list[dict[str, Any]]:
    return experiment_conversations(BUSINESS, count, seed, start=start, days=DAYS, name=NAME, booking=BOOKING,
                                    split=split)


@pytest.fixture
def clinic(live_service) -> Any:
    Business.objects.create(id=BUSINESS, name="Acme Dental", time_zone="Europe/London")
    User.objects.create_superuser("boss", "boss@example.com", PASSWORD)
    return live_service(workers=2)


def open_compare(driver: Any, service: Any, query: dict[str, str]) -> dict[str, Any]:
    """Load the page, wait until its script has drawn the answer and the variants offered, and read both back."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{service.url}/admin/metrics_app/experiment/compare/?{urlencode(query)}")
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "mlops-compare"))
    root = driver.find_element(By.ID, "mlops-compare")
    WebDriverWait(driver, 60).until(lambda _: root.get_attribute("data-state") != "loading")
    values = driver.find_element(By.ID, "variant-values")
    WebDriverWait(driver, 60).until(lambda _: values.get_attribute("data-state") not in (None, "loading"))
    return driver.execute_script("""
        const number = (v) => (v === undefined || v === "" ? null : Number(v));
        const bars = [...document.querySelectorAll("#figures rect.mark")].map((m) => ({
            figure: m.dataset.x, series: m.dataset.series, value: number(m.dataset.value),
            low: number(m.dataset.low), high: number(m.dataset.high), y: Number(m.getAttribute("y"))}));
        const whiskers = [...document.querySelectorAll("#figures .whisker")].map((w) => {
            const span = w.querySelector("line.span");
            return {figure: w.dataset.x, series: w.dataset.series, low: number(w.dataset.low),
                    high: number(w.dataset.high), top: Number(span.getAttribute("y1")),
                    bottom: Number(span.getAttribute("y2"))};
        });
        const points = [...document.querySelectorAll("#chart-cumulative .mark")].map((m) => ({
            series: m.dataset.series, x: m.dataset.x, value: Number(m.dataset.value)}));
        const verdict = document.getElementById("verdict");
        const needed = document.getElementById("verdict-needed");
        const ratio = document.getElementById("sample-ratio");
        const arms = [...document.querySelectorAll("#arms .mlops-kpi")].map((card) => ({
            arm: card.dataset.arm, variant: card.dataset.variant, conversations: Number(card.dataset.conversations),
            booked: Number(card.dataset.booked), events: Number(card.dataset.events)}));
        const differences = {};
        for (const row of document.querySelectorAll("#differences tr[data-figure]")) {
            const cell = (name) => row.querySelector(`td.${name}`);
            differences[row.dataset.figure] = cell("difference") ? {
                difference: Number(cell("difference").dataset.value), ci_low: Number(cell("interval").dataset.low),
                ci_high: Number(cell("interval").dataset.high), p_value: Number(cell("p-value").dataset.value),
            } : null;
        }
        return {
            state: document.getElementById("mlops-compare").dataset.state,
            status: document.getElementById("compare-status").textContent,
            bars, whiskers, points, arms, differences,
            verdict: verdict.hidden ? null : {
                status: verdict.dataset.status, winner: verdict.dataset.winner || null,
                text: document.getElementById("verdict-text").textContent,
                still: needed.dataset.a === "" ? null : {a: Number(needed.dataset.a), b: Number(needed.dataset.b)}},
            sampleRatio: ratio ? ratio.textContent : null,
            offered: [...document.querySelectorAll("#variant-values option")].map((o) => o.value),
            config: JSON.parse(document.getElementById("compare-config").textContent),
        };
    """)


def assert_drawn_as_answered(page: dict[str, Any], answer: dict[str, Any]) -> None:
    """Every drawn mark against the answer: bars and whiskers per figure and arm, line points, verdict, arms."""
    assert page["state"] == "ready", page["status"]
    arms = answer["arms"]
    variants = {arms[arm]["variant"]: arm for arm in ("a", "b")}
    expected_bars = [(figure, arms[arm]["variant"], arms[arm][figure]["value"], arms[arm][figure]["ci_low"],
                      arms[arm][figure]["ci_high"]) for figure in FIGURES for arm in ("a", "b")]
    assert [(b["figure"], b["series"], b["value"], b["low"], b["high"]) for b in page["bars"]] == expected_bars
    assert [(w["figure"], w["series"], w["low"], w["high"]) for w in page["whiskers"]] == [
        (figure, variant, low, high) for figure, variant, _, low, high in expected_bars]
    # Drawn where the figures say: each whisker spans its bar's top (SVG y grows downwards).
    for bar, whisker in zip(page["bars"], page["whiskers"], strict=True):
        assert whisker["top"] <= bar["y"] <= whisker["bottom"], (bar, whisker)
    # The cumulative booking rate: one point per day with conversations so far, per arm.
    for variant, arm in variants.items():
        expected = [(point["date"], point[arm]["booking_rate"]) for point in answer["series"]
                    if point[arm]["booking_rate"] is not None]
        assert [(p["x"], p["value"]) for p in page["points"] if p["series"] == variant] == expected
        assert expected
    verdict = answer["verdict"]
    assert page["verdict"] == {"status": verdict["status"], "winner": verdict["winner"], "text": verdict["text"],
                               "still": verdict["conversations_still_needed_per_arm"]}
    assert page["arms"] == [{"arm": arm, "variant": arms[arm]["variant"], "conversations": arms[arm]["conversations"],
                             "booked": arms[arm]["conversations_booked"], "events": arms[arm]["events"]}
                            for arm in ("a", "b")]
    assert page["differences"] == {
        figure: None if found is None else {k: found[k] for k in ("difference", "ci_low", "ci_high", "p_value")}
        for figure, found in answer["comparisons"].items()}


def test_an_ad_hoc_compare_draws_the_apis_answer_with_its_winner(clinic, browser):
    now = timezone.now()
    store(conversations(700, seed=1, start=now - timedelta(days=DAYS)))
    fold_all()
    today = now.astimezone(zoneinfo.ZoneInfo("Europe/London")).date()
    log_in(browser, clinic, "boss")

    page = open_compare(browser, clinic, {
        "business": BUSINESS, "dimension": "prompt_version", "a": "v6", "b": "v7", "period": "custom",
        "start": str(today - timedelta(days=DAYS)), "end": str(today)})

    params = page["config"]["params"]
    assert params["business_id"] == BUSINESS and params["tz"] == "Europe/London" and params["a"] == "v6"
    answer = api(clinic, browser, "/api/analytics/compare", params)
    assert answer["verdict"]["status"] == "winner" and answer["verdict"]["winner"] == "v7"
    assert_drawn_as_answered(page, answer)
    assert "v7 wins on booking rate" in page["verdict"]["text"]
    assert page["sampleRatio"] is None  # an ad hoc compare plans no split
    # The booking-rate bar of the winner stands higher than the control's.
    booking = {b["series"]: b["y"] for b in page["bars"] if b["figure"] == "booking_rate"}
    assert booking["v7"] < booking["v6"]
    # The variants offered are the dimension's values the breakdown API finds in the period.
    values = api(clinic, browser, "/api/analytics/breakdown/prompt_version",
                 {**page["config"]["values_params"], "business_id": BUSINESS})
    assert page["offered"] == [row["key"] for row in values["rows"] if row["key"]] and set(page["offered"]) == {
        "v6", "v7"}


def test_a_saved_experiments_results_are_drawn_with_the_sample_ratio_warning(clinic, browser):
    now = timezone.now()
    start = now - timedelta(days=DAYS, hours=1)
    experiment = services.create_experiment(Business.objects.get(id=BUSINESS), name=NAME, variant_a="v6",
                                            variant_b="v7", split_a=0.5, now=start)
    store(conversations(700, seed=2, start=start + timedelta(minutes=1), split=0.7))  # 70/30, not the 50/50 planned
    fold_all()
    log_in(browser, clinic, "boss")

    page = open_compare(browser, clinic, {"experiment": str(experiment.pk)})

    assert page["config"]["mode"] == "experiment"
    answer = api(clinic, browser, f"/api/experiments/{experiment.pk}/results", {})
    assert_drawn_as_answered(page, answer)
    assert answer["sample_ratio"]["mismatch"] is True
    assert page["sampleRatio"] == answer["sample_ratio"]["text"]
    assert f"the experiment {NAME}" in page["status"]


def test_a_limited_staff_member_gets_nothing_drawn_for_another_businesses_experiment(clinic, browser, staff_factory):
    theirs = services.create_experiment(Business.objects.get(id=BUSINESS), name=NAME, variant_a="v6", variant_b="v7")
    staff = staff_factory("other-staff", businesses=["other-clinic"], perms=("metrics_app.view_experiment",))
    staff.set_password(PASSWORD)
    staff.save()
    log_in(browser, clinic, "other-staff")

    page = open_compare(browser, clinic, {"experiment": str(theirs.pk)})

    assert page["config"]["mode"] == "choose" and page["verdict"] is None and page["bars"] == []
    # And its results are refused to this session by the API itself.
    session = browser.get_cookie("sessionid")["value"]
    status, _, _ = clinic.request("GET", f"/api/experiments/{theirs.pk}/results",
                                  headers={"Cookie": f"sessionid={session}"})
    assert status == 404
