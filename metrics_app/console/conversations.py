"""The conversations list of the console, with the action that records a booking.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Avg, OuterRef, QuerySet, Subquery, Sum
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from metrics_app.access import visible_rows
from metrics_app.console.actions import CheckedSelectionAdmin
from metrics_app.console.lists import BusinessFilter, EstimatedCountPaginator, by_business_and
from metrics_app.conversations import services as conversations
from metrics_app.conversations.selectors import ended, ended_negative, events_of
from metrics_app.erasure import services as erasure
from metrics_app.models import AIMetric, Conversation


def _conversation_events(business_field: str = "business_id") -> QuerySet[AIMetric, Any]:  # rows of values()
    """The events of the outer conversation row, grouped to one row (uses ai_metrics_conversation_idx)."""
    return (
        AIMetric.objects.filter(business_id=OuterRef(business_field), conversation_id=OuterRef("conversation_id"))
        .order_by()
        .values("business_id")
    )


class StateFilter(admin.SimpleListFilter):
    """Open or ended (the business's idle time passed since the last event), and the ones that ended badly."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("open", "open"), ("ended", "ended"),
                ("ended_negative", "ended negative, not booked or handed off")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        chosen = {"open": ~ended(), "ended": ended(), "ended_negative": ended_negative()}.get(self.value() or "")
        return queryset if chosen is None else queryset.filter(chosen)


# Conversations one action erases at most; select fewer for more.
MAX_ERASED_AT_ONCE = 100


@admin.register(Conversation)
class ConversationAdmin(CheckedSelectionAdmin):
    """Conversations with their figures; the change page lists the conversation's events in order."""

    list_display = (
        "conversation_id", "business", "first_at", "last_at", "turns", "tokens", "cost", "mean_latency_ms",
        "appointment_requested", "appointment_booked", "human_handoff_requested", "last_sentiment",
    )
    list_filter = (
        BusinessFilter, StateFilter, ("first_at", admin.DateFieldListFilter), "appointment_requested",
        "appointment_booked", "human_handoff_requested",
    )
    list_select_related = ("business",)
    list_per_page = 50
    ordering = ("-first_at",)
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    search_fields = ("conversation_id",)
    search_help_text = "A conversation id (exact)."
    actions = ["mark_booked", "erase_selected"]
    fields = (
        "business", "conversation_id", "first_at", "last_at", "turns", "appointment_requested",
        "appointment_booked", "human_handoff_requested", "last_sentiment", "last_sentiment_at",
        "outcome_recorded_at", "outcome_note", "events_table",
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
        return obj._tokens  # type: ignore[attr-defined]  # annotated by get_queryset

    @admin.display(description="cost (USD)", ordering="_cost")
    def cost(self, obj: Conversation) -> str:
        cost = obj._cost  # type: ignore[attr-defined]  # annotated by get_queryset
        return "" if cost is None else f"{cost:.6f}"

    @admin.display(description="mean latency (ms)", ordering="_latency")
    def mean_latency_ms(self, obj: Conversation) -> str:
        latency = obj._latency  # type: ignore[attr-defined]  # annotated by get_queryset
        return "" if latency is None else f"{latency:.0f}"

    @admin.display(description="events, in order")
    def events_table(self, obj: Conversation) -> str:
        events = list(
            events_of(obj, limit=self.MAX_EVENTS_SHOWN)
            .only(
                "id", "timestamp", "model_name", "intent_detected", "response_type", "response_time_ms",
                "tokens_used", "cost_usd", "success_rate", "appointment_requested", "appointment_booked",
                "human_handoff_requested",
            )
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

    @admin.action(description="Erase the selected conversations everywhere", permissions=["erase"])
    def erase_selected(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> TemplateResponse | None:
        """After a confirmation page: each conversation's events, row and sums, with an audit record of each."""
        chosen = list(queryset[:MAX_ERASED_AT_ONCE])
        if request.POST.get("confirmed") != "yes":
            context = {**self.admin_site.each_context(request), "title": "Erase conversations everywhere?",
                       "opts": self.opts, "conversations": chosen,
                       "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
                       "action": "erase_selected"}
            return TemplateResponse(request, "admin/metrics_app/conversation/erase_confirmation.html", context)
        reason = request.POST.get("reason", "")[:300]
        erased = 0
        for conversation in chosen:
            try:
                done = erasure.erase_conversation(request.user, conversation.business_id,
                                                  conversation.conversation_id, reason=reason)
            except erasure.ErasureRefused as refused:
                self.message_user(request, f"{conversation}: {refused}", messages.ERROR)
                continue
            erased += done.events
        self.message_user(request, f"Erased {len(chosen)} conversation(s) and {erased} event(s) everywhere.",
                          messages.SUCCESS)
        return None

    def has_erase_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("metrics_app.add_erasurerecord")

    @admin.action(description="Record a booked appointment for the selected conversations", permissions=["change"])
    def mark_booked(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        changed = 0
        for conversation in queryset[:1000]:
            result = conversations.record_outcome(
                conversation,
                flags={"appointment_booked": True},
                note=f"booked, recorded in the admin by {request.user}",
            )
            changed += bool(result.changed)
        self.message_user(request, f"Recorded a booking for {changed} conversation(s).", messages.SUCCESS)
