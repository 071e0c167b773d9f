"""The analytics endpoints: validate the query, check access, call a selector.

Access: a staff session or an API key with the read scope. A business key sees
only its business, an agency key every business, a staff user the businesses
metrics_app.access allows. Definitions of every figure: docs/analytics.md.
"""

from __future__ import annotations

from typing import Any

import orjson
from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import NotFound
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from metrics_app.analytics import selectors
from metrics_app.api.permissions import CanRead
from metrics_app.api.queries import (
    AnalyticsQuerySerializer,
    BreakdownQuerySerializer,
    CostOptionsQuerySerializer,
    TimeseriesQuerySerializer,
    _period,
    _query,
)
from metrics_app.api.serializers import (
    READ_ERRORS,
    BreakdownSerializer,
    CostOptionsSerializer,
    FunnelSerializer,
    PeakHoursSerializer,
    SummarySerializer,
    TimeseriesSerializer,
    _errors,
)
from metrics_app.pricing import selectors as cost_selectors


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
        filters, data = _query(request, BreakdownQuerySerializer, dimension=dimension)
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


class CostOptionsView(AnalyticsView):
    @extend_schema(
        operation_id="analytics_costs", tags=["analytics"], parameters=[CostOptionsQuerySerializer],
        responses={200: CostOptionsSerializer, **READ_ERRORS},
        description="The period's priced tokens and cost; the same tokens at every price row in force at its end, "
        "cheapest first; the cached share of the input and what larger shares would save; per intent the replies "
        "with the most tokens. Prices of the same tokens, not predictions: see each section's basis.",
    )
    def get(self, request: Request) -> Response:
        filters, data = _query(request, CostOptionsQuerySerializer, raw_only=True)
        options = cost_selectors.cost_options(filters, data["replies_per_intent"], data["intents"])
        return Response({"period": _period(filters), **options})
