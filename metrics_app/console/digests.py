"""The weekly digests in the console: the deliveries sent, and any week's digest as PDF, CSV or a page.

Staff who may view businesses open *Weekly digests -> Download a digest*,
pick one of the businesses the access rule lets them see and a week, and
get that week's digest. A business they may not see answers 404 whatever
it holds, the same answer as a business that does not exist.
"""

from __future__ import annotations

import base64
import re
import zoneinfo
from datetime import date
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from metrics_app.access import visible_businesses, visible_rows
from metrics_app.analytics.rollups import RebuildPending
from metrics_app.console.lists import BusinessFilter
from metrics_app.digests import render
from metrics_app.digests.selectors import BadWeek, check_week, due_week, week_of, weekly_digest
from metrics_app.models import Business, DigestDelivery, DigestStatus

FORMATS = ("pdf", "csv", "html")
# The businesses the page's list offers; a longer list is typed as an id.
MAX_BUSINESSES_LISTED = 500
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@admin.register(DigestDelivery)
class DigestDeliveryAdmin(admin.ModelAdmin):
    list_display = ("business", "week_start", "status", "recipients", "attempts", "sent_at", "error")
    list_filter = ("status", BusinessFilter)
    list_select_related = ("business",)
    date_hierarchy = "week_start"
    ordering = ("-week_start", "business")

    def get_queryset(self, request: HttpRequest) -> QuerySet[DigestDelivery]:
        return visible_rows(request.user, super().get_queryset(request))

    @admin.display(description="recipients mailed")
    def recipients(self, obj: DigestDelivery) -> int:
        return len(obj.sent_to or [])

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Whoever may view businesses may read their digests; the rows are limited to the businesses they see.
        return super().has_view_permission(request, obj) or request.user.has_perm("metrics_app.view_business")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a delivery is made by sending, never by hand

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a failed delivery lets the next run send that week again; a sent one stays, or it would go twice.
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or obj.status == DigestStatus.FAILED)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        # The bulk delete would not ask each row: deleting goes one failed row at a time.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def get_urls(self) -> list:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("download/", self.admin_site.admin_view(self.download_view), name=f"{prefix}_download"),
            *super().get_urls(),
        ]

    def download_view(self, request: HttpRequest) -> HttpResponse:
        """GET ?business=<id>&week=<YYYY-MM-DD>&format=pdf|csv|html: the digest; without a format, the form."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        asked = (request.GET.get("business") or "").strip()
        business = _visible_business(request, asked) if asked else None
        wanted = request.GET.get("format") or ""
        problems: list[str] = []
        if wanted and wanted not in FORMATS:
            problems.append(f"Unknown format {wanted[:20]!r}: choose PDF, CSV or HTML.")
        monday = _chosen_week(request.GET.get("week"), business, problems)
        if wanted and business is None and not problems:
            problems.append("Choose a business.")
        if business is not None and monday is not None and wanted in FORMATS and not problems:
            try:
                return _download(business, monday, wanted)
            except RebuildPending:
                problems.append("The analytics are being rebuilt (manage.py rebuild_analytics); try again after it.")
        context = {
            **self.admin_site.each_context(request),
            "title": "Download a weekly digest",
            "opts": self.opts,
            "businesses": list(visible_businesses(request.user).order_by("id")[:MAX_BUSINESSES_LISTED]),
            "chosen": business.pk if business else asked[:255],
            "week": (monday or _default_week(business)).isoformat(),
            "problems": problems,
        }
        return TemplateResponse(request, "admin/metrics_app/digestdelivery/download.html", context,
                                status=400 if problems else 200)


def _visible_business(request: HttpRequest, business_id: str) -> Business:
    """The business if the user may see it; 404 otherwise, whether or not it exists."""
    found = visible_businesses(request.user).filter(pk=business_id[:255]).first()
    if found is None:
        raise Http404("No such business, or not yours to see.")
    return found


def _zone(business: Business | None) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(business.time_zone if business and business.time_zone else "UTC")


def _default_week(business: Business | None) -> date:
    return due_week(_zone(business))


def _chosen_week(raw: str | None, business: Business | None, problems: list[str]) -> date | None:
    """The Monday of the week holding the asked date (default the last week ended), or None with a problem."""
    if not raw:
        return _default_week(business)
    try:
        monday = week_of(date.fromisoformat(raw.strip()[:10]))
    except ValueError:
        problems.append(f"{raw[:30]!r} is not a date: give one such as 2026-03-02 (YYYY-MM-DD).")
        return None
    try:
        check_week(monday, _zone(business), timezone.now())
    except BadWeek as exc:
        problems.append(f"No digest for that week: {exc}.")
        return None
    return monday


def _download(business: Business, monday: date, wanted: str) -> HttpResponse:
    digest = weekly_digest(business, monday)
    # An id stored by an older release may break today's id rule: only safe characters reach the file name.
    name = f"digest-{_SAFE_NAME.sub('_', business.pk)}-{monday.isoformat()}"
    if wanted == "html":
        chart = base64.b64encode(render.chart_png(digest)).decode("ascii")
        return HttpResponse(render.html(digest, f"data:image/png;base64,{chart}"), content_type="text/html")
    if wanted == "csv":
        response = HttpResponse(render.csv_text(digest), content_type="text/csv; charset=utf-8")
    else:
        response = HttpResponse(render.pdf(digest), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{name}.{wanted}"'
    return response
