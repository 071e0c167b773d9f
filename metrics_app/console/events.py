"""The events list of the console: read-only AI replies, filters, search by exact id, the CSV export and the
dashboard page.

The event table grows to millions of rows, so its pages never count it in
full and take filter choices from recent rows only. Staff limited to some
businesses see only those, in every list, filter and export.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path
from django.utils import timezone

from metrics_app import horizon
from metrics_app.access import visible_events
from metrics_app.console import costs as admin_costs
from metrics_app.console import dashboard as admin_dashboard
from metrics_app.console.actions import CheckedSelectionAdmin
from metrics_app.console.export import export_rows, stream_csv
from metrics_app.console.lists import (
    BusinessFilter,
    EstimatedCountPaginator,
    FailedFilter,
    IntentFilter,
    ModelNameFilter,
    ResponseTypeFilter,
    by_business_and,
)
from metrics_app.errors import error_response
from metrics_app.models import RETENTION_NAME, AIMetric, RetentionState


@admin.register(AIMetric)
class AIMetricAdmin(CheckedSelectionAdmin):
    """The events: read-only, filtered, searchable by id, exportable as CSV."""

    list_display = (
        "timestamp", "business", "conversation_id", "model_name", "intent_detected", "response_type",
        "response_time_ms", "tokens_used", "api_cost_usd", "appointment_requested", "appointment_booked",
        "human_handoff_requested", "success_rate",
    )
    list_display_links = ("timestamp",)
    list_filter = (
        BusinessFilter, ("timestamp", admin.DateFieldListFilter), ModelNameFilter, IntentFilter,
        ResponseTypeFilter, FailedFilter, "appointment_requested", "appointment_booked", "human_handoff_requested",
    )
    list_select_related = ("business",)
    # Rendering a row costs about 1.7 ms (13 columns): 50 rows keep a page near 100 ms.
    list_per_page = 50
    list_max_show_all = 1000
    ordering = ("-timestamp",)
    date_hierarchy = None  # its year and month links would run DISTINCT over the whole table
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    search_fields = ("event_id", "conversation_id")  # see get_search_results
    search_help_text = "An event id or a conversation id (exact)."
    actions = ["export_selected_csv"]
    change_list_template = "admin/metrics_app/aimetric/change_list.html"
    fieldsets = (
        (None, {"fields": ("event_id", "business", "conversation_id", "session_id", "timestamp", "created_at")}),
        ("Reply", {"fields": (
            "model_name", "response_time_ms", "success_rate", "response_type", "intent_detected",
            "user_message_length", "user_sentiment", "sentiment_source", "ai_response_length",
        )}),
        ("Tokens and cost", {"fields": (
            "tokens_used", "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens",
            "reasoning_output_tokens", "api_cost_usd", "cost_usd", "cost_basis", "cache_savings_usd",
        )}),
        ("Outcome", {"fields": ("appointment_requested", "appointment_booked", "human_handoff_requested")}),
        ("Versions", {"fields": ("prompt_version", "kb_version")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[AIMetric]:
        return visible_events(request.user, super().get_queryset(request))

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """The list, saying which raw events retention removed (their figures stay in the rollups)."""
        state = RetentionState.objects.filter(name=RETENTION_NAME, pruned_before__isnull=False).first()
        if state is not None:
            extra_context = {**(extra_context or {}), "retention": {
                "pruned_before": state.pruned_before, "events_pruned": state.events_pruned,
                "days": horizon.retention_days(),
            }}
        return super().changelist_view(request, extra_context)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """Exact matches only: a substring search would scan every row."""
        term = search_term.strip()[:255]
        if not term:
            return queryset, False
        try:
            return by_business_and(request, queryset, event_id=uuid.UUID(term)), False
        except ValueError:
            return by_business_and(request, queryset, conversation_id=term), False

    # Events are what the chat app reported: staff read them, never edit or delete them.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AIMetric | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AIMetric | None = None) -> bool:
        return False

    def get_urls(self) -> list:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("export.csv", self.admin_site.admin_view(self.export_view), name=f"{prefix}_export"),
            path(
                "dashboard/",
                self.admin_site.admin_view(admin_dashboard.DashboardView.as_view(model_admin=self)),
                name=f"{prefix}_dashboard",
            ),
            path(
                "costs/",
                self.admin_site.admin_view(admin_costs.CostsView.as_view(model_admin=self)),
                name=f"{prefix}_costs",
            ),
            *super().get_urls(),
        ]

    def _csv_response(self, queryset: QuerySet, filename: str) -> StreamingHttpResponse:
        response = StreamingHttpResponse(stream_csv(export_rows(queryset)), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    def export_view(self, request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
        """Every event that the change list shows with the same filters and search, as CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return error_response(400, "Unknown filter", {"filters": ["use the filters of the events page"]})
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        return self._csv_response(changelist.queryset, f"ai-events-{stamp}.csv")

    @admin.action(description="Export selected events as CSV", permissions=["view"])
    def export_selected_csv(self, request: HttpRequest, queryset: QuerySet[AIMetric]) -> StreamingHttpResponse:
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        return self._csv_response(queryset, f"ai-events-selected-{stamp}.csv")
