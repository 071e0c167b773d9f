"""Query parameters of the analytics and conversations API, and the filters they become after the access check.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request

from metrics_app import access, horizon
from metrics_app.analytics import selectors
from metrics_app.rules import BUSINESS_ID_MAX_LENGTH, MAX_ID_LENGTH, MAX_LABEL_LENGTH

MAX_RANGE = timedelta(days=400)

# Periods stay well inside the calendar, so local-time arithmetic in any zone cannot overflow.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)

LATEST = datetime(2100, 1, 1, tzinfo=UTC)

DEFAULT_RANGE = timedelta(days=7)


def _refuse_outside_calendar(**moments: datetime | None) -> None:
    outside = {name: ["must be between 2000-01-01 and 2100-01-01"]
               for name, moment in moments.items() if moment is not None and not EARLIEST <= moment <= LATEST}
    if outside:
        raise serializers.ValidationError(outside)


class AnalyticsQuerySerializer(serializers.Serializer):
    business_id = serializers.CharField(
        required=False, max_length=BUSINESS_ID_MAX_LENGTH, help_text="One business; all visible ones when absent."
    )
    start = serializers.DateTimeField(
        required=False, help_text="ISO 8601; default `end` minus 7 days. A time without a zone is UTC."
    )
    end = serializers.DateTimeField(required=False, help_text="ISO 8601, exclusive; default now.")
    model = serializers.CharField(required=False, max_length=MAX_LABEL_LENGTH)
    intent = serializers.CharField(required=False, max_length=MAX_LABEL_LENGTH)
    prompt_version = serializers.CharField(required=False, max_length=MAX_LABEL_LENGTH)
    kb_version = serializers.CharField(required=False, max_length=MAX_LABEL_LENGTH)
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
            raise serializers.ValidationError(
                {"bucket": [f"hour buckets cover at most {selectors.BUCKET_LIMIT} hours; use day"]}
            )
        return attrs


class BreakdownQuerySerializer(AnalyticsQuerySerializer):
    limit = serializers.IntegerField(required=False, default=20, min_value=1, max_value=100)


def _on_quarter_hour(moment: datetime) -> bool:
    return moment.minute % 15 == 0 and moment.second == 0 and moment.microsecond == 0


def refuse_reads_of_pruned_raw_events(filters: selectors.Filters, *, raw_only: bool = False,
                                      dimension: str | None = None) -> None:
    """400 for a question about the days retention pruned that only raw events could answer.

    Over those days the answers come from the rollups, which hold whole
    quarter hours and one filter at a time; a question they cannot answer
    would count only the raw events left, so it is refused rather than
    answered short.
    """
    pruned_before = horizon.pruned_before()
    if pruned_before is None or filters.start >= pruned_before:
        return
    since = f"raw events before {pruned_before:%Y-%m-%d %H:%M} UTC were removed by retention"
    if raw_only:
        raise serializers.ValidationError({"start": [f"{since}, and this figure is made of raw events: start at "
                                                     f"{pruned_before.isoformat()} or later"]})
    filtered = len(filters.event_filters) + (1 if dimension not in (None, "business") else 0)
    if filtered > 1:
        raise serializers.ValidationError({"start": [
            f"{since}; before then the figures come from the rollups, which hold one of model, intent, "
            "prompt_version and kb_version at a time (a breakdown counts as one): ask one at a time, or start at "
            f"{pruned_before.isoformat()} or later"
        ]})
    unaligned = {name: [f"{since}; before then a period must start and end on a quarter hour (:00, :15, :30, :45)"]
                 for name, moment in (("start", filters.start), ("end", filters.end))
                 if moment < pruned_before and not _on_quarter_hour(moment)}
    if unaligned:
        raise serializers.ValidationError(unaligned)


def _query(
    request: Request, serializer_class: type[serializers.Serializer], *, raw_only: bool = False,
    dimension: str | None = None,
) -> tuple[selectors.Filters, dict[str, Any]]:
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
    refuse_reads_of_pruned_raw_events(filters, raw_only=raw_only, dimension=dimension)
    return filters, data


def _period(filters: selectors.Filters) -> dict[str, Any]:
    return {
        "start": filters.start.isoformat(),
        "end": filters.end.isoformat(),
        "time_zone": filters.tz.key,
        "business_ids": sorted(filters.businesses) if filters.businesses is not None else None,
    }


class ConversationQuerySerializer(AnalyticsQuerySerializer):
    conversation_id = serializers.CharField(required=False, max_length=MAX_ID_LENGTH)
    booked = serializers.BooleanField(required=False, allow_null=True, default=None)
    handed_off = serializers.BooleanField(required=False, allow_null=True, default=None)
    state = serializers.ChoiceField(
        choices=["open", "ended"], required=False, allow_null=True, default=None,
        help_text="ended: the business's idle time (conversation_idle_minutes) has passed since the last event",
    )
    ended_negative = serializers.BooleanField(
        required=False, allow_null=True, default=None,
        help_text="true: only those that ended with a negative latest sentiment (at most -0.05), neither booked "
        "nor handed off; false: all but those",
    )
    limit = serializers.IntegerField(required=False, default=50, min_value=1, max_value=200)
    offset = serializers.IntegerField(required=False, default=0, min_value=0, max_value=100_000)


class CostOptionsQuerySerializer(AnalyticsQuerySerializer):
    replies_per_intent = serializers.IntegerField(
        required=False, default=5, min_value=1, max_value=20, help_text="The largest replies listed per intent."
    )
    intents = serializers.IntegerField(
        required=False, default=10, min_value=1, max_value=50,
        help_text="The intents whose largest replies are listed: the ones with the most events.",
    )
