"""The cost options page inside the admin: the period's cost, the same tokens at every other price, caching.

Unlike the dashboard, this page is drawn on the server: its figures are
tables, read with one call of the cost options selector (the same one
GET /api/analytics/costs answers with), for the businesses the staff member
may see.
"""

from __future__ import annotations

import zoneinfo
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone
from django.views import View

from metrics_app.access import visible_business_ids, visible_businesses
from metrics_app.analytics.selectors import Filters
from metrics_app.console.dashboard import PERIODS, DashboardFilters, parse_filters
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


class CostsView(View):
    """GET /admin/metrics_app/aimetric/costs/ (wrapped in admin_site.admin_view)."""

    model_admin: admin.ModelAdmin | None = None

    def get(self, request: HttpRequest) -> TemplateResponse:
        model_admin = self.model_admin
        assert model_admin is not None
        if not model_admin.has_view_permission(request):
            raise PermissionDenied
        businesses = list(visible_businesses(request.user).order_by("id"))
        visible = visible_business_ids(request.user)
        filters, problems = parse_filters(request.GET, zones={b.id: b.time_zone for b in businesses},
                                          now=timezone.now())
        options: dict[str, Any] | None = None
        if visible is None or visible:
            options = with_percents(cost_selectors.cost_options(cost_filters(filters, visible)))
        context = {
            **model_admin.admin_site.each_context(request),
            "title": "Cost options",
            "opts": model_admin.opts,
            "businesses": businesses,
            "can_see_all": visible is None,
            "periods": PERIODS,
            "filters": filters,
            "problems": problems,
            "options": options,
        }
        return TemplateResponse(request, "admin/metrics_app/aimetric/costs.html", context)
