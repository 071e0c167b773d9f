"""Experiments and compares: saved experiments (made, listed, stopped) and the compare of two variants.

Reading (the list, an experiment, its results, an ad hoc compare) needs what
the analytics need: a staff session or a read key, limited to the businesses
metrics_app.access allows. Making and stopping an experiment is a write: a
staff user who sees the business, or an ingest key of that business.
Definitions and the assumptions of each test: docs/analytics.md, "Experiments".
"""

from __future__ import annotations

import zoneinfo
from typing import Any

from django.core.exceptions import ValidationError as ModelValidationError
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from metrics_app import access
from metrics_app.api.analytics import AnalyticsView, FastJSONRenderer
from metrics_app.api.permissions import CanRead, CanRecordOutcome
from metrics_app.api.queries import AnalyticsQuerySerializer, _period, _query, refuse_reads_of_pruned_raw_events
from metrics_app.api.serializers import PeriodSerializer, _errors
from metrics_app.experiments import selectors as experiments
from metrics_app.experiments import services
from metrics_app.models import Business, Experiment, ExperimentDimension, ExperimentMetric
from metrics_app.rules import BUSINESS_ID_MAX_LENGTH, MAX_LABEL_LENGTH

EXPERIMENT_ERRORS = _errors(400, 401, 403, 404, 405, 429, 503)
EXPERIMENT_LIST_LIMIT = 200


class ExperimentSerializer(serializers.ModelSerializer):
    business_id = serializers.CharField(read_only=True)
    is_running = serializers.BooleanField(read_only=True)

    class Meta:
        model = Experiment
        fields = ["id", "business_id", "name", "description", "dimension", "variant_a", "variant_b", "split_a",
                  "primary_metric", "minimum_lift", "started_at", "ended_at", "created_at", "is_running"]
        read_only_fields = fields


