"""The staff console: the Django admin for events, conversations, prices and keys.

The event table grows to millions of rows, so its pages never count it in
full and take filter choices from recent rows only. Staff limited to some
businesses see only those, in every list, filter and export.
"""

from __future__ import annotations

import csv
import hashlib
import uuid
from datetime import timedelta
from typing import Any, Iterable, Iterator

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Avg, OuterRef, Q, QuerySet, Subquery, Sum
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join

from metrics_app import (
    admin_dashboard,
    admin_keys,  # noqa: F401  (businesses and their API keys)
    conversations,
)
from metrics_app.access import visible_businesses, visible_events, visible_rows
from metrics_app.admin_actions import CheckedSelectionAdmin
from metrics_app.errors import error_response
from metrics_app.models import AIMetric, Conversation, ModelPrice, StaffBusinessAccess

# Counting beyond this many matching rows costs more than it tells: the page
# then shows an estimate (PostgreSQL's planner) or this number. With a rare
# filter (failed replies, 3%) a count to 10,000 read 330,000 rows, about 0.3 s
# at 5M events; 1,000 (twenty pages) reads a tenth of that.
EXACT_COUNT_LIMIT = 1_000
# A CSV export streams at most this many rows; narrow the filters for more.
MAX_EXPORT_ROWS = 1_000_000


class EstimatedCountPaginator(Paginator):
    """Counts exactly up to EXACT_COUNT_LIMIT rows, then estimates instead of scanning the table."""

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        exact = queryset.order_by()[: EXACT_COUNT_LIMIT + 1].count()
        if exact <= EXACT_COUNT_LIMIT:
            return exact
        return max(EXACT_COUNT_LIMIT + 1, planner_estimate(queryset))


def planner_estimate(queryset: QuerySet) -> int:
    """The planner's row estimate for `queryset` on PostgreSQL; 0 elsewhere."""
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return 0
    sql, params = queryset.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        import json

        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


# Past this many businesses, naming them all in a search costs more than it saves.
MAX_BUSINESSES_NAMED = 1000


def by_business_and(request: HttpRequest, queryset: QuerySet, **lookup: Any) -> QuerySet:
    """`queryset` filtered by an id whose indexes lead with business_id.

    Event and conversation ids are indexed per business ((business_id,
    event_id), (business_id, conversation_id, ...)). Without a business in the
    query PostgreSQL would scan the table; naming the visible businesses lets
    it probe each business's index instead (0.3 s -> a few ms at 1M events).
    """
    if request.GET.get(BusinessFilter.parameter_name):
        return queryset.filter(**lookup)
    ids = list(visible_businesses(request.user).values_list("id", flat=True)[: MAX_BUSINESSES_NAMED + 1])
    if len(ids) > MAX_BUSINESSES_NAMED:
        return queryset.filter(**lookup)
    return queryset.filter(business_id__in=ids, **lookup)


class BusinessFilter(admin.SimpleListFilter):
    title = "business"
    parameter_name = "business"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(b.id, str(b)) for b in visible_businesses(request.user).order_by("id")[:500]]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(business_id=value) if value else queryset


class RecentValuesFilter(admin.SimpleListFilter):
    """Choices are the values seen lately in the businesses the user may see.

    Listing every distinct value would scan the whole table; the last
    RECENT_DAYS days, cached for a few minutes, are what staff filter on.
    """

    field_name = ""
    RECENT_DAYS = 7
    MAX_CHOICES = 50

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        businesses = sorted(visible_businesses(request.user).values_list("id", flat=True))
        scope = hashlib.sha256("\n".join(businesses).encode()).hexdigest()[:32]
        cache_key = f"admin-choices:{self.field_name}:{scope}"
        values = cache.get(cache_key)
        if values is None:
            since = timezone.now() - timedelta(days=self.RECENT_DAYS)
            recent = visible_events(request.user).filter(timestamp__gte=since).exclude(
                **{f"{self.field_name}__isnull": True}
            )
            values = sorted(recent.values_list(self.field_name, flat=True).distinct()[: self.MAX_CHOICES])
            cache.set(cache_key, values, 300)
        return [(value, value) for value in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(**{self.field_name: value}) if value else queryset


class ModelNameFilter(RecentValuesFilter):
    title = "model"
    parameter_name = "model"
    field_name = "model_name"


class IntentFilter(RecentValuesFilter):
    title = "intent"
    parameter_name = "intent"
    field_name = "intent_detected"


class ResponseTypeFilter(RecentValuesFilter):
    title = "response type"
    parameter_name = "response_type"
    field_name = "response_type"


class FailedFilter(admin.SimpleListFilter):
    """A failed reply is one with success_rate 0 or response_type "error" (the product's definition)."""

    title = "reply outcome"
    parameter_name = "failed"
    FAILED = Q(success_rate=0) | Q(response_type="error")

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "failed"), ("no", "succeeded")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(self.FAILED)
        if self.value() == "no":
            return queryset.exclude(self.FAILED)
        return queryset


