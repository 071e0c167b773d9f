"""GET /api/analytics/opening-hours: one business's figures in opening hours and after hours.

Its query, its answer's shape and its view. Definitions: docs/analytics.md,
"Opening hours and after-hours demand".
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from metrics_app.analytics import after_hours
from metrics_app.api.analytics import AnalyticsView
from metrics_app.api.queries import AnalyticsQuerySerializer, _period, _query
from metrics_app.api.serializers import (
    READ_ERRORS,
    ConversationFiguresSerializer,
    EventFiguresSerializer,
    PeriodSerializer,
)
from metrics_app.rules import BUSINESS_ID_MAX_LENGTH


class OpeningHoursQuerySerializer(AnalyticsQuerySerializer):
    business_id = serializers.CharField(max_length=BUSINESS_ID_MAX_LENGTH, help_text="The business (required).")
    tz = serializers.CharField(
        required=False, max_length=64,
        help_text="IANA time zone of the hour-of-week cells; default the business's zone. Open or closed is "
        "always in the business's zone.",
    )
    # The split is of every event of the business: its rollups are kept per dimension, not per hours.
    model = None  # type: ignore[assignment]
    intent = None  # type: ignore[assignment]
    prompt_version = None  # type: ignore[assignment]
    kb_version = None  # type: ignore[assignment]


class SideFiguresSerializer(EventFiguresSerializer, ConversationFiguresSerializer):
    # Means and sums only: the latency sketches are not split by opening hours.
    latency_p50_ms = None  # type: ignore[assignment]
    latency_p95_ms = None  # type: ignore[assignment]
    latency_p99_ms = None  # type: ignore[assignment]


class DemandSerializer(serializers.Serializer):
    conversations = serializers.IntegerField(help_text="conversations that started in this hour, on this side")
    conversations_with_request = serializers.IntegerField()
    conversations_booked = serializers.IntegerField()


class HourOfWeekSerializer(serializers.Serializer):
    weekday = serializers.IntegerField(min_value=1, max_value=7, help_text="ISO weekday: 1 Monday .. 7 Sunday")
    hour = serializers.IntegerField(min_value=0, max_value=23, help_text="local hour in `tz`")
    open = DemandSerializer(help_text="started in a quarter hour the business was open")
    after_hours = DemandSerializer(help_text="started in a quarter hour the business was closed")


class OpeningHoursSerializer(serializers.Serializer):
    period = PeriodSerializer()
    opening_hours_set = serializers.BooleanField(help_text="false: the business has no hours, nothing is split")
    note = serializers.CharField(allow_null=True, help_text=f'"{after_hours.NO_HOURS}" when there are none')
    open = SideFiguresSerializer(allow_null=True)
    after_hours = SideFiguresSerializer(allow_null=True)
    by_hour_of_week = HourOfWeekSerializer(many=True, help_text="168 cells, Monday 00:00 first; empty without hours")


class OpeningHoursView(AnalyticsView):
    @extend_schema(
        operation_id="analytics_opening_hours", tags=["analytics"], parameters=[OpeningHoursQuerySerializer],
        responses={200: OpeningHoursSerializer, **READ_ERRORS},
        description="One business's event and conversation figures in its opening hours and after hours (in its "
        "own zone, by the quarter hour), and the conversations, requests and bookings of each hour of the week.",
    )
    def get(self, request: Request) -> Response:
        filters, _ = _query(request, OpeningHoursQuerySerializer)
        return Response({"period": _period(filters), **after_hours.opening_hours_split(filters)})