class ExperimentCreateSerializer(serializers.Serializer):
    business_id = serializers.CharField(required=False, max_length=BUSINESS_ID_MAX_LENGTH,
                                        help_text="Required for a staff session; a business key implies it.")
    name = serializers.SlugField(max_length=100, help_text="Unique per business; the clients' assignment salt.")
    description = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")
    dimension = serializers.ChoiceField(choices=ExperimentDimension.choices, default=ExperimentDimension.PROMPT_VERSION)
    variant_a = serializers.CharField(max_length=MAX_LABEL_LENGTH, help_text="The control: the value now in use.")
    variant_b = serializers.CharField(max_length=MAX_LABEL_LENGTH, help_text="The challenger.")
    split_a = serializers.FloatField(default=0.5, min_value=0.01, max_value=0.99,
                                     help_text="The planned share of conversations for variant a.")
    primary_metric = serializers.ChoiceField(choices=ExperimentMetric.choices, default=ExperimentMetric.BOOKING_RATE)
    minimum_lift = serializers.FloatField(default=0.05, min_value=0.001, max_value=0.5,
                                          help_text="The smallest difference of the primary rate that matters, in "
                                          "rate points (0.05 = 5 points).")
    started_at = serializers.DateTimeField(required=False,
                                           help_text="Default now; may be later, never earlier than now.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["variant_a"] == attrs["variant_b"]:
            raise ValidationError({"variant_b": ["must differ from variant_a"]})
        return attrs


class RateSerializer(serializers.Serializer):
    value = serializers.FloatField(help_text="conversations with the outcome / conversations")
    ci_low = serializers.FloatField(help_text="95% Wilson score interval")
    ci_high = serializers.FloatField()


class MeanSerializer(serializers.Serializer):
    value = serializers.FloatField()
    ci_low = serializers.FloatField(help_text="95% t interval of the mean")
    ci_high = serializers.FloatField()


def _rate_field() -> RateSerializer:
    return RateSerializer(allow_null=True, help_text="null without conversations")


class ArmSerializer(serializers.Serializer):
    variant = serializers.CharField()
    conversations = serializers.IntegerField()
    events = serializers.IntegerField()
    conversations_booked = serializers.IntegerField()
    conversations_with_request = serializers.IntegerField()
    conversations_handed_off = serializers.IntegerField()
    conversations_with_error = serializers.IntegerField(help_text="conversations with at least one failed reply")
    booking_rate = _rate_field()
    appointment_request_rate = _rate_field()
    handoff_rate = _rate_field()
    error_rate = _rate_field()
    latency_p50_ms = serializers.FloatField(
        allow_null=True, help_text="of the replies carrying the variant, as a summary filtered by it: from the "
        "sketches (within 1%)")
    latency_p95_ms = serializers.FloatField(allow_null=True)
    conversation_latency_mean_ms = MeanSerializer(allow_null=True, help_text="mean of each conversation's mean latency")
    cost_usd = serializers.FloatField()
    cost_per_conversation_usd = MeanSerializer(allow_null=True)
    cost_per_booked_appointment_usd = serializers.FloatField(allow_null=True, help_text="cost_usd / booked")
    conversations_checked_by_hash = serializers.IntegerField(
        allow_null=True, help_text="saved experiments: conversations whose arm was checked against the assignment "
        "hash (a sample of at most 20,000 of both arms; null for an ad hoc compare)")
    conversations_on_other_arm_by_hash = serializers.IntegerField(
        allow_null=True, help_text="of those, the ones whose arm is not the one the hash gives")


class DifferenceSerializer(serializers.Serializer):
    difference = serializers.FloatField(help_text="b minus a")
    ci_low = serializers.FloatField(help_text="95% interval")
    ci_high = serializers.FloatField()
    p_value = serializers.FloatField()
    test = serializers.CharField()


def _difference_field() -> DifferenceSerializer:
    return DifferenceSerializer(allow_null=True, help_text="null while an arm has too few conversations")


class ComparisonsSerializer(serializers.Serializer):
    booking_rate = _difference_field()
    appointment_request_rate = _difference_field()
    handoff_rate = _difference_field()
    error_rate = _difference_field()
    cost_per_conversation_usd = _difference_field()
    conversation_latency_mean_ms = _difference_field()


class PerArmCountSerializer(serializers.Serializer):
    a = serializers.IntegerField()
    b = serializers.IntegerField()


class VerdictSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["winner", "no_difference_yet", "not_enough_data"])
    winner = serializers.CharField(allow_null=True)
    metric = serializers.ChoiceField(choices=ExperimentMetric.choices)
    lower_is_better = serializers.BooleanField()
    decided_on = serializers.DateField(allow_null=True, help_text="the day the sequential test first crossed")
    always_valid_p_value = serializers.FloatField(help_text="valid however often it is looked at")
    alpha = serializers.FloatField()
    minimum_lift = serializers.FloatField()
    test = serializers.CharField()
    lift = serializers.FloatField(help_text="the difference the sample sizes are for")
    conversations_needed_per_arm = PerArmCountSerializer(allow_null=True)
    conversations_still_needed_per_arm = PerArmCountSerializer(allow_null=True)
    fixed_horizon_conversations_per_arm = PerArmCountSerializer(
        allow_null=True, help_text="what a test looked at only once, at the end, would need")
    text = serializers.CharField()


class SampleRatioSerializer(serializers.Serializer):
    planned_share_a = serializers.FloatField()
    observed_share_a = serializers.FloatField(allow_null=True)
    p_value = serializers.FloatField(allow_null=True, help_text="chi-square goodness of fit")
    mismatch = serializers.BooleanField()
    threshold = serializers.FloatField()
    text = serializers.CharField(allow_blank=True)


class SeriesArmSerializer(serializers.Serializer):
    conversations = serializers.IntegerField(help_text="cumulative, by the day each conversation began")
    conversations_booked = serializers.IntegerField()
    booking_rate = serializers.FloatField(allow_null=True)


class SeriesPointSerializer(serializers.Serializer):
    date = serializers.DateField()
    a = SeriesArmSerializer(help_text="also holds the primary metric's cumulative rate under its name")
    b = SeriesArmSerializer()
    always_valid_p_value = serializers.FloatField()


