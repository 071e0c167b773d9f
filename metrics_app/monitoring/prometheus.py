"""Prometheus metrics of the AI replies, and the /metrics endpoint.

The `ai_*` and `gen_ai_*` series, histogram buckets included, and
`mlops_ingest_events_total{outcome="created"}` are read from the database at
each scrape: the totals that the background folder adds each event to, once,
in the transaction that folds it (metrics_app/analytics/totals.py). So they
equal the folded events whatever happens to a worker, stay where they were
across restarts, and are the same on every instance sharing the database.
The rest (django-prometheus's metrics, the duplicate and rejected counts) are
per-process counters: under gunicorn each worker writes its values to files in
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, set up by
gunicorn.conf.py) and a scrape of any worker sums them all.

Labels are bounded (see `LabelPolicy`): a business keeps its own
`business_id` label only while it is among the first
MLOPS_PROMETHEUS_MAX_BUSINESSES registered businesses; intents, response
types and models keep theirs only when they are on a configured list. Every
other value is reported as `other`, and a missing one as `unknown`; the totals
of values that share a label are summed.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Model
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django_prometheus.middleware import PrometheusAfterMiddleware
from django_prometheus.models import model_deletes, model_inserts, model_updates
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Metric, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from metrics_app import listeners
from metrics_app.analytics import totals
from metrics_app.analytics.totals import DURATION_BUCKETS, LATENCY, TOKEN_BUCKETS, TOKEN_TYPES, Histogram
from metrics_app.errors import error_response, method_not_allowed
from metrics_app.listeners import IngestAnswer
from metrics_app.monitoring.exposition import render_directory

logger = logging.getLogger(__name__)

# Multiprocess mode has no `_created` series; leave them out in a single process
# too, so /metrics looks the same however the service is served (and is a third smaller).
disable_created_metrics()

OTHER = "other"
UNKNOWN = "unknown"
GEN_AI_OPERATION = "chat"

# --- Per-process counters: what the database does not hold.
INGEST_EVENTS_NAME = "mlops_ingest_events"
INGEST_EVENTS_HELP = "Events received by /track and /track/batch, by outcome"
INGEST_EVENTS = Counter(INGEST_EVENTS_NAME, INGEST_EVENTS_HELP, ["outcome"])
# Duplicates and rejected events are stored nowhere, so the worker that answered counts them; `created` is the
# folded events' count, read from the totals at scrape time.
PER_PROCESS_OUTCOMES = ("duplicate", "rejected")
for _outcome in PER_PROCESS_OUTCOMES:
    INGEST_EVENTS.labels(_outcome)
TOTALS_READ_ERRORS = Counter(
    "mlops_metrics_totals_read_errors",
    "Scrapes that could not read the folded totals from the database; they answered without the ai_* and "
    "gen_ai_* series",
)


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
        """Read the first businesses; a DatabaseError goes to the caller, which must not fall back to `other`:
        a scrape that relabelled a business's totals as `other` would look like a counter reset to Prometheus."""
        from metrics_app.models import Business

        cap = settings.MLOPS_PROMETHEUS_MAX_BUSINESSES
        ids = list(Business.objects.order_by("created_at", "id").values_list("id", flat=True)[:cap])
        self._businesses = frozenset(ids)
        self._full = len(ids) >= cap
        self._loaded_at = now

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


# --- The ai_* and gen_ai_* families, from the folded totals


@dataclass(frozen=True)
class _Family:
    name: str
    help: str
    labels: tuple[str, ...]


