"""GET /api/analytics/likely-bookings: a business's booking model, its held-out evaluation, and who to follow up.

Its query, its answer's shape and its view. Definitions: docs/analytics.md,
"Likely bookings".
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from metrics_app import access
from metrics_app.api.analytics import AnalyticsView
from metrics_app.errors import documented_errors
from metrics_app.models import Business
from metrics_app.predictions import selectors
from metrics_app.rules import BUSINESS_ID_MAX_LENGTH, validate_business_id


class LikelyBookingsQuerySerializer(serializers.Serializer):
    business_id = serializers.CharField(max_length=BUSINESS_ID_MAX_LENGTH, validators=[validate_business_id],
                                        help_text="The business (required).")
    quiet_minutes = serializers.IntegerField(
        required=False, default=selectors.DEFAULT_QUIET_MINUTES, min_value=1, max_value=selectors.MAX_QUIET_MINUTES,
        help_text="A conversation went quiet when its last event is at least this old (default 10).",
    )
    limit = serializers.IntegerField(required=False, default=selectors.DEFAULT_LIMIT, min_value=1,
                                     max_value=selectors.MAX_LIMIT)


class ReliabilityBinSerializer(serializers.Serializer):
    low = serializers.FloatField()
    high = serializers.FloatField()
    prefixes = serializers.IntegerField(help_text="held-out prefixes predicted in [low, high)")
    weight = serializers.FloatField(help_text="their weight: each conversation's prefixes weigh 1 together")
    mean_predicted = serializers.FloatField(allow_null=True)
    observed_rate = serializers.FloatField(allow_null=True, help_text="the weighted share that booked")


class CountsSerializer(serializers.Serializer):
    conversations = serializers.IntegerField()
    booked = serializers.IntegerField()
    prefixes = serializers.IntegerField(required=False)


class EvaluationSerializer(serializers.Serializer):
    trained_at = serializers.DateTimeField()
    status = serializers.ChoiceField(choices=["usable", "not_enough_data", "no_better"])
    usable = serializers.BooleanField()
    reason = serializers.CharField()
    brier = serializers.FloatField(allow_null=True, help_text="the model's Brier score on held-out prefixes")
    base_brier = serializers.FloatField(allow_null=True, help_text="the base rate's, as a constant prediction")
    base_rate = serializers.FloatField(allow_null=True, help_text="the weighted booking rate of training prefixes")
    skill = serializers.FloatField(allow_null=True, help_text="1 - brier / base_brier")
    window_start = serializers.DateTimeField(allow_null=True)
    window_end = serializers.DateTimeField(allow_null=True)
    held_out_from = serializers.DateTimeField(allow_null=True, help_text="first event of the oldest held-out one")
    train = CountsSerializer()
    held_out = CountsSerializer()
    reliability = ReliabilityBinSerializer(many=True, help_text="ten equal-width bins; empty without a fit")


class FollowUpSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="the conversation's id in /api/conversations/<id>")
    conversation_id = serializers.CharField()
    first_at = serializers.DateTimeField()
    last_at = serializers.DateTimeField()
    turns = serializers.IntegerField()
    appointment_requested = serializers.BooleanField()
    probability = serializers.FloatField(help_text="of booking, from its events so far")
    quiet_minutes = serializers.FloatField(help_text="minutes since its last event")
    ended = serializers.BooleanField(help_text="idle past the business's conversation end")


class LikelyBookingsSerializer(serializers.Serializer):
    business_id = serializers.CharField()
    as_of = serializers.DateTimeField()
    quiet_minutes = serializers.IntegerField()
    look_back_days = serializers.IntegerField()
    predictions_available = serializers.BooleanField()
    reason = serializers.CharField(help_text="why there are predictions, or why there are none")
    model = EvaluationSerializer(allow_null=True, help_text="the latest training; null when none ran")
    threshold = serializers.FloatField(
        allow_null=True, help_text="listed at or above: min(2 x base rate, (1 + base rate) / 2)"
    )
    scored = serializers.IntegerField(help_text="quiet conversations scored")
    follow_ups = FollowUpSerializer(many=True, help_text="at or above the threshold, likeliest first")


LIKELY_BOOKINGS_ERRORS = documented_errors(400, 401, 403, 404, 405, 429, 503, overrides={404: "No such business."})


class LikelyBookingsView(AnalyticsView):
    @extend_schema(
        operation_id="analytics_likely_bookings", tags=["analytics"], parameters=[LikelyBookingsQuerySerializer],
        responses={200: LikelyBookingsSerializer, **LIKELY_BOOKINGS_ERRORS},
        description="The business's latest likely-bookings model: its held-out Brier score beside the base "
        "rate's, its reliability table, or why it gives no predictions; and its quiet conversations (not booked, "
        "not handed off, last event between `quiet_minutes` and 7 days ago) whose probability of booking is at "
        "least the threshold, likeliest first.",
    )
    def get(self, request: Request) -> Response:
        query = LikelyBookingsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        business_id = data["business_id"]
        if not access.can_see(request.user, business_id):
            raise PermissionDenied("You may not read that business")
        business = Business.objects.filter(id=business_id).first()
        if business is None:
            raise NotFound("No such business")
        return Response(selectors.likely_bookings(business, quiet_minutes=data["quiet_minutes"], limit=data["limit"]))