class ArmsSerializer(serializers.Serializer):
    a = ArmSerializer()
    b = ArmSerializer()


class CompareSerializer(serializers.Serializer):
    period = PeriodSerializer()
    experiment = ExperimentSerializer(allow_null=True)
    dimension = serializers.ChoiceField(choices=ExperimentDimension.choices)
    primary_metric = serializers.ChoiceField(choices=ExperimentMetric.choices)
    arms = ArmsSerializer()
    comparisons = ComparisonsSerializer()
    verdict = VerdictSerializer()
    sample_ratio = SampleRatioSerializer(allow_null=True, help_text="null when no split was planned")
    conversations_in_both_arms = serializers.IntegerField(help_text="left out of both arms")
    conversations_begun_before_start = serializers.IntegerField(help_text="left out: they met the old setup first")
    series = SeriesPointSerializer(many=True)


class LiftQuerySerializer(serializers.Serializer):
    lift = serializers.FloatField(required=False, min_value=0.001, max_value=0.5,
                                  help_text="The difference the sample size is for; default the minimum lift.")
    tz = serializers.CharField(required=False, max_length=64,
                               help_text="IANA zone of the daily series; default the business's.")

    def validate_tz(self, value: str) -> str:
        return AnalyticsQuerySerializer().validate_tz(value)


