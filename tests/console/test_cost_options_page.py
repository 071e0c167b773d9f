"""The cost options page of the admin: its tables show what GET /api/analytics/costs answers, for the user's businesses.

The API's figures are checked against Decimal arithmetic over the raw rows in tests/pricing/test_cost_options.py;
here the page, as a staff member reads it, must show those same figures.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest

from tests.pricing.test_cost_options import traffic  # noqa: F401  (the fixture: two businesses' priced traffic)

PAGE = "/admin/metrics_app/aimetric/costs/"
WEEK = {"period": "custom", "start": "2026-03-01", "end": "2026-03-07"}


class Figures(HTMLParser):
    """The page's figures: per section id, its data-figure cells in order, and its rows' model labels."""

    def __init__(self) -> None:
        super().__init__()
        self.section: str | None = None
        self.figure: str | None = None
        self.figures: dict[str, list[tuple[str, str]]] = {}
        self.models: dict[str, list[str]] = {}
        self.events: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "section" and named.get("id"):
            self.section = named["id"]
        if named.get("data-figure"):
            self.figure = named["data-figure"]
        if tag == "tr" and named.get("data-model") and self.section:
            self.models.setdefault(self.section, []).append(named["data-model"] or "")
        if tag == "tr" and named.get("data-event"):
            self.events.append(named["data-event"] or "")

    def handle_data(self, data: str) -> None:
        if self.figure and self.section:
            self.figures.setdefault(self.section, []).append((self.figure, data.strip()))
            self.figure = None


def read(page: Any) -> Figures:
    assert page.status_code == 200
    figures = Figures()
    figures.feed(page.content.decode())
    return figures


def answer(api: Any, **params: str) -> dict[str, Any]:
    query = {"start": "2026-03-01T00:00:00+00:00", "end": "2026-03-08T00:00:00+00:00", "tz": "Europe/London",
             **params}
    response = api.get("/api/analytics/costs", query)
    assert response.status_code == 200, response.content
    return response.json()


def six(value: float) -> str:
    return f"{value:.6f}"


def test_the_page_shows_the_apis_figures_for_the_business(traffic, staff_factory, logged_in):  # noqa: F811
    client = logged_in(staff_factory("owner", businesses=["acme-dental"]))
    page = read(client.get(PAGE, {"business": "acme-dental", **WEEK}))
    expected = answer(client, business_id="acme-dental")
    current = expected["current"]
    assert [value for _, value in page.figures["costs-current"]] == [
        str(current[name]) for name in ("events", "priced_events", "unpriced_events", "fresh_input_tokens",
                                        "cache_read_input_tokens", "cache_write_input_tokens", "output_tokens")
    ] + [six(current["priced_cost_usd"]), six(current["cost_usd"])]
    # Every price row, cheapest first, with its cost and difference.
    assert page.models["costs-models"] == [row["model_pattern"] for row in expected["models"]]
    models = [value for _, value in page.figures["costs-models"]]
    assert models == [six(v) for row in expected["models"] for v in (row["cost_usd"], row["difference_usd"])]
    cache = expected["cache"]
    cache_figures = dict(page.figures["costs-cache"][:2])
    assert cache_figures["cached_input_share"] == f"{cache['cached_input_share'] * 100:.1f}%"
    assert cache_figures["cache_savings_usd"] == six(cache["cache_savings_usd"])
    assert page.models["costs-cache"] == [model["model_name"] or "unknown" for model in cache["models"]]
    assert page.events == [reply["event_id"] for intent in expected["top_replies"] for reply in intent["replies"]]
    assert len(page.events) > 5
    assert "other-clinic" not in client.get(PAGE, {"business": "acme-dental", **WEEK}).content.decode()


def test_a_business_the_user_may_not_see_is_not_shown(traffic, staff_factory, logged_in):  # noqa: F811
    client = logged_in(staff_factory("other-owner", businesses=["other-clinic"]))
    response = client.get(PAGE, {"business": "acme-dental", **WEEK})
    body = response.content.decode()
    assert "not yours to see" in body
    page = read(response)
    # All of the user's businesses instead: other-clinic alone.
    own = answer(client)
    assert own["period"]["business_ids"] == ["other-clinic"]
    assert dict(page.figures["costs-current"])["events"] == str(own["current"]["events"])
    assert 'value="acme-dental"' not in body


def test_a_staff_member_without_a_business_sees_no_figures(traffic, staff_factory, logged_in):  # noqa: F811
    client = logged_in(staff_factory("nobody", businesses=[]))
    response = client.get(PAGE, WEEK)
    assert response.status_code == 200
    assert "You see no business." in response.content.decode()
    assert read(response).figures == {}


def test_it_needs_the_events_view_permission(traffic, staff_factory, logged_in):  # noqa: F811
    client = logged_in(staff_factory("no-perms", businesses=["acme-dental"], perms=()))
    assert client.get(PAGE, WEEK).status_code == 403


@pytest.mark.parametrize("query", [
    {"period": "custom", "start": "2026-03-09", "end": "2026-03-01"},
    {"period": "forever"},
    {"period": "custom", "start": "not-a-date", "end": "2026-03-01"},
    {"business": "x" * 5000},
])
def test_bad_filters_are_explained_never_a_500(traffic, staff_factory, logged_in, query):  # noqa: F811
    client = logged_in(staff_factory("owner", businesses=["acme-dental"]))
    response = client.get(PAGE, query)
    assert response.status_code == 200
    assert 'class="messagelist"' in response.content.decode()
