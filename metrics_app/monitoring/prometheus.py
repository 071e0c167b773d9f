"""Prometheus metrics of the AI replies, and the /metrics endpoint.

Counts are exact: the counters move in the listeners that `services` calls
after a commit, with the events that were newly stored, so a duplicate or a
rejected event moves nothing. Under gunicorn each worker writes its values to
files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, set
up by gunicorn.conf.py) and a scrape of any worker sums them all.

Labels are bounded (see `LabelPolicy`): a business keeps its own
`business_id` label only while it is among the first
MLOPS_PROMETHEUS_MAX_BUSINESSES registered businesses; intents, response
types and models keep theirs only when they are on a configured list. Every
other value is reported as `other`, and a missing one as `unknown`.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Model
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django_prometheus.middleware import PrometheusAfterMiddleware
from django_prometheus.models import model_deletes, model_inserts, model_updates
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from metrics_app import listeners
from metrics_app.analytics.totals import DURATION_BUCKETS, TOKEN_BUCKETS
from metrics_app.errors import error_response, method_not_allowed
from metrics_app.listeners import IngestAnswer
from metrics_app.monitoring.exposition import render_directory
from metrics_app.rules import is_failed_reply

logger = logging.getLogger(__name__)

# Multiprocess mode has no `_created` series; leave them out in a single process
# too, so /metrics looks the same however the service is served (and is a third smaller).
disable_created_metrics()

OTHER = "other"
UNKNOWN = "unknown"

# --- The seed's six metrics, with the seed's names and labels.
AI_REQUESTS = Counter(
    "ai_requests", "AI replies stored, by business, intent and response type",
    ["business_id", "intent", "response_type"],
)
AI_RESPONSE_TIME = Histogram(
    "ai_response_time_seconds", "Time the AI took to reply, in seconds", ["business_id"], buckets=DURATION_BUCKETS,
)
AI_TOKENS = Counter("ai_tokens_used", "Tokens used by AI replies", ["business_id", "model"])
AI_COST = Counter("ai_api_cost_usd", "API cost of AI replies as the client reported it, in USD", ["business_id"])
APPOINTMENTS_REQUESTED = Counter(
    "appointments_requested", "AI replies in which the customer asked for an appointment", ["business_id"]
)
HUMAN_HANDOFFS = Counter("human_handoffs", "AI replies that handed the customer to a human", ["business_id"])

# --- Added: outcomes, failures and ingest bookkeeping.
APPOINTMENTS_BOOKED = Counter(
    "appointments_booked",
    "Appointments booked, counted when the booking is recorded (with the event or later)",
    ["business_id"],
)
AI_FAILED_REPLIES = Counter(
    "ai_failed_replies", "AI replies that failed (success_rate 0 or response_type error)", ["business_id"]
)
INGEST_EVENTS = Counter(
    "mlops_ingest_events", "Events received by /track and /track/batch, by outcome", ["outcome"]
)

# --- OpenTelemetry GenAI client metrics, named the Prometheus way.
GEN_AI_DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds", "GenAI operation duration, in seconds",
    ["gen_ai_operation_name", "gen_ai_request_model"], buckets=DURATION_BUCKETS,
)
GEN_AI_TOKENS = Histogram(
    "gen_ai_client_token_usage",
    "Tokens used per GenAI operation; type input/output when the split is sent, total otherwise",
    ["gen_ai_operation_name", "gen_ai_request_model", "gen_ai_token_type"], buckets=TOKEN_BUCKETS,
)
GEN_AI_OPERATION = "chat"

for _outcome in ("created", "duplicate", "rejected"):
    INGEST_EVENTS.labels(_outcome)


# --- Label policy


def _allowlist(values: Iterable[str]) -> dict[str, str]:
    """Matching key (lower case) -> the label value to report."""
    return {value.strip().lower(): value.strip() for value in values if value.strip()}


class LabelPolicy:
    """Turns free-form event values into a bounded set of label values.

    Businesses: the first `max_businesses` registered businesses (oldest
    first) keep their id, every later one is `other`. The list is read from
    the database when an unseen id arrives while the cap is not reached, and
    otherwise at most once every `refresh_seconds`, so a flood of new ids costs
    no query once the cap is full. Every process reads the same table in the
    same order, so all workers agree on who is in.
    """

    def __init__(self) -> None:
        self._businesses: frozenset[str] = frozenset()
        self._full = False
        self._loaded_at = float("-inf")
        self._configured_for: tuple[Any, ...] | None = None
        self._intents: dict[str, str] = {}
        self._response_types: dict[str, str] = {}
        self._models: dict[str, str] = {}

    def _configure(self) -> None:
        config = (
            settings.MLOPS_PROMETHEUS_MAX_BUSINESSES,
            tuple(settings.MLOPS_PROMETHEUS_INTENTS),
            tuple(settings.MLOPS_PROMETHEUS_RESPONSE_TYPES),
            tuple(settings.MLOPS_PROMETHEUS_MODELS),
        )
        if config != self._configured_for:
            self._configured_for = config
            self._intents = _allowlist(config[1])
            self._response_types = _allowlist(config[2])
            self._models = _allowlist(config[3])
            self.forget_businesses()

    def forget_businesses(self) -> None:
        self._businesses = frozenset()
        self._full = False
        self._loaded_at = float("-inf")

    def _load_businesses(self, now: float) -> None:
        from metrics_app.models import Business

        cap = settings.MLOPS_PROMETHEUS_MAX_BUSINESSES
        try:
            ids = list(Business.objects.order_by("created_at", "id").values_list("id", flat=True)[:cap])
        except DatabaseError:
            # Keep counting with what is known; the next unseen id tries again.
            logger.warning("could not read businesses for Prometheus labels", exc_info=True)
            return
        self._businesses = frozenset(ids)
        self._full = len(ids) >= cap
        self._loaded_at = now

    def business(self, business_id: str | None) -> str:
        return self.businesses([business_id])[business_id]

    def businesses(self, business_ids: Iterable[str | None]) -> dict[str | None, str]:
        """Label values for several ids, reading the database at most once (a batch of new ids costs one query)."""
        self._configure()
        ids = set(business_ids)
        unseen = {b for b in ids if b and b not in self._businesses}
        if unseen:
            now = time.monotonic()
            if not self._full or now - self._loaded_at >= settings.MLOPS_PROMETHEUS_BUSINESS_REFRESH_SECONDS:
                self._load_businesses(now)
        known = self._businesses
        return {b: (b if b in known else OTHER) if b else UNKNOWN for b in ids}

    @staticmethod
    def _pick(value: str | None, allowed: dict[str, str]) -> str:
        if value is None or not str(value).strip():
            return UNKNOWN
        return allowed.get(str(value).strip().lower(), OTHER)

    def intent(self, value: str | None) -> str:
        self._configure()
        return self._pick(value, self._intents)

    def response_type(self, value: str | None) -> str:
        self._configure()
        return self._pick(value, self._response_types)

    def model(self, value: str | None) -> str:
        self._configure()
        return self._pick(value, self._models)


labels = LabelPolicy()


# --- Listeners of metrics_app.listeners: events stored, bookings recorded, ingest answered


def count_stored_events(events: list[dict[str, Any]]) -> None:
    """Count events that were newly stored (never a duplicate or a rejected one).

    Counts are summed per label set first, so a batch of 500 events moves each
    counter once per label set rather than once per event (each move takes a
    lock and writes the worker's file). Histograms still observe every value.
    """
    business_labels = labels.businesses(event.get("business_id") for event in events)
    tally = _Tally()
    for event in events:
        tally.add(event, business_labels[event.get("business_id")])
    tally.publish()
    # Events are written with one INSERT ... ON CONFLICT, which no model hook sees.
    model_inserts.labels(_EVENT_MODEL).inc(len(events))


_LabelledMetric = tuple[Any, tuple[str, ...]]  # a metric and the values of its labels
# Each outcome flag of an event and the per-business counter it moves.
_FLAG_COUNTERS = (
    ("appointment_requested", APPOINTMENTS_REQUESTED),
    ("appointment_booked", APPOINTMENTS_BOOKED),
    ("human_handoff_requested", HUMAN_HANDOFFS),
)


@dataclass
class _Tally:
    """A batch's counter increments, costs and histogram observations, per label set."""

    increments: defaultdict[_LabelledMetric, float] = field(default_factory=lambda: defaultdict(float))
    costs: defaultdict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    observations: defaultdict[_LabelledMetric, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, event: dict[str, Any], business: str) -> None:
        model = labels.model(event.get("model_name"))
        intent = labels.intent(event.get("intent_detected"))
        self.increments[AI_REQUESTS, (business, intent, labels.response_type(event.get("response_type")))] += 1
        self._observe(event, business, model)
        tokens = event.get("tokens_used")
        if tokens:
            self.increments[AI_TOKENS, (business, model)] += tokens
        cost = event.get("api_cost_usd")
        if cost:
            self.costs[business] += Decimal(cost)
        for flag, metric in _FLAG_COUNTERS:
            if event.get(flag):
                self.increments[metric, (business,)] += 1
        if is_failed_reply(event.get("success_rate"), event.get("response_type")):
            self.increments[AI_FAILED_REPLIES, (business,)] += 1

    def _observe(self, event: dict[str, Any], business: str, model: str) -> None:
        response_ms = event.get("response_time_ms")
        if response_ms is not None:
            seconds = response_ms / 1000
            self.observations[AI_RESPONSE_TIME, (business,)].append(seconds)
            self.observations[GEN_AI_DURATION, (GEN_AI_OPERATION, model)].append(seconds)
        tokens = event.get("tokens_used")
        input_tokens, output_tokens = event.get("input_tokens"), event.get("output_tokens")
        if input_tokens is not None or output_tokens is not None:
            if input_tokens is not None:
                self.observations[GEN_AI_TOKENS, (GEN_AI_OPERATION, model, "input")].append(input_tokens)
            if output_tokens is not None:
                self.observations[GEN_AI_TOKENS, (GEN_AI_OPERATION, model, "output")].append(output_tokens)
        elif tokens is not None:
            self.observations[GEN_AI_TOKENS, (GEN_AI_OPERATION, model, "total")].append(tokens)

    def publish(self) -> None:
        for (metric, label_values), amount in self.increments.items():
            metric.labels(*label_values).inc(amount)
        for business, cost in self.costs.items():
            AI_COST.labels(business).inc(float(cost))
        for (metric, label_values), values in self.observations.items():
            child = metric.labels(*label_values)
            for value in values:
                child.observe(value)


def count_recorded_bookings(bookings: list[tuple[str, str | None]]) -> None:
    """Count bookings recorded after their event was stored."""
    business_labels = labels.businesses(business_id for business_id, _model in bookings)
    for business_id, _model in bookings:
        APPOINTMENTS_BOOKED.labels(business_labels[business_id]).inc()


# --- The middleware: django-prometheus's, with bounded labels; and the ingest's outcomes

_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class MetricsAfterMiddleware(PrometheusAfterMiddleware):
    """django-prometheus's after-middleware with every `method` label bounded.

    django-prometheus labels its latency histogram with the raw request method,
    so a client inventing methods would add a series (and 17 buckets) per name.
    """

    def label_metric(
        self, metric: Any, request: HttpRequest, response: HttpResponse | None = None, **label_values: Any
    ) -> Any:
        method = label_values.get("method")
        if method is not None and method not in _HTTP_METHODS:
            label_values["method"] = "<invalid method>"
        return super().label_metric(metric, request, response, **label_values)


def count_ingest_answer(answer: IngestAnswer) -> None:
    """The one source of mlops_ingest_events_total: what each ingest request created, found duplicate, rejected."""
    for outcome, count in (("created", answer.created), ("duplicate", answer.duplicates),
                           ("rejected", answer.rejected)):
        if count:
            INGEST_EVENTS.labels(outcome).inc(count)


# --- /metrics


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render_metrics() -> bytes:
    """The text exposition of every metric, summed over all worker processes."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(REGISTRY)
    return render_directory(path)


def _token_accepted(request: HttpRequest, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


@csrf_exempt
def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics: Prometheus text format; a bearer token is required when MLOPS_METRICS_TOKEN is set."""
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed("GET, HEAD")
    token = settings.MLOPS_METRICS_TOKEN
    if token and not _token_accepted(request, token):
        return error_response(
            401, "A bearer token is required for /metrics", {"authorization": ["send Authorization: Bearer <token>"]},
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE_LATEST)


# --- django-prometheus's model counters, fed by signals rather than a mixin on every model

_MODEL_APPS = ("metrics_app", "documents_app")
_EVENT_MODEL = "aimetric"


def _model_saved(sender: type[Model], created: bool, **kwargs: Any) -> None:
    (model_inserts if created else model_updates).labels(sender._meta.model_name).inc()


def _model_deleted(sender: type[Model], **kwargs: Any) -> None:
    model_deletes.labels(sender._meta.model_name).inc()


def connect() -> None:
    """Subscribe the counters to the event store and the models (called from MetricsAppConfig.ready)."""
    from django.apps import apps
    from django.db.models.signals import post_delete, post_save

    listeners.on_events_stored(count_stored_events)
    listeners.on_bookings_recorded(count_recorded_bookings)
    listeners.on_ingest_answered(count_ingest_answer)
    for app_label in _MODEL_APPS:
        if not apps.is_installed(app_label):
            continue
        for model in apps.get_app_config(app_label).get_models():
            name = model._meta.model_name
            for counter in (model_inserts, model_updates, model_deletes):
                counter.labels(name)
            post_save.connect(_model_saved, sender=model, dispatch_uid=f"prometheus-save-{name}")
            post_delete.connect(_model_deleted, sender=model, dispatch_uid=f"prometheus-delete-{name}")