class CompareQuerySerializer(AnalyticsQuerySerializer):
    dimension = serializers.ChoiceField(choices=ExperimentDimension.choices)
    a = serializers.CharField(max_length=MAX_LABEL_LENGTH, help_text="The control's value.")
    b = serializers.CharField(max_length=MAX_LABEL_LENGTH, help_text="The challenger's value.")
    primary_metric = serializers.ChoiceField(choices=ExperimentMetric.choices, default=ExperimentMetric.BOOKING_RATE)
    minimum_lift = serializers.FloatField(default=0.05, min_value=0.001, max_value=0.5)
    lift = serializers.FloatField(required=False, min_value=0.001, max_value=0.5)
    split_a = serializers.FloatField(required=False, min_value=0.01, max_value=0.99,
                                     help_text="The planned share of a, for the sample-ratio check.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if attrs["a"] == attrs["b"]:
            raise ValidationError({"b": ["must differ from a"]})
        if attrs.get(attrs["dimension"]):
            raise ValidationError({attrs["dimension"]: ["is the compared dimension: it cannot be a filter too"]})
        return attrs


class CompareView(AnalyticsView):
    @extend_schema(
        operation_id="analytics_compare", tags=["experiments"], parameters=[CompareQuerySerializer],
        responses={200: CompareSerializer, **EXPERIMENT_ERRORS},
        description="Two values of prompt_version, kb_version or model over a period: per arm conversations, "
        "booking, request, handoff and error rates with 95% Wilson intervals, latency p50/p95, cost per "
        "conversation and per booked appointment; the differences with their intervals and p-values; the "
        "sequential verdict and the conversations still needed; the cumulative rates per day. The unit is "
        "the conversation. For a verdict that cannot be slid, save an experiment and read its results.",
    )
    def get(self, request: Request) -> Response:
        filters, data = _query(request, CompareQuerySerializer, raw_only=True)
        question = experiments.Question(
            filters, data["dimension"], data["a"], data["b"], data["primary_metric"], data["minimum_lift"],
            data.get("lift"), data.get("split_a"),
        )
        return Response({"period": _period(filters), "experiment": None, **experiments.compare(question)})


def _visible_experiment(request: Request, pk: int) -> Experiment:
    experiment = access.visible_rows(request.user, Experiment.objects.all()).filter(pk=pk).first()
    if experiment is None:
        raise NotFound("No such experiment")
    return experiment


class ExperimentListView(APIView):
    renderer_classes = [FastJSONRenderer]

    def get_permissions(self) -> list[Any]:
        return [CanRead()] if self.request.method == "GET" else [CanRecordOutcome()]

    @extend_schema(
        operation_id="experiments_list", tags=["experiments"],
        parameters=[OpenApiParameter("business_id", str, description="One business; all visible ones when absent.")],
        responses={200: ExperimentSerializer(many=True), **EXPERIMENT_ERRORS},
        description=f"The caller's experiments, newest first, at most {EXPERIMENT_LIST_LIMIT}; "
        "`?business_id=` for one business.",
    )
    def get(self, request: Request) -> Response:
        rows = access.visible_rows(request.user, Experiment.objects.all())
        business_id = request.query_params.get("business_id")
        if business_id:
            rows = rows.filter(business_id=business_id[:BUSINESS_ID_MAX_LENGTH])
        rows = rows.order_by("-started_at", "-id")[:EXPERIMENT_LIST_LIMIT]
        return Response(ExperimentSerializer(rows, many=True).data)

    @extend_schema(
        operation_id="experiments_create", tags=["experiments"], request=ExperimentCreateSerializer,
        responses={201: ExperimentSerializer, **EXPERIMENT_ERRORS},
        description="Save an experiment: two values of one dimension, a start (now or later, never earlier), "
        "the planned split, the primary metric and the minimum lift that matters. None of these change later.",
    )
    def post(self, request: Request) -> Response:
        body = ExperimentCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        key = getattr(request.user, "key", None)
        business_id = data.pop("business_id", None) or (key.business_id if key is not None else None)
        if not business_id:
            raise ValidationError({"business_id": ["this field is required"]})
        if not access.can_write(request.user, business_id):
            raise PermissionDenied("You may not make experiments for that business")
        business = Business.objects.filter(pk=business_id).first()
        if business is None:
            raise ValidationError({"business_id": ["no such business"]})
        try:
            experiment = services.create_experiment(business, created_by=request.user, **data)
        except ModelValidationError as invalid:
            raise ValidationError(invalid.message_dict) from None
        return Response(ExperimentSerializer(experiment).data, status=201)


class ExperimentDetailView(AnalyticsView):
    @extend_schema(
        operation_id="experiments_detail", tags=["experiments"],
        responses={200: ExperimentSerializer, **EXPERIMENT_ERRORS},
    )
    def get(self, request: Request, pk: int) -> Response:
        return Response(ExperimentSerializer(_visible_experiment(request, pk)).data)


class ExperimentStopView(APIView):
    permission_classes = [CanRecordOutcome]

    @extend_schema(
        operation_id="experiments_stop", tags=["experiments"], request=None,
        responses={200: ExperimentSerializer, **EXPERIMENT_ERRORS},
        description="Stop the experiment now: its results then cover its start to now. A repeat changes nothing.",
    )
    def post(self, request: Request, pk: int) -> Response:
        experiment = Experiment.objects.filter(pk=pk).first()
        if experiment is None or not (access.can_see(request.user, experiment.business_id)
                                      or access.can_write(request.user, experiment.business_id)):
            raise NotFound("No such experiment")
        if not access.can_write(request.user, experiment.business_id):
            raise PermissionDenied("You may not stop experiments of that business")
        return Response(ExperimentSerializer(services.stop_experiment(experiment)).data)


class ExperimentResultsView(AnalyticsView):
    @extend_schema(
        operation_id="experiments_results", tags=["experiments"], parameters=[LiftQuerySerializer],
        responses={200: CompareSerializer, **EXPERIMENT_ERRORS},
        description="The compare of the experiment's arms from its start to its end (or now), with its planned "
        "split checked and its conversations' arms checked against the assignment hash.",
    )
    def get(self, request: Request, pk: int) -> Response:
        experiment = _visible_experiment(request, pk)
        query = LiftQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        tz = query.validated_data.get("tz")
        question = experiments.question_of(
            experiment, now=timezone.now(), lift=query.validated_data.get("lift"),
            tz=zoneinfo.ZoneInfo(tz) if tz else None,
        )
        refuse_reads_of_pruned_raw_events(question.filters, raw_only=True)
        body = {"period": _period(question.filters), "experiment": ExperimentSerializer(experiment).data,
                **experiments.compare(question)}
        return Response(body)