# Columns of the CSV export, in order: every stored field but the internal row id.
EXPORT_FIELDS = (
    "event_id", "business_id", "conversation_id", "session_id", "timestamp", "created_at",
    "response_time_ms", "success_rate", "tokens_used", "input_tokens", "output_tokens", "api_cost_usd",
    "model_name", "intent_detected", "response_type", "appointment_requested", "appointment_booked",
    "human_handoff_requested", "user_message_length", "ai_response_length", "prompt_version", "kb_version",
)
# A cell a spreadsheet would run as a formula; client-sent text is prefixed with a quote.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


class _Echo:
    """A file-like object whose write returns the line, for streaming csv.writer output."""

    def write(self, value: str) -> str:
        return value


def stream_csv(rows: Iterable[tuple[Any, ...]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_FIELDS)
    for row in rows:
        yield writer.writerow([_csv_cell(value) for value in row])


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
            "user_message_length", "ai_response_length",
        )}),
        ("Tokens and cost", {"fields": ("tokens_used", "input_tokens", "output_tokens", "api_cost_usd")}),
        ("Outcome", {"fields": ("appointment_requested", "appointment_booked", "human_handoff_requested")}),
        ("Versions", {"fields": ("prompt_version", "kb_version")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[AIMetric]:
        return visible_events(request.user, super().get_queryset(request))

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
        info = self.opts.app_label, self.opts.model_name
        return [
            path("export.csv", self.admin_site.admin_view(self.export_view), name="%s_%s_export" % info),
            path(
                "dashboard/",
                self.admin_site.admin_view(admin_dashboard.DashboardView.as_view(model_admin=self)),
                name="%s_%s_dashboard" % info,
            ),
            *super().get_urls(),
        ]

    def _csv_response(self, queryset: QuerySet, filename: str) -> StreamingHttpResponse:
        rows = queryset.order_by("timestamp", "id").values_list(*EXPORT_FIELDS)[:MAX_EXPORT_ROWS]
        response = StreamingHttpResponse(stream_csv(rows.iterator(chunk_size=2000)), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    def export_view(self, request: HttpRequest) -> HttpResponse:
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


def _conversation_events(business_field: str = "business_id") -> QuerySet[AIMetric]:
    """The events of the outer conversation row, grouped to one row (uses ai_metrics_conversation_idx)."""
    return (
        AIMetric.objects.filter(business_id=OuterRef(business_field), conversation_id=OuterRef("conversation_id"))
        .order_by()
        .values("business_id")
    )


@admin.register(Conversation)
class ConversationAdmin(CheckedSelectionAdmin):
    """Conversations with their figures; the change page lists the conversation's events in order."""

    list_display = (
        "conversation_id", "business", "first_at", "last_at", "turns", "tokens", "cost", "mean_latency_ms",
        "appointment_requested", "appointment_booked", "human_handoff_requested",
    )
    list_filter = (
        BusinessFilter, ("first_at", admin.DateFieldListFilter), "appointment_requested", "appointment_booked",
        "human_handoff_requested",
    )
    list_select_related = ("business",)
    list_per_page = 50
    ordering = ("-first_at",)
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    search_fields = ("conversation_id",)
    search_help_text = "A conversation id (exact)."
    actions = ["mark_booked"]
    fields = (
        "business", "conversation_id", "first_at", "last_at", "turns", "appointment_requested",
        "appointment_booked", "human_handoff_requested", "outcome_recorded_at", "outcome_note", "events_table",
    )
    readonly_fields = fields
    MAX_EVENTS_SHOWN = 500

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        events = _conversation_events()
        return visible_rows(request.user, super().get_queryset(request)).annotate(
            _tokens=Subquery(events.annotate(v=Sum("tokens_used")).values("v")[:1]),
            _cost=Subquery(events.annotate(v=Sum("cost_usd")).values("v")[:1]),
            _latency=Subquery(events.annotate(v=Avg("response_time_ms")).values("v")[:1]),
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()[:255]
        return (by_business_and(request, queryset, conversation_id=term) if term else queryset), False

    @admin.display(description="tokens", ordering="_tokens")
    def tokens(self, obj: Conversation) -> int | None:
        return obj._tokens

    @admin.display(description="cost (USD)", ordering="_cost")
    def cost(self, obj: Conversation) -> str:
        return "" if obj._cost is None else f"{obj._cost:.6f}"

    @admin.display(description="mean latency (ms)", ordering="_latency")
    def mean_latency_ms(self, obj: Conversation) -> str:
        return "" if obj._latency is None else f"{obj._latency:.0f}"

    @admin.display(description="events, in order")
    def events_table(self, obj: Conversation) -> str:
        events = list(
            AIMetric.objects.filter(business_id=obj.business_id, conversation_id=obj.conversation_id)
            .order_by("timestamp", "id")
            .only(
                "id", "timestamp", "model_name", "intent_detected", "response_type", "response_time_ms",
                "tokens_used", "cost_usd", "success_rate", "appointment_requested", "appointment_booked",
                "human_handoff_requested",
            )[: self.MAX_EVENTS_SHOWN]
        )
        if not events:
            return "No events."

        def flags(event: AIMetric) -> str:
            names = [("requested", event.appointment_requested), ("booked", event.appointment_booked),
                     ("handoff", event.human_handoff_requested), ("failed", event.failed)]
            return ", ".join(name for name, on in names if on)

        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
            "<td>{}</td><td>{}</td></tr>",
            (
                (
                    reverse("admin:metrics_app_aimetric_change", args=[event.pk]),
                    f"{event.timestamp:%Y-%m-%d %H:%M:%S}", event.model_name or "unknown",
                    event.intent_detected or "", event.response_type or "", event.response_time_ms,
                    event.tokens_used, "" if event.cost_usd is None else f"{event.cost_usd:.6f}", flags(event),
                )
                for event in events
            ),
        )
        return format_html(
            '<table class="mlops-events"><thead><tr><th>time (UTC)</th><th>model</th><th>intent</th>'
            "<th>type</th><th>latency ms</th><th>tokens</th><th>cost USD</th><th>outcome</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            rows,
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # conversations come from events

    def has_delete_permission(self, request: HttpRequest, obj: Conversation | None = None) -> bool:
        return False

    @admin.action(description="Record a booked appointment for the selected conversations", permissions=["change"])
    def mark_booked(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        changed = 0
        for conversation in queryset[:1000]:
            result = conversations.record_outcome(
                conversation, flags={"appointment_booked": True}, note=f"booked, recorded in the admin by {request.user}"
            )
            changed += bool(result.changed)
        self.message_user(request, f"Recorded a booking for {changed} conversation(s).", messages.SUCCESS)


@admin.register(ModelPrice)
class ModelPriceAdmin(CheckedSelectionAdmin):
    list_display = (
        "model_pattern", "input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok", "valid_from",
        "source_as_of", "source_link",
    )
    list_filter = ("valid_from", "source_as_of")
    search_fields = ("model_pattern",)
    ordering = ("model_pattern", "-valid_from")
    readonly_fields = ("updated_at",)

    @admin.display(description="source")
    def source_link(self, obj: ModelPrice) -> str:
        return format_html('<a href="{}" rel="noopener noreferrer" target="_blank">{}</a>', obj.source_url, obj.source_url)


class StaffBusinessAccessForm(forms.ModelForm):
    """A grant names one business, or says every business with a box of its own: an empty field is not a grant."""

    every_business = forms.BooleanField(
        required=False, help_text="Grant every business, present and future, instead of one."
    )

    class Meta:
        model = StaffBusinessAccess
        fields = ("user", "business", "every_business")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["business"].help_text = "The business this user may see."
        if self.instance.pk and self.instance.grants_every_business:
            self.initial["every_business"] = True

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("every_business") and data.get("business"):
            self.add_error("business", "Leave the business empty when granting every business.")
        elif not data.get("every_business") and not data.get("business"):
            self.add_error("business", "Choose a business, or tick 'every business'.")
        return data


@admin.register(StaffBusinessAccess)
class StaffBusinessAccessAdmin(CheckedSelectionAdmin):
    """What each staff user may see: one business per row, or every business. Only superusers grant: nobody widens their own."""

    form = StaffBusinessAccessForm
    list_display = ("user", "grant")
    list_filter = (BusinessFilter,)
    list_select_related = ("user", "business")
    search_fields = ("user__username", "business__id", "business__name")
    autocomplete_fields = ("business",)

    @admin.display(description="may see", ordering="business")
    def grant(self, obj: StaffBusinessAccess) -> str:
        return "every business" if obj.grants_every_business else str(obj.business_id)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser

    def has_view_permission(self, request: HttpRequest, obj: StaffBusinessAccess | None = None) -> bool:
        return request.user.is_superuser

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser

    def has_change_permission(self, request: HttpRequest, obj: StaffBusinessAccess | None = None) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj: StaffBusinessAccess | None = None) -> bool:
        return request.user.is_superuser
