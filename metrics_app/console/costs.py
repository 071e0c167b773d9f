"""The cost options page inside the admin: the period's cost, the same tokens at every other price, caching.

Unlike the dashboard, this page is drawn on the server: its figures are
tables, read with one call of the cost options selector (the same one
GET /api/analytics/costs answers with), for the businesses the staff member
may see.
"""

from __future__ import annotations

import zoneinfo
from typing import Any

from metrics_app import horizon
from metrics_app.analytics.selectors import Filters
from metrics_app.console.dashboard import DashboardFilters, PeriodPage
from metrics_app.pricing import selectors as cost_selectors


def _percent(share: float | None) -> float | None:
    return None if share is None else share * 100


def with_percents(options: dict[str, Any]) -> dict[str, Any]:
    """The cached shares as percentages too, as the page shows them."""
    cache = options["cache"]
    cache["cached_input_percent"] = _percent(cache["cached_input_share"])
    for model in cache["models"]:
        model["cached_input_percent"] = _percent(model["cached_input_share"])
        model["best_day_percent"] = _percent(model["best_day_cached_input_share"])
    return options


def cost_filters(filters: DashboardFilters, visible: set[str] | None) -> Filters:
    """The selector's filters for the page's: its business, else every business the user may see."""
    if filters.business_id is not None:
        businesses: frozenset[str] | None = frozenset([filters.business_id])
    else:
        businesses = None if visible is None else frozenset(visible)
    return Filters(businesses=businesses, start=filters.start, end=filters.end, tz=zoneinfo.ZoneInfo(filters.tz))


class CostsView(PeriodPage):
    """GET /admin/metrics_app/aimetric/costs/."""

    title = "Cost options"
    template = "admin/metrics_app/aimetric/costs.html"

    def figures(self, filters: DashboardFilters, allowed: set[str] | None) -> dict[str, Any]:
        if allowed is not None and not allowed:
            return {"options": None}
        pruned_before = horizon.pruned_before()
        if pruned_before is not None and filters.start < pruned_before:
            # These figures are made of raw events, and retention removed those before the horizon.
            return {"options": None, "pruned_note": (
                f"Raw events before {pruned_before:%Y-%m-%d %H:%M} UTC were removed by retention, and the cost "
                f"options are made of raw events: choose a period from {pruned_before:%Y-%m-%d} on."
            )}
        return {"options": with_percents(cost_selectors.cost_options(cost_filters(filters, allowed)))}
