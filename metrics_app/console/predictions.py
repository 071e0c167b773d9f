"""The likely-bookings pages of the console: each training's verdict, and the follow-up list of a business.

The follow-up page shows the business's latest evaluation (held-out Brier
score beside the base rate's, the reliability table, or why there are no
predictions) and its quiet conversations likely to book, each linked to its
conversation page. Both pages show only businesses the staff member may see.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.views import View

from metrics_app.access import visible_businesses, visible_rows
from metrics_app.models import BookingModel, Business
from metrics_app.predictions import selectors


def _chosen(request: HttpRequest, businesses: list[Business], problems: list[str]) -> Business | None:
    asked = (request.GET.get("business") or "").strip()
    by_id = {b.id: b for b in businesses}
    if asked and asked not in by_id:
        problems.append("That business does not exist or is not yours to see; showing another instead.")
    return by_id.get(asked) or (businesses[0] if businesses else None)


class FollowUpView(View):
    """GET /admin/metrics_app/bookingmodel/follow-up/: conversations likely to book that went quiet."""

    model_admin: admin.ModelAdmin | None = None

    def get(self, request: HttpRequest) -> TemplateResponse:
        model_admin = self.model_admin
        assert model_admin is not None
        if not model_admin.has_view_permission(request):
            raise PermissionDenied
        problems: list[str] = []
        businesses = list(visible_businesses(request.user).order_by("id"))
        business = _chosen(request, businesses, problems)
        answer = selectors.likely_bookings(business, limit=selectors.MAX_LIMIT) if business is not None else None
        rows = [
            {**row, "url": reverse("admin:metrics_app_conversation_change", args=[row["id"]]),
             "percent": f"{row['probability']:.0%}"}
            for row in (answer["follow_ups"] if answer else [])
        ]
        context = {
            **model_admin.admin_site.each_context(request),
            "title": "Likely bookings to follow up",
            "opts": model_admin.opts,
            "businesses": businesses,
            "business": business,
            "answer": answer,
            "rows": rows,
            "problems": problems,
        }
        return TemplateResponse(request, "admin/metrics_app/bookingmodel/follow_up.html", context)


@admin.register(BookingModel)
class BookingModelAdmin(admin.ModelAdmin):
    """Each training of each business's model, newest first; read-only (the worker and the command train)."""

    list_display = ("business", "trained_at", "status", "brier", "base_brier", "reason")
    list_filter = ("status",)
    list_select_related = ("business",)
    ordering = ("-trained_at", "-id")
    fields = ("business", "trained_at", "status", "reason", "metrics", "reliability", "spec")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[BookingModel]:
        return visible_rows(request.user, super().get_queryset(request))

    @admin.display(description="held-out Brier")
    def brier(self, obj: BookingModel) -> str:
        value = obj.metrics.get("brier")
        return "" if value is None else f"{value:.4f}"

    @admin.display(description="base rate's Brier")
    def base_brier(self, obj: BookingModel) -> str:
        value = obj.metrics.get("base_brier")
        return "" if value is None else f"{value:.4f}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("follow-up/", self.admin_site.admin_view(FollowUpView.as_view(model_admin=self)),
                 name=f"{prefix}_follow_up"),
            *super().get_urls(),
        ]
