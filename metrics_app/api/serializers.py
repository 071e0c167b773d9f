"""Shapes of the analytics and conversations API: the error body, and what each answer holds.

They document the answers (the selectors build the same keys) and validate the outcome body.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

from metrics_app.analytics import selectors
from metrics_app.errors import documented_errors
from metrics_app.models import SentimentSource
from metrics_app.rules import BUSINESS_ID_MAX_LENGTH, MAX_ID_LENGTH


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    return documented_errors(*codes, overrides={404: "No such conversation (or not one this caller may see)."})


READ_ERRORS = _errors(400, 401, 403, 405, 429, 503)


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
    errors = serializers.IntegerField(help_text="Failed replies: success_rate 0 or response_type \"error\".")  # type: ignore[assignment]  # a declared field: DRF's metaclass takes it off the class
    error_rate = _float("errors / events")
    success_rate = _float("mean success_rate of the events")
    latency_mean_ms = _float()
    latency_p50_ms = _float("exact (percentile_cont)")
    latency_p95_ms = _float("exact (percentile_cont)")
    latency_p99_ms = _float("exact (percentile_cont)")
    tokens = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cache_read_input_tokens = serializers.IntegerField(help_text="input tokens read from the prompt cache")
    cache_write_input_tokens = serializers.IntegerField(help_text="input tokens written to the prompt cache")
    reasoning_output_tokens = serializers.IntegerField(help_text="output tokens spent reasoning")
    cached_input_share = _float("cache_read_input_tokens / input_tokens")
    cost_usd = _float("analytics cost: the server's price when the model has one, else the client's figure", null=False)
    cache_savings_usd = _float(
        "what the prompt cache saved on priced events: cached tokens at the input price minus their own prices",
        null=False,
    )
    client_cost_usd = _float("sum of the clients' api_cost_usd", null=False)
    unpriced_events = serializers.IntegerField()
    estimated_cost_events = serializers.IntegerField()
    appointments_requested = serializers.IntegerField(help_text="events")
    appointments_booked = serializers.IntegerField(help_text="events")
    human_handoffs = serializers.IntegerField(help_text="events")
    sentiment_mean = _float("mean user_sentiment of the events that have one: -1 (very negative) to +1")
    sentiment_scored_events = serializers.IntegerField(help_text="events with a user_sentiment")


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
    errors = serializers.IntegerField()  # type: ignore[assignment]  # a declared field: DRF's metaclass takes it off the class
    latency_mean_ms = _float()
    appointments_booked = serializers.IntegerField()
    human_handoffs = serializers.IntegerField()


class PeakHoursSerializer(serializers.Serializer):
    period = PeriodSerializer()
    cells = PeakCellSerializer(many=True)


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
    errors = serializers.IntegerField()  # type: ignore[assignment]  # a declared field: DRF's metaclass takes it off the class
    raw_events_pruned = serializers.BooleanField(
        help_text="true when retention removed raw events of it: tokens, cost, latency and errors count those left"
    )
    appointment_requested = serializers.BooleanField()
    appointment_booked = serializers.BooleanField()
    human_handoff_requested = serializers.BooleanField()
    outcome_recorded_at = serializers.DateTimeField(allow_null=True)
    outcome_note = serializers.CharField(allow_blank=True)
    state = serializers.ChoiceField(
        choices=["open", "ended"], help_text="ended once the business's idle time passed after the last event"
    )
    ends_at = serializers.DateTimeField(help_text="when it ends (or ended) unless another event comes")
    last_sentiment = serializers.FloatField(
        allow_null=True, help_text="user_sentiment of its latest scored event; at most -0.05 is negative"
    )


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
    cache_read_input_tokens = serializers.IntegerField(allow_null=True)
    cache_write_input_tokens = serializers.IntegerField(allow_null=True)
    reasoning_output_tokens = serializers.IntegerField(allow_null=True)
    cost_usd = serializers.FloatField(allow_null=True)
    cache_savings_usd = serializers.FloatField(allow_null=True)
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
    user_sentiment = serializers.FloatField(allow_null=True, help_text="-1 (very negative) to +1")
    sentiment_source = serializers.ChoiceField(
        choices=SentimentSource.choices, allow_null=True,
        help_text="client: the client's own score; vader: the service's score of the message it dropped",
    )


class ConversationDetailSerializer(ConversationSerializer):
    events = EventSerializer(many=True)


class OutcomeSerializer(serializers.Serializer):
    business_id = serializers.CharField(required=False, max_length=BUSINESS_ID_MAX_LENGTH,
                                        help_text="Required for a staff session; a business key implies it.")
    conversation_id = serializers.CharField(max_length=MAX_ID_LENGTH)
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


# --- Cost options (docs/analytics.md, "Cost options").


class CostOptionsCurrentSerializer(serializers.Serializer):
    events = serializers.IntegerField()
    priced_events = serializers.IntegerField(help_text="events whose model had a price in force")
    unpriced_events = serializers.IntegerField(help_text="left out of every what-if")
    estimated_cost_events = serializers.IntegerField(help_text="priced events sent with tokens_used alone")
    fresh_input_tokens = serializers.IntegerField(help_text="priced input neither read from nor written to the cache")
    cache_read_input_tokens = serializers.IntegerField()
    cache_write_input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField(help_text="reasoning included")
    reasoning_output_tokens = serializers.IntegerField()
    estimated_tokens = serializers.IntegerField(help_text="tokens_used of the estimated events, at the input price")
    cost_usd = _float("analytics cost of every event (the client's figure for unpriced ones)", null=False)
    priced_cost_usd = _float("analytics cost of the priced events: what the what-ifs compare with", null=False)
    unpriced_note = serializers.CharField(allow_null=True)


class CostOptionsRatesSerializer(serializers.Serializer):
    price_id = serializers.IntegerField()
    model_pattern = serializers.CharField(help_text="the price row's model name or glob")
    valid_from = serializers.DateTimeField()
    input_usd_per_mtok = serializers.FloatField()
    output_usd_per_mtok = serializers.FloatField()
    cache_read_usd_per_mtok = serializers.FloatField(help_text="the cached-input price, else the input price")
    cache_write_usd_per_mtok = serializers.FloatField(help_text="the cache-write price, else the input price")
    cache_read_priced_as_input = serializers.BooleanField()
    cache_write_priced_as_input = serializers.BooleanField()


class CostOptionsModelSerializer(CostOptionsRatesSerializer):
    in_use = serializers.BooleanField(help_text="the row prices a model of the period's traffic at its end")
    cost_usd = serializers.FloatField(help_text="the priced events' same tokens at this row's rates")
    difference_usd = serializers.FloatField(help_text="cost_usd minus current.priced_cost_usd")


class CostOptionsScenarioSerializer(serializers.Serializer):
    target = serializers.CharField(help_text='"25%", "50%", "75%" or "best day"')
    cached_share = serializers.FloatField()
    extra_cached_tokens = serializers.FloatField(help_text="input tokens moved from fresh to cached", required=False)
    savings_usd = serializers.FloatField()


class CostOptionsCacheModelSerializer(CostOptionsRatesSerializer):
    model_name = serializers.CharField()
    input_tokens = serializers.IntegerField()
    cache_read_input_tokens = serializers.IntegerField()
    cached_input_share = _float()
    best_day_cached_input_share = _float("the highest share of one local day of the period")
    cache_savings_usd = serializers.FloatField()
    scenarios = CostOptionsScenarioSerializer(many=True)


class CostOptionsCacheSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField(help_text="input of the priced events sent with the split")
    cache_read_input_tokens = serializers.IntegerField()
    cached_input_share = _float()
    cache_savings_usd = serializers.FloatField()
    scenarios = CostOptionsScenarioSerializer(many=True, help_text="the fixed steps, summed over the models")
    models = CostOptionsCacheModelSerializer(many=True)
    basis = serializers.CharField()


class CostOptionsReplySerializer(serializers.Serializer):
    event_id = serializers.UUIDField()
    business_id = serializers.CharField()
    conversation_id = serializers.CharField(allow_null=True)
    timestamp = serializers.DateTimeField()
    tokens = serializers.IntegerField(help_text="tokens_used")
    input_tokens = serializers.IntegerField(allow_null=True)
    output_tokens = serializers.IntegerField(allow_null=True)
    cache_read_input_tokens = serializers.IntegerField(allow_null=True)
    model_name = serializers.CharField(allow_null=True)
    cost_usd = _float("the event's analytics cost")


class CostOptionsIntentSerializer(serializers.Serializer):
    intent = serializers.CharField(allow_null=True)
    events = serializers.IntegerField()
    replies = CostOptionsReplySerializer(many=True)


class CostOptionsSerializer(serializers.Serializer):
    period = PeriodSerializer()
    current = CostOptionsCurrentSerializer()
    models = CostOptionsModelSerializer(many=True, help_text="cheapest first")
    models_basis = serializers.CharField()
    cache = CostOptionsCacheSerializer()
    top_replies = CostOptionsIntentSerializer(many=True)
    top_replies_basis = serializers.CharField()
