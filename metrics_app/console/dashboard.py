"""The analytics dashboard page inside the admin.

The page holds no figures of its own: its script asks the analytics API, with
the staff member's session, for exactly the filters the page shows, so what is
charted is what the API answers. This module turns the page's query string
into those filters, limited to the businesses the staff member may see.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.views import View

from metrics_app.access import visible_business_ids, visible_businesses

PERIODS = (
    ("1d", "Last 24 hours"),
    ("7d", "Last 7 days"),
    ("30d", "Last 30 days"),
    ("90d", "Last 90 days"),
    ("custom", "From / to dates"),
)
_PERIOD_DAYS = {"7d": 7, "30d": 30, "90d": 90}
MAX_DAYS = 366
# Hourly buckets over more than this many days would draw thousands of points.
MAX_HOURLY_DAYS = 31


@dataclass(frozen=True)
class DashboardFilters:
    business_id: str | None
    period: str
    start: datetime  # inclusive
    end: datetime  # exclusive
    bucket: str
    tz: str
    label: str

    @property
    def start_date(self) -> str:
        return self.start.date().isoformat()

    @property
    def end_date(self) -> str:
        return (self.end - timedelta(microseconds=1)).date().isoformat()

    def previous(self) -> tuple[datetime, datetime]:
        """The period of the same length just before this one, for "what changed"."""
        return self.start - (self.end - self.start), self.start

    def api_params(self) -> dict[str, str]:
        params = {"start": self.start.isoformat(), "end": self.end.isoformat(), "tz": self.tz, "bucket": self.bucket}
        if self.business_id:
            params["business_id"] = self.business_id
        return params


# Events are no older than 2000 (validation refuses them); far-future dates would overflow.
EARLIEST_DAY = date(2000, 1, 1)
LATEST_DAY = date(2100, 1, 1)


def _parse_date(value: str | None) -> date | None:
    if not value:
        return None
    try:
        day = date.fromisoformat(value[:10])
    except ValueError:
        return None
    return day if EARLIEST_DAY <= day <= LATEST_DAY else None


def parse_filters(query: Any, *, zones: dict[str, str], now: datetime) -> tuple[DashboardFilters, list[str]]:
    """The filters a query string asks for, corrected where it asks for too much; problems are listed.

    `zones` maps the business ids the user may see to their time zones; no
    business means all of those (the API limits itself the same way). Periods are whole local days
    in the chosen business's time zone (UTC for all businesses), except the
    last 24 hours, which are whole hours.
    """
    problems: list[str] = []
    business_id = _chosen_business(query, zones, problems)
    tz_name = zones.get(business_id, "UTC") if business_id else "UTC"
    zone = zoneinfo.ZoneInfo(tz_name)
    period, start_day, end_day = _chosen_period(query, problems)
    start, end, label = _period_bounds(period, start_day, end_day, zone, now.astimezone(zone))
    bucket = _chosen_bucket(query, (end - start).total_seconds() / 86400, problems)
    filters = DashboardFilters(
        business_id=business_id, period=period, start=start, end=end, bucket=bucket, tz=tz_name, label=label
    )
    return filters, problems


def _chosen_business(query: Any, zones: dict[str, str], problems: list[str]) -> str | None:
    business_id = (query.get("business") or "").strip() or None
    if business_id is not None and business_id not in zones:
        problems.append("That business does not exist or is not yours to see; showing the default instead.")
        return None
    return business_id


def _chosen_period(query: Any, problems: list[str]) -> tuple[str, date | None, date | None]:
    """The period's name and, for a custom one, its first and last day (at most MAX_DAYS apart)."""
    period = query.get("period") or "7d"
    start_day, end_day = _parse_date(query.get("start")), _parse_date(query.get("end"))
    if period not in dict(PERIODS):
        problems.append("Unknown period; showing the last 7 days.")
        period = "7d"
    if period == "custom" or (start_day and end_day and query.get("period") in (None, "", "custom")):
        if not (start_day and end_day) or end_day < start_day:
            problems.append("Give both dates, the first not after the second; showing the last 7 days.")
            period = "7d"
        elif (end_day - start_day).days + 1 > MAX_DAYS:
            problems.append(
                f"A period holds at most {MAX_DAYS} days; showing the last {MAX_DAYS} days up to the end date."
            )
            start_day = end_day - timedelta(days=MAX_DAYS - 1)
            period = "custom"
        else:
            period = "custom"
    return period, start_day, end_day


