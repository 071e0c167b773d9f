"""The digest as mailed, rendered by headless Chromium from the real service: its figures are the raw rows'."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission

from tests.console.browser import PASSWORD, log_in
from tests.digests.helpers import BUSINESS, WEEK, expected, load, make_business, make_payloads, shown
from tests.helpers import fold_all, staff_user

pytestmark = [pytest.mark.slow]

URL = "/admin/metrics_app/digestdelivery/download/"


@pytest.fixture
def service(live_service, published_prices) -> Any:
    make_business()
    payloads = make_payloads()
    load(payloads[::2])
    fold_all()
    load(payloads[1::2])  # the rest unfolded: the page must count them too
    user = staff_user("reader", businesses=[BUSINESS], password=PASSWORD)
    user.user_permissions.add(Permission.objects.get(content_type__app_label="metrics_app", codename="view_business"))
    staff_user("stranger", businesses=["someone-else"], password=PASSWORD).user_permissions.add(
        Permission.objects.get(content_type__app_label="metrics_app", codename="view_business"))
    return live_service(workers=1)


def _read(driver: Any) -> dict[str, Any]:
    return driver.execute_script("""
        const figures = {};
        for (const row of document.querySelectorAll("#digest-figures tr.figure")) {
            figures[row.dataset.figure] = {value: row.dataset.value, previous: row.dataset.previous,
                shown: row.querySelector(".shown").textContent.trim(),
                previousShown: row.querySelector(".previous").textContent.trim(),
                change: row.querySelector(".change").textContent.trim()};
        }
        const chart = document.getElementById("digest-chart");
        return {figures, title: document.querySelector("h1").textContent,
                chart: {complete: chart.complete, width: chart.naturalWidth, height: chart.naturalHeight}};
    """)


def test_the_rendered_digest_shows_the_raw_rows_figures_and_draws_its_chart(service, browser):
    log_in(browser, service, "reader")
    browser.get(f"{service.url}{URL}?business={BUSINESS}&week={WEEK.isoformat()}&format=html")

    page = _read(browser)

    want = expected()
    text = shown(want)
    figures = page["figures"]
    assert page["title"] == "Weekly digest: Harbor Dental, 02 Mar 2026 to 08 Mar 2026"
    assert page["chart"] == {"complete": True, "width": 640, "height": 280}  # the PNG decoded in the browser
    for key in ("replies", "conversations", "bookings"):
        assert int(figures[key]["value"]) == want[key] and int(figures[key]["previous"]) == want[f"{key}_previous"]
        assert figures[key]["shown"] == text[key] and figures[key]["previousShown"] == text[f"{key}_previous"]
        assert figures[key]["change"] == text[f"{key}_change"]
    for key in ("after_hours_conversations", "after_hours_requests", "after_hours_bookings", "handoffs",
                "unpriced_replies"):
        assert int(figures[key]["value"]) == want[key] and figures[key]["shown"] == text[key], key
    assert float(figures["cost_usd"]["value"]) == pytest.approx(want["cost_usd"], rel=1e-9)
    assert figures["cost_usd"]["shown"] == text["cost_usd"]
    assert float(figures["cost_per_booking_usd"]["value"]) == pytest.approx(want["cost_per_booking_usd"], rel=1e-9)
    assert figures["cost_per_booking_usd"]["shown"] == text["cost_per_booking_usd"]


def test_staff_of_another_business_see_no_figure_of_this_one(service, browser):
    log_in(browser, service, "stranger")
    browser.get(f"{service.url}{URL}?business={BUSINESS}&week={WEEK.isoformat()}&format=html")

    assert browser.execute_script("return document.getElementById('digest-figures')") is None
    assert "Harbor Dental" not in browser.page_source