AI_REQUESTS = _Family(
    "ai_requests", "AI replies stored, by business, intent and response type",
    ("business_id", "intent", "response_type"),
)
AI_RESPONSE_TIME = _Family("ai_response_time_seconds", "Time the AI took to reply, in seconds", ("business_id",))
AI_TOKENS = _Family("ai_tokens_used", "Tokens used by AI replies", ("business_id", "model"))
AI_COST = _Family("ai_api_cost_usd", "API cost of AI replies as the client reported it, in USD", ("business_id",))
APPOINTMENTS_REQUESTED = _Family(
    "appointments_requested", "AI replies in which the customer asked for an appointment", ("business_id",)
)
HUMAN_HANDOFFS = _Family("human_handoffs", "AI replies that handed the customer to a human", ("business_id",))
APPOINTMENTS_BOOKED = _Family(
    "appointments_booked",
    "Appointments booked, counted when the booking is recorded (with the event or later)",
    ("business_id",),
)
AI_FAILED_REPLIES = _Family(
    "ai_failed_replies", "AI replies that failed (success_rate 0 or response_type error)", ("business_id",)
)
GEN_AI_DURATION = _Family(
    "gen_ai_client_operation_duration_seconds", "GenAI operation duration, in seconds",
    ("gen_ai_operation_name", "gen_ai_request_model"),
)
GEN_AI_TOKENS = _Family(
    "gen_ai_client_token_usage",
    "Tokens used per GenAI operation; type input/output when the split is sent, total otherwise",
    ("gen_ai_operation_name", "gen_ai_request_model", "gen_ai_token_type"),
)
# The per-business counters and the totals column each one reports.
_BUSINESS_COUNTERS = (
    (APPOINTMENTS_REQUESTED, "requested"),
    (HUMAN_HANDOFFS, "handoffs"),
    (APPOINTMENTS_BOOKED, "booked"),
    (AI_FAILED_REPLIES, "failed"),
)

_Labels = tuple[str, ...]  # label values, in the order of their family's `labels`


def _counts() -> defaultdict[_Labels, int]:
    return defaultdict(int)


