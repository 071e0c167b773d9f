"""The compare page inside the admin, beside the dashboard: two variants of one dimension, or a saved experiment.

Like the dashboard, the page holds no figures of its own: its script asks the
compare API (or an experiment's results) with the staff member's session, for
exactly the question the page shows. This module turns the page's query string
into that question, limited to the businesses and experiments the staff
member may see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, QueryDict
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.views import View

from metrics_app.access import visible_businesses, visible_rows
from metrics_app.console.dashboard import PERIODS, DashboardFilters, parse_filters
from metrics_app.models import Business, Experiment, ExperimentDimension, ExperimentMetric
from metrics_app.rules import MAX_LABEL_LENGTH

# The compare's series is daily: a period of whole days says more than the last 24 hours.
COMPARE_PERIODS = tuple((value, label) for value, label in PERIODS if value != "1d")
# The experiments offered in the page's list, newest first.
MAX_EXPERIMENTS_LISTED = 200
# The variants offered for a dimension: its most used values in the period, from the breakdown API.
MAX_VARIANTS_OFFERED = 50


@dataclass(frozen=True)
class CompareChoice:
    """The ad hoc question the form asks: two values of one dimension of one business."""

    dimension: str
    a: str
    b: str
    primary_metric: str

    @property
    def complete(self) -> bool:
        return bool(self.a and self.b) and self.a != self.b


def parse_choice(query: Any, problems: list[str]) -> CompareChoice:
    """The dimension, the two variants and the primary metric a query string asks for; problems are listed."""
    dimension = query.get("dimension") or ExperimentDimension.PROMPT_VERSION.value
    if dimension not in ExperimentDimension.values:
        problems.append("Unknown dimension; comparing prompt versions.")
        dimension = ExperimentDimension.PROMPT_VERSION.value
    metric = query.get("primary_metric") or ExperimentMetric.BOOKING_RATE.value
    if metric not in ExperimentMetric.values:
        problems.append("Unknown primary metric; deciding on the booking rate.")
        metric = ExperimentMetric.BOOKING_RATE.value
    a, b = ((query.get(name) or "").strip() for name in ("a", "b"))
    for name, value in (("a", a), ("b", b)):
        if len(value) > MAX_LABEL_LENGTH:
            problems.append(f"Variant {name} is longer than {MAX_LABEL_LENGTH} characters; it is cut there.")
    a, b = a[:MAX_LABEL_LENGTH], b[:MAX_LABEL_LENGTH]
    if a and a == b:
        problems.append("Pick two different variants.")
    return CompareChoice(dimension=dimension, a=a, b=b, primary_metric=metric)


def _chosen_business(query: QueryDict, businesses: list[Business], problems: list[str]) -> QueryDict:
    """`query` with a business the user may see: the one asked for, else the first of theirs.

    A compare is of one business: its variants, its assignment and its time zone are its own.
    """
    query = query.copy()
    asked = (query.get("business") or "").strip()
    ids = [b.id for b in businesses]
    if asked and asked not in ids:
        problems.append("That business does not exist or is not yours to see; showing another instead.")
    if asked not in ids and ids:
        query["business"] = ids[0]
    return query


def _chosen_experiment(request: HttpRequest, problems: list[str]) -> Experiment | None:
    asked = (request.GET.get("experiment") or "").strip()
    if not asked:
        return None
    found = None
    # ASCII digits only (int() refuses '²'), and fewer than 19: a longer number would overflow the column.
    if asked.isascii() and asked.isdigit() and len(asked) < 19:
        found = visible_rows(request.user, Experiment.objects.select_related("business")).filter(pk=asked).first()
    if found is None:
        problems.append("That experiment does not exist or is not yours to see.")
    return found


def compare_params(filters: DashboardFilters, choice: CompareChoice) -> dict[str, str]:
    """What the page asks GET /api/analytics/compare."""
    assert filters.business_id is not None
    return {"business_id": filters.business_id, "dimension": choice.dimension, "a": choice.a, "b": choice.b,
            "primary_metric": choice.primary_metric, "start": filters.start.isoformat(),
            "end": filters.end.isoformat(), "tz": filters.tz}


class CompareView(View):
    """GET /admin/metrics_app/experiment/compare/: the compare page (wrapped in admin_site.admin_view)."""

    model_admin: admin.ModelAdmin | None = None

    def get(self, request: HttpRequest) -> TemplateResponse:
        model_admin = self.model_admin
        assert model_admin is not None
        if not model_admin.has_view_permission(request):
            raise PermissionDenied
        problems: list[str] = []
        businesses = list(visible_businesses(request.user).order_by("id"))
        experiment = _chosen_experiment(request, problems)
        query = _chosen_business(request.GET, businesses, problems)
        filters, period_problems = parse_filters(query, zones={b.id: b.time_zone for b in businesses},
                                                 now=timezone.now())
        problems += period_problems
        choice = parse_choice(request.GET, problems)
        values = {"start": filters.start.isoformat(), "end": filters.end.isoformat(), "tz": filters.tz,
                  "limit": str(MAX_VARIANTS_OFFERED)}
        config: dict[str, Any] = {
            "mode": "choose",
            "api": {"values": {dimension: reverse("analytics-breakdown", args=[dimension])
                               for dimension in ExperimentDimension.values}},
            "values_params": values,
        }
        if experiment is not None:
            config.update(mode="experiment", params={},
                          api={**config["api"], "answer": reverse("experiment-results", args=[experiment.pk])})
        elif filters.business_id is not None and choice.complete:
            config.update(mode="compare", params=compare_params(filters, choice),
                          api={**config["api"], "answer": reverse("analytics-compare")})
        experiments = list(
            visible_rows(request.user, Experiment.objects.select_related("business"))
            .order_by("-started_at", "-id")[:MAX_EXPERIMENTS_LISTED]
        )
        context = {
            **model_admin.admin_site.each_context(request),
            "title": "Compare two variants",
            "opts": model_admin.opts,
            "businesses": businesses,
            "experiments": experiments,
            "experiment": experiment,
            "dimensions": ExperimentDimension.choices,
            "metrics": ExperimentMetric.choices,
            "periods": COMPARE_PERIODS,
            "filters": filters,
            "choice": choice,
            "problems": problems,
            "compare_config": config,
        }
        return TemplateResponse(request, "admin/metrics_app/experiment/compare.html", context)