def _period_bounds(
    period: str, start_day: date | None, end_day: date | None, zone: zoneinfo.ZoneInfo, local_now: datetime
) -> tuple[datetime, datetime, str]:
    """The period's start, exclusive end and label."""
    if period == "1d":
        end = local_now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        return end - timedelta(hours=24), end, "Last 24 hours"
    if period == "custom":
        assert start_day and end_day
        start = datetime.combine(start_day, time(), tzinfo=zone)
        end = datetime.combine(end_day + timedelta(days=1), time(), tzinfo=zone)
        return start, end, f"{start_day.isoformat()} to {end_day.isoformat()}"
    days = _PERIOD_DAYS[period]
    today = local_now.date()
    start = datetime.combine(today - timedelta(days=days - 1), time(), tzinfo=zone)
    end = datetime.combine(today + timedelta(days=1), time(), tzinfo=zone)
    return start, end, dict(PERIODS)[period]


def _chosen_bucket(query: Any, days_long: float, problems: list[str]) -> str:
    bucket = query.get("bucket") or ("hour" if days_long <= 2 else "day")
    if bucket not in ("hour", "day"):
        problems.append("Buckets are hours or days; showing days.")
        bucket = "day"
    if bucket == "hour" and days_long > MAX_HOURLY_DAYS:
        problems.append(f"Hourly buckets are for periods of up to {MAX_HOURLY_DAYS} days; showing days.")
        bucket = "day"
    return bucket


class PeriodPage(View):
    """An admin page of figures for one business or all the user's, over a period (wrapped in admin_view).

    It checks the model admin's view permission, reads the page's filters
    for the businesses the user may see, and hands them to `figures`, which
    adds what the page shows to the context.
    """

    model_admin: admin.ModelAdmin | None = None
    title = ""
    template = ""

    def get(self, request: HttpRequest) -> TemplateResponse:
        model_admin = self.model_admin
        assert model_admin is not None
        if not model_admin.has_view_permission(request):
            raise PermissionDenied
        businesses = list(visible_businesses(request.user).order_by("id"))
        allowed = visible_business_ids(request.user)
        filters, problems = parse_filters(request.GET, zones={b.id: b.time_zone for b in businesses},
                                          now=timezone.now())
        context = {
            **model_admin.admin_site.each_context(request),
            "title": self.title,
            "opts": model_admin.opts,
            "businesses": businesses,
            "can_see_all": allowed is None,
            "periods": PERIODS,
            "filters": filters,
            "problems": problems,
            **self.figures(filters, allowed),
        }
        return TemplateResponse(request, self.template, context)

    def figures(self, filters: DashboardFilters, allowed: set[str] | None) -> dict[str, Any]:
        raise NotImplementedError


class DashboardView(PeriodPage):
    """GET /admin/metrics_app/aimetric/dashboard/: the charts page."""

    title = "Analytics dashboard"
    template = "admin/metrics_app/aimetric/dashboard.html"

    def figures(self, filters: DashboardFilters, allowed: set[str] | None) -> dict[str, Any]:
        previous_start, previous_end = filters.previous()
        return {"dashboard_config": {
            "api": api_urls(),
            "params": filters.api_params(),
            "previous": {**filters.api_params(), "start": previous_start.isoformat(), "end": previous_end.isoformat()},
            "filters": {**asdict(filters), "start": filters.start.isoformat(), "end": filters.end.isoformat()},
        }}


def api_urls() -> dict[str, str]:
    """Where the page's script finds each figure."""
    return {
        "summary": reverse("analytics-summary"),
        "timeseries": reverse("analytics-timeseries"),
        "funnel": reverse("analytics-funnel"),
        "intents": reverse("analytics-breakdown", args=["intent"]),
        "opening_hours": reverse("analytics-opening-hours"),
    }