@dataclass
class FoldedSeries(Collector):
    """The folded totals after label mapping: totals whose values share a label are summed into one series."""

    events: int = 0  # every folded event: mlops_ingest_events_total{outcome="created"}
    requests: defaultdict[_Labels, int] = field(default_factory=_counts)
    tokens: defaultdict[_Labels, int] = field(default_factory=_counts)
    cost: defaultdict[_Labels, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    per_business: dict[str, defaultdict[_Labels, int]] = field(
        default_factory=lambda: {column: _counts() for _family, column in _BUSINESS_COUNTERS}
    )
    response_time: dict[_Labels, Histogram] = field(default_factory=dict)
    duration: dict[_Labels, Histogram] = field(default_factory=dict)
    token_usage: dict[_Labels, Histogram] = field(default_factory=dict)

    @classmethod
    def read(cls) -> FoldedSeries:
        """Read the totals and the business labels in one transaction; a DatabaseError goes to the caller."""
        with transaction.atomic():
            stored = totals.stored_totals()
            business_labels = labels.businesses(key.business_id for key in stored)
        series = cls()
        for key, sums in stored.items():
            series.add(key, sums, business_labels[key.business_id])
        return series

    def add(self, key: totals.TotalsKey, sums: totals.Sums, business: str) -> None:
        model = labels.model(key.model_name)
        self.events += sums.events
        self.requests[business, labels.intent(key.intent), labels.response_type(key.response_type)] += sums.events
        self.tokens[business, model] += sums.tokens
        self.cost[(business,)] += sums.client_cost
        for _family, column in _BUSINESS_COUNTERS:
            self.per_business[column][(business,)] += getattr(sums, column)
        latency = sums.histograms.get(LATENCY)
        if latency is not None:
            _merge_into(self.response_time, (business,), latency)
            _merge_into(self.duration, (GEN_AI_OPERATION, model), latency)
        for token_type in TOKEN_TYPES:
            used = sums.histograms.get(totals.tokens_key(token_type))
            if used is not None:
                _merge_into(self.token_usage, (GEN_AI_OPERATION, model, token_type), used)

    def collect(self) -> list[Metric]:
        """The families in the order /metrics has always listed them; generate_latest writes them."""
        families: list[Metric] = [
            _counter(AI_REQUESTS, self.requests),
            _histogram(AI_RESPONSE_TIME, self.response_time, DURATION_BUCKETS, seconds=True),
            _counter(AI_TOKENS, self.tokens),
            _counter(AI_COST, self.cost),
        ]
        families += [_counter(family, self.per_business[column]) for family, column in _BUSINESS_COUNTERS]
        families += [
            _histogram(GEN_AI_DURATION, self.duration, DURATION_BUCKETS, seconds=True),
            _histogram(GEN_AI_TOKENS, self.token_usage, TOKEN_BUCKETS, seconds=False),
        ]
        return families


def _merge_into(into: dict[_Labels, Histogram], key: _Labels, histogram: Histogram) -> None:
    mine = into.get(key)
    if mine is None:
        into[key] = Histogram(histogram.bounds, list(histogram.counts), histogram.sum)
    else:
        mine.merge(histogram)


def _counter(family: _Family, values: Mapping[_Labels, int | Decimal]) -> CounterMetricFamily:
    metric = CounterMetricFamily(family.name, family.help, labels=family.labels)
    for label_values, value in sorted(values.items()):
        metric.add_metric(label_values, float(value))
    return metric


def _histogram(
    family: _Family, values: dict[_Labels, Histogram], buckets: tuple[float, ...], *, seconds: bool
) -> HistogramMetricFamily:
    """One family; latency is stored in whole ms and exposed in seconds (the sum divided once, so exact)."""
    metric = HistogramMetricFamily(family.name, family.help, labels=family.labels)
    edges = [floatToGoString(bound) for bound in buckets] + ["+Inf"]
    for label_values, histogram in sorted(values.items()):
        cumulative = [float(n) for n in histogram.cumulative()]
        total_sum = histogram.sum / 1000 if seconds else float(histogram.sum)
        metric.add_metric(label_values, list(zip(edges, cumulative, strict=True)), total_sum)
    return metric


def read_folded_series() -> FoldedSeries | None:
    """The folded series, or None when the database could not be read (logged and counted, never raised)."""
    try:
        return FoldedSeries.read()
    except DatabaseError:
        TOTALS_READ_ERRORS.inc()
        logger.warning("/metrics could not read the folded totals; answering without the ai_* series", exc_info=True)
        return None


_CREATED_AFTER = f"# TYPE {INGEST_EVENTS_NAME}_total counter\n"


def with_created_events(text: str, created: int) -> str:
    """`text` with the `created` series added to the per-process mlops_ingest_events family (one family, one
    HELP and TYPE: Prometheus refuses a family that appears twice)."""
    line = f'{INGEST_EVENTS_NAME}_total{{outcome="created"}} {floatToGoString(created)}\n'
    at = text.find(_CREATED_AFTER)
    if at < 0:  # never in practice: every process labels its duplicate and rejected series at import
        return text + f"# HELP {INGEST_EVENTS_NAME}_total {INGEST_EVENTS_HELP}\n{_CREATED_AFTER}{line}"
    at += len(_CREATED_AFTER)
    return text[:at] + line + text[at:]


# --- Listeners of metrics_app.listeners: events stored (for the model counter), ingest answered


def count_event_inserts(events: list[dict[str, Any]]) -> None:
    """Events are written with one INSERT ... ON CONFLICT, which no model hook sees: count them for
    django_model_inserts_total{model="aimetric"}."""
    model_inserts.labels(_EVENT_MODEL).inc(len(events))


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
    """The duplicates and rejected events of each ingest request (its created events are counted when folded)."""
    for outcome, count in zip(PER_PROCESS_OUTCOMES, (answer.duplicates, answer.rejected), strict=True):
        if count:
            INGEST_EVENTS.labels(outcome).inc(count)


# --- /metrics


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render_metrics() -> bytes:
    """The text exposition: the per-process metrics summed over all workers, then the folded series.

    The totals are read first, so a failure to read them is counted in this
    very scrape; the rest of the page is served either way.
    """
    folded = read_folded_series()
    path = multiprocess_dir()
    text = generate_latest(REGISTRY).decode() if path is None else render_directory(path).decode()
    if folded is None:
        return text.encode()
    return with_created_events(text, folded.events).encode() + generate_latest(folded)


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

    listeners.on_events_stored(count_event_inserts)
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
