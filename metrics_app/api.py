"""The analytics and conversations API: validate the query, check access, call a selector or service.

Access: a staff session or an API key with the read scope. A business key sees
only its business, an agency key every business, a staff user the businesses
metrics_app.access allows. Definitions of every figure: docs/analytics.md.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.db.models import Count, Max, Min, Q, Sum
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import permissions, serializers
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from metrics_app import access, conversations, schema, selectors  # noqa: F401  (schema: the auth extension)
from metrics_app.models import AIMetric, Conversation

MAX_RANGE = timedelta(days=400)
# Periods stay well inside the calendar, so local-time arithmetic in any zone cannot overflow.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
DEFAULT_RANGE = timedelta(days=7)


# --- Errors, documented once for every endpoint.


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="One-line summary.")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), help_text="Reasons, by field."
    )


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    meaning = {
        400: "Invalid query or body; `errors` names each bad field.",
        401: "No API key or session, or an unknown, revoked or expired key (with WWW-Authenticate).",
        403: "The key lacks the scope, or asks about a business it may not see.",
        404: "No such conversation (or not one this caller may see).",
        405: "Method not allowed.",
        429: "Too many requests for this key (with Retry-After).",
        503: "The database is unavailable (with Retry-After).",
    }
    return {code: OpenApiResponse(ErrorSerializer, description=meaning[code]) for code in codes}


READ_ERRORS = _errors(400, 401, 403, 405, 429, 503)


class CanRead(permissions.BasePermission):
    """A staff session or a read key; a key or user that may see no business is refused."""

    message = "This key or user may not read analytics (needs the read scope or a staff account)"

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        return access.visible_business_ids(user) != set()


# --- Query parameters.


def _refuse_outside_calendar(**moments: datetime | None) -> None:
    outside = {name: ["must be between 2000-01-01 and 2100-01-01"]
               for name, moment in moments.items() if moment is not None and not EARLIEST <= moment <= LATEST}
    if outside:
        raise serializers.ValidationError(outside)


class AnalyticsQuerySerializer(serializers.Serializer):
    business_id = serializers.CharField(required=False, max_length=255, help_text="One business; all visible ones when absent.")
    start = serializers.DateTimeField(required=False, help_text="ISO 8601; default `end` minus 7 days. A time without a zone is UTC.")
    end = serializers.DateTimeField(required=False, help_text="ISO 8601, exclusive; default now.")
    model = serializers.CharField(required=False, max_length=100)
    intent = serializers.CharField(required=False, max_length=100)
    prompt_version = serializers.CharField(required=False, max_length=100)
    kb_version = serializers.CharField(required=False, max_length=100)
    tz = serializers.CharField(
        required=False, max_length=64,
        help_text="IANA time zone of buckets and hours; default the business's zone for one business, else UTC.",
    )

    def validate_tz(self, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise serializers.ValidationError("not an IANA time zone such as Europe/London") from None
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        end = attrs.get("end") or timezone.now()
        # Checked before the default start is derived: `end - 7 days` overflows for an end in year 1.
        _refuse_outside_calendar(start=attrs.get("start"), end=end)
        start = attrs.get("start") or end - DEFAULT_RANGE
        _refuse_outside_calendar(start=start)
        if start >= end:
            raise serializers.ValidationError({"start": ["must be before end"]})
        if end - start > MAX_RANGE:
            raise serializers.ValidationError({"start": [f"the period may span at most {MAX_RANGE.days} days"]})
        attrs["start"], attrs["end"] = start, end
        return attrs


class TimeseriesQuerySerializer(AnalyticsQuerySerializer):
    bucket = serializers.ChoiceField(choices=["hour", "day"], default="day")
    percentiles = serializers.BooleanField(
        required=False, default=True,
        help_text="false leaves latency_p50/p95/p99_ms null in every bucket: much faster for long hourly series.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if attrs["bucket"] == "hour" and attrs["end"] - attrs["start"] > timedelta(hours=selectors.BUCKET_LIMIT):
            raise serializers.ValidationError({"bucket": [f"hour buckets cover at most {selectors.BUCKET_LIMIT} hours; use day"]})
        return attrs


class BreakdownQuerySerializer(AnalyticsQuerySerializer):
    limit = serializers.IntegerField(required=False, default=20, min_value=1, max_value=100)


def _query(request: Request, serializer_class: type[serializers.Serializer]) -> tuple[selectors.Filters, dict[str, Any]]:
    query = serializer_class(data=request.query_params)
    query.is_valid(raise_exception=True)
    data = query.validated_data
    visible = access.visible_business_ids(request.user)
    business_id = data.get("business_id")
    if business_id is not None:
        if visible is not None and business_id not in visible:
            raise PermissionDenied("You may not read that business")
        businesses: frozenset[str] | None = frozenset([business_id])
    else:
        businesses = frozenset(visible) if visible is not None else None
    tz_name = data.get("tz") or selectors.time_zone_of(businesses)
    filters = selectors.Filters(
        businesses=businesses, start=data["start"], end=data["end"], tz=zoneinfo.ZoneInfo(tz_name),
        model=data.get("model"), intent=data.get("intent"),
        prompt_version=data.get("prompt_version"), kb_version=data.get("kb_version"),
    )
    return filters, data


def _period(filters: selectors.Filters) -> dict[str, Any]:
    return {
        "start": filters.start.isoformat(),
        "end": filters.end.isoformat(),
        "time_zone": filters.tz.key,
        "business_ids": sorted(filters.businesses) if filters.businesses is not None else None,
    }


# --- Response shapes (documentation; the selectors build the same keys).


class PeriodSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    time_zone = serializers.CharField()
    business_ids = serializers.ListField(child=serializers.CharField(), allow_null=True,
                                         help_text="null: every business the caller may see.")


def _float(help_text: str = "", null: bool = True) -> serializers.FloatField:
    return serializers.FloatField(allow_null=null, help_text=help_text)


class EventFiguresSerializer(serializers.Serializer):
    events = serializers.IntegerField()
    errors = serializers.IntegerField(help_text="Failed replies: success_rate 0 or response_type \"error\".")
    error_rate = _float("errors / events")
    success_rate = _float("mean success_rate of the events")
    latency_mean_ms = _float()
    latency_p50_ms = _float("exact (percentile_cont)")
    latency_p95_ms = _float("exact (percentile_cont)")
    latency_p99_ms = _float("exact (percentile_cont)")
    tokens = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = _float("analytics cost: the server's price when the model has one, else the client's figure", null=False)
    client_cost_usd = _float("sum of the clients' api_cost_usd", null=False)
    unpriced_events = serializers.IntegerField()
    estimated_cost_events = serializers.IntegerField()
    appointments_requested = serializers.IntegerField(help_text="events")
    appointments_booked = serializers.IntegerField(help_text="events")
    human_handoffs = serializers.IntegerField(help_text="events")


class ConversationFiguresSerializer(serializers.Serializer):
    conversations = serializers.IntegerField(help_text="conversations that started in the period")
    conversations_with_request = serializers.IntegerField()
    conversations_booked = serializers.IntegerField()
    conversations_handed_off = serializers.IntegerField()
    appointment_request_rate = _float()
    booking_rate = _float()
    handoff_rate = _float()
    cost_per_conversation_usd = _float("cost_usd / conversations")
    cost_per_booked_appointment_usd = _float("cost_usd / conversations_booked")


class SummaryFiguresSerializer(EventFiguresSerializer, ConversationFiguresSerializer):
    pass


class SummarySerializer(serializers.Serializer):
    period = PeriodSerializer()
    summary = SummaryFiguresSerializer()


class FunnelStepSerializer(serializers.Serializer):
    step = serializers.ChoiceField(choices=["conversations", "appointment_requested", "appointment_booked"])
    conversations = serializers.IntegerField()
    share_of_conversations = _float()


class FunnelFiguresSerializer(serializers.Serializer):
    steps = FunnelStepSerializer(many=True)
    human_handoffs = serializers.IntegerField()
    handoff_rate = _float()
    booked_of_requested = _float()


class FunnelSerializer(serializers.Serializer):
    period = PeriodSerializer()
    funnel = FunnelFiguresSerializer()


class BucketSerializer(SummaryFiguresSerializer):
    start = serializers.DateTimeField(help_text="Local start of the bucket, with its UTC offset.")


class TimeseriesSerializer(serializers.Serializer):
    period = PeriodSerializer()
    bucket = serializers.ChoiceField(choices=["hour", "day"])
    series = BucketSerializer(many=True)


class BreakdownRowSerializer(EventFiguresSerializer):
    key = serializers.CharField(allow_null=True, help_text="The dimension's value; null when events had none.")
    conversations = serializers.IntegerField(help_text="distinct conversations among these events")


class BreakdownSerializer(serializers.Serializer):
    period = PeriodSerializer()
    dimension = serializers.ChoiceField(choices=sorted(selectors.DIMENSIONS))
    rows = BreakdownRowSerializer(many=True)


class PeakCellSerializer(serializers.Serializer):
    weekday = serializers.IntegerField(min_value=1, max_value=7, help_text="ISO weekday: 1 Monday .. 7 Sunday")
    hour = serializers.IntegerField(min_value=0, max_value=23)
    events = serializers.IntegerField()
    errors = serializers.IntegerField()
    latency_mean_ms = _float()
    appointments_booked = serializers.IntegerField()
    human_handoffs = serializers.IntegerField()


class PeakHoursSerializer(serializers.Serializer):
    period = PeriodSerializer()
    cells = PeakCellSerializer(many=True)


# --- Analytics views.


class FastJSONRenderer(JSONRenderer):
    """orjson instead of the json module: a 30-day hourly series is 720 buckets of 35 figures."""

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        if data is None:
            return b""
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)


class AnalyticsView(APIView):
    permission_classes = [CanRead]
    renderer_classes = [FastJSONRenderer]


class SummaryView(AnalyticsView):
    @extend_schema(
        operation_id="analytics_summary", tags=["analytics"], parameters=[AnalyticsQuerySerializer],
        responses={200: SummarySerializer, **READ_ERRORS},
        description="Events, conversations, success and error rates, latency (mean, exact p50/p95/p99), tokens, "
        "cost, cost per conversation and per booked appointment, and conversation-level rates.",
    )
    def get(self, request: Request) -> Response:
        filters, _ = _query(request, AnalyticsQuerySerializer)
        return Response({"period": _period(filters), "summary": selectors.summary(filters)})


class FunnelView(AnalyticsView):
    @extend_schema(
        operation_id="analytics_funnel", tags=["analytics"], parameters=[AnalyticsQuerySerializer],
        responses={200: FunnelSerializer, **READ_ERRORS},
        description="Conversations that started in the period -> with an appointment request -> booked, and "
        "handoffs. A conversation counts at a step if any of its events does (or an outcome recorded later).",
    )
    def get(self, request: Request) -> Response:
        filters, _ = _query(request, AnalyticsQuerySerializer)
        return Response({"period": _period(filters), "funnel": selectors.funnel(filters)})


class TimeseriesView(AnalyticsView):
    @extend_schema(
        operation_id="analytics_timeseries", tags=["analytics"], parameters=[TimeseriesQuerySerializer],
        responses={200: TimeseriesSerializer, **READ_ERRORS},
        description="The summary's figures per local hour or day of `tz`; every bucket of the period is present.",
    )
    def get(self, request: Request) -> Response:
        filters, data = _query(request, TimeseriesQuerySerializer)
        series = selectors.timeseries(filters, data["bucket"], percentiles=data["percentiles"])
        return Response({"period": _period(filters), "bucket": data["bucket"], "series": series})


class BreakdownView(AnalyticsView):
    @extend_schema(
        operation_id="analytics_breakdown", tags=["analytics"], parameters=[BreakdownQuerySerializer],
        responses={200: BreakdownSerializer, **_errors(400, 401, 403, 404, 405, 429, 503)},
        description="Event figures per value of a dimension (intent, model, response_type, business, "
        "prompt_version, kb_version), the largest first, at most `limit` rows.",
    )
    def get(self, request: Request, dimension: str) -> Response:
        if dimension not in selectors.DIMENSIONS:
            raise NotFound(f"No dimension {dimension[:50]!r}; use one of {', '.join(sorted(selectors.DIMENSIONS))}")
        filters, data = _query(request, BreakdownQuerySerializer)
        rows = selectors.breakdown(filters, dimension, data["limit"])
        return Response({"period": _period(filters), "dimension": dimension, "rows": rows})


class PeakHoursView(AnalyticsView):
    @extend_schema(
        operation_id="analytics_peak_hours", tags=["analytics"], parameters=[AnalyticsQuerySerializer],
        responses={200: PeakHoursSerializer, **READ_ERRORS},
        description="Events per hour of the week in `tz`: 168 cells, Monday 00:00 first.",
    )
    def get(self, request: Request) -> Response:
        filters, _ = _query(request, AnalyticsQuerySerializer)
        return Response({"period": _period(filters), "cells": selectors.peak_hours(filters)})


# --- Conversations.


class ConversationQuerySerializer(AnalyticsQuerySerializer):
    conversation_id = serializers.CharField(required=False, max_length=255)
    booked = serializers.BooleanField(required=False, allow_null=True, default=None)
    handed_off = serializers.BooleanField(required=False, allow_null=True, default=None)
    limit = serializers.IntegerField(required=False, default=50, min_value=1, max_value=200)
    offset = serializers.IntegerField(required=False, default=0, min_value=0, max_value=100_000)


class ConversationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    business_id = serializers.CharField()
    conversation_id = serializers.CharField()
    first_at = serializers.DateTimeField()
    last_at = serializers.DateTimeField()
    turns = serializers.IntegerField()
    tokens = serializers.IntegerField()
    cost_usd = serializers.FloatField()
    unpriced_events = serializers.IntegerField()
    latency_mean_ms = serializers.FloatField(allow_null=True)
    errors = serializers.IntegerField()
    appointment_requested = serializers.BooleanField()
    appointment_booked = serializers.BooleanField()
    human_handoff_requested = serializers.BooleanField()
    outcome_recorded_at = serializers.DateTimeField(allow_null=True)
    outcome_note = serializers.CharField(allow_blank=True)


class ConversationListSerializer(serializers.Serializer):
    period = PeriodSerializer()
    count = serializers.IntegerField(help_text="conversations on this page")
    next_offset = serializers.IntegerField(allow_null=True)
    conversations = ConversationSerializer(many=True)


class EventSerializer(serializers.Serializer):
    event_id = serializers.UUIDField()
    timestamp = serializers.DateTimeField()
    response_time_ms = serializers.IntegerField(allow_null=True)
    success_rate = serializers.FloatField()
    tokens_used = serializers.IntegerField(allow_null=True)
    input_tokens = serializers.IntegerField(allow_null=True)
    output_tokens = serializers.IntegerField(allow_null=True)
    cost_usd = serializers.FloatField(allow_null=True)
    cost_basis = serializers.CharField()
    api_cost_usd = serializers.FloatField(allow_null=True)
    model_name = serializers.CharField(allow_null=True)
    intent_detected = serializers.CharField(allow_null=True)
    response_type = serializers.CharField(allow_null=True)
    appointment_requested = serializers.BooleanField()
    appointment_booked = serializers.BooleanField()
    human_handoff_requested = serializers.BooleanField()
    prompt_version = serializers.CharField(allow_null=True)
    kb_version = serializers.CharField(allow_null=True)


class ConversationDetailSerializer(ConversationSerializer):
    events = EventSerializer(many=True)


class OutcomeSerializer(serializers.Serializer):
    business_id = serializers.CharField(required=False, max_length=255,
                                        help_text="Required for a staff session; a business key implies it.")
    conversation_id = serializers.CharField(max_length=255)
    appointment_booked = serializers.BooleanField(required=False, default=False)
    appointment_requested = serializers.BooleanField(required=False, default=False)
    human_handoff_requested = serializers.BooleanField(required=False, default=False)
    note = serializers.CharField(required=False, allow_blank=True, max_length=300, default="")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not (attrs["appointment_booked"] or attrs["appointment_requested"] or attrs["human_handoff_requested"]):
            raise serializers.ValidationError(
                {"non_field_errors": ["set at least one of appointment_booked, appointment_requested, "
                                      "human_handoff_requested to true"]}
            )
        return attrs


class OutcomeResultSerializer(serializers.Serializer):
    changed = serializers.ListField(child=serializers.CharField(), help_text="Flags this request turned on.")
    conversation = ConversationSerializer()


def _with_figures(conversations_qs: Any) -> list[dict[str, Any]]:
    """The conversations with event figures (tokens, cost, latency), one grouped query for the page."""
    rows = list(conversations_qs)
    if not rows:
        return []
    wanted = Q()
    for row in rows:
        wanted |= Q(business_id=row.business_id, conversation_id=row.conversation_id)
    figures = {
        (f["business_id"], f["conversation_id"]): f
        for f in AIMetric.objects.filter(wanted).values("business_id", "conversation_id").annotate(
            tokens=Sum("tokens_used"), cost=Sum("cost_usd"), unpriced=Count("id", filter=selectors.UNPRICED),
            latency_sum=Sum("response_time_ms"), latency_n=Count("response_time_ms"),
            errors=Count("id", filter=selectors.FAILED), first=Min("timestamp"), last=Max("timestamp"),
        ).order_by()
    }
    result = []
    for row in rows:
        f = figures.get((row.business_id, row.conversation_id), {})
        result.append({
            "id": row.pk, "business_id": row.business_id, "conversation_id": row.conversation_id,
            "first_at": row.first_at, "last_at": row.last_at, "turns": row.turns,
            "tokens": int(f.get("tokens") or 0), "cost_usd": float(f.get("cost") or 0),
            "unpriced_events": f.get("unpriced", 0),
            "latency_mean_ms": (f["latency_sum"] / f["latency_n"]) if f.get("latency_n") else None,
            "errors": f.get("errors", 0),
            "appointment_requested": row.appointment_requested, "appointment_booked": row.appointment_booked,
            "human_handoff_requested": row.human_handoff_requested,
            "outcome_recorded_at": row.outcome_recorded_at, "outcome_note": row.outcome_note,
        })
    return result


class ConversationListView(AnalyticsView):
    @extend_schema(
        operation_id="conversations_list", tags=["conversations"], parameters=[ConversationQuerySerializer],
        responses={200: ConversationListSerializer, **READ_ERRORS},
        description="Conversations that started in the period, newest first, with turns, first and last time, "
        "tokens, cost, latency and outcome.",
    )
    def get(self, request: Request) -> Response:
        filters, data = _query(request, ConversationQuerySerializer)
        found = selectors.conversations_in(filters)
        if data.get("conversation_id"):
            found = found.filter(conversation_id=data["conversation_id"])
        if data.get("booked") is not None:
            found = found.filter(appointment_booked=data["booked"])
        if data.get("handed_off") is not None:
            found = found.filter(human_handoff_requested=data["handed_off"])
        limit, offset = data["limit"], data["offset"]
        page = list(found.order_by("-first_at", "-id")[offset:offset + limit + 1])
        more = len(page) > limit
        items = ConversationSerializer(_with_figures(page[:limit]), many=True).data
        return Response({
            "period": _period(filters), "count": len(items),
            "next_offset": offset + limit if more else None, "conversations": items,
        })


def _visible_conversation(request: Request, pk: int) -> Conversation:
    conversation = Conversation.objects.filter(pk=pk).first()
    if conversation is None or not access.can_see(request.user, conversation.business_id):
        raise NotFound("No such conversation")
    return conversation


class ConversationDetailView(AnalyticsView):
    @extend_schema(
        operation_id="conversations_detail", tags=["conversations"],
        responses={200: ConversationDetailSerializer, **_errors(401, 403, 404, 405, 429, 503)},
        description="One conversation with its events in time order (message text is never stored).",
    )
    def get(self, request: Request, pk: int) -> Response:
        conversation = _visible_conversation(request, pk)
        (item,) = _with_figures([conversation])
        events = AIMetric.objects.filter(
            business_id=conversation.business_id, conversation_id=conversation.conversation_id
        ).order_by("timestamp", "id")[:1000]
        item["events"] = list(events.values(*EventSerializer().fields))
        return Response(ConversationDetailSerializer(item).data)


class CanRecordOutcome(permissions.BasePermission):
    message = "Recording an outcome needs a staff session or an API key with the ingest scope"

    def has_permission(self, request: Request, view: Any) -> bool:
        return access.may_record_outcomes(request.user)


class ConversationOutcomeView(APIView):
    permission_classes = [CanRecordOutcome]

    @extend_schema(
        operation_id="conversations_record_outcome", tags=["conversations"], request=OutcomeSerializer,
        responses={200: OutcomeResultSerializer, **_errors(400, 401, 403, 404, 405, 429, 503)},
        description="Record an outcome after the fact (a booking confirmed later by another system). Flags only "
        "turn on; repeating a request changes nothing. The conversation's latest event takes the flag, so event "
        "and conversation figures agree, and a new booking moves the booked-appointments counter.",
    )
    def post(self, request: Request) -> Response:
        body = OutcomeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        key = getattr(request.user, "key", None)
        business_id = data.get("business_id") or (key.business_id if key is not None else None)
        if not business_id:
            raise ValidationError({"business_id": ["this field is required"]})
        if not access.can_record_outcomes(request.user, business_id):
            raise PermissionDenied("You may not record outcomes for that business")
        conversation = Conversation.objects.filter(
            business_id=business_id, conversation_id=data["conversation_id"]
        ).first()
        if conversation is None:
            raise NotFound("No such conversation")
        flags = {name: data[name] for name in ("appointment_booked", "appointment_requested", "human_handoff_requested")}
        result = conversations.record_outcome(conversation, flags=flags, note=data["note"])
        (item,) = _with_figures([result.conversation])
        return Response({"changed": result.changed, "conversation": ConversationSerializer(item).data})

