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

import functools
import hmac
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Model
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django_prometheus.middleware import PrometheusAfterMiddleware
from django_prometheus.models import model_deletes, model_inserts, model_updates
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, disable_created_metrics, generate_latest
from prometheus_client.utils import floatToGoString

from metrics_app import listeners
from metrics_app.analytics import totals
from metrics_app.analytics.totals import DURATION_BUCKETS, LATENCY, TOKEN_BUCKETS, TOKEN_TYPES, Histogram
from metrics_app.errors import error_response, method_not_allowed
from metrics_app.folding import services as folding
from metrics_app.listeners import IngestAnswer
from metrics_app.monitoring.exposition import escape_help, labels_text, render_directory

logger = logging.getLogger(__name__)

# Multiprocess mode has no `_created` series; leave them out in a single process
# too, so /metrics looks the same however the service is served (and is a third smaller).
disable_created_metrics()

OTHER = "other"
UNKNOWN = "unknown"
GEN_AI_OPERATION = "chat"

# --- Per-process counters: what the database does not hold.
INGEST_EVENTS_NAME = "mlops_ingest_events"
INGEST_EVENTS_HELP = (
    "Events received by /track, /track/batch and /v1/traces, by outcome (skipped: spans that are no GenAI call)"
)
INGEST_EVENTS = Counter(INGEST_EVENTS_NAME, INGEST_EVENTS_HELP, ["outcome"])
# Duplicates and rejected events are stored nowhere, so the worker that answered counts them; `created` is the
# folded events' count, read from the totals at scrape time.
PER_PROCESS_OUTCOMES = ("duplicate", "rejected", "skipped")
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
# A token histogram's key in MetricTotals.histograms -> its gen_ai_token_type label.
_TOKEN_TYPE_OF = {totals.tokens_key(token_type): token_type for token_type in TOKEN_TYPES}


class _RowLabels(NamedTuple):
    """The bounded label values of one MetricTotals row."""

    business: str
    intent: str
    response_type: str
    model: str


def _counts() -> defaultdict[_Labels, int]:
    return defaultdict(int)


@dataclass
class FoldedSeries:
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
        """Read the totals and the business labels in one transaction; a DatabaseError goes to the caller.

        Rows are summed as they arrive, under their own business id; the ids
        then get their labels, and the ones that share a label are summed.
        """
        # Thousands of rows share a few intents, types and models: map each distinct value once.
        intent, response_type, model = (_memoized(pick) for pick in (labels.intent, labels.response_type, labels.model))
        by_id = cls()
        with transaction.atomic():
            for row in totals.stored_totals():
                key = row.key
                by_id.add(row, _RowLabels(
                    key.business_id, intent(key.intent), response_type(key.response_type), model(key.model_name)
                ))
            business_labels = labels.businesses({business for business, *_others in by_id.requests})
        return by_id.relabelled(business_labels)

    def add(self, row: totals.StoredTotals, mapped: _RowLabels) -> None:
        business = (mapped.business,)
        self.events += row.events
        self.requests[mapped.business, mapped.intent, mapped.response_type] += row.events
        self.tokens[mapped.business, mapped.model] += row.tokens
        self.cost[business] += row.client_cost
        for _family, column in _BUSINESS_COUNTERS:
            self.per_business[column][business] += getattr(row, column)
        for key, stored in row.histograms.items():
            if key == LATENCY:
                _add_histogram(self.response_time, business, key, stored)
                _add_histogram(self.duration, (GEN_AI_OPERATION, mapped.model), key, stored)
            else:
                token_type = _TOKEN_TYPE_OF.get(key)
                if token_type is None:
                    raise ValueError(f"MetricTotals holds a histogram this code does not know: {key!r}")
                _add_histogram(self.token_usage, (GEN_AI_OPERATION, mapped.model, token_type), key, stored)

    def relabelled(self, business_labels: Mapping[str | None, str]) -> FoldedSeries:
        """The same series with each business id (the first label of the per-business series) as its label."""

        def first(label_values: _Labels) -> _Labels:
            return (business_labels[label_values[0]], *label_values[1:])

        out = FoldedSeries(events=self.events, duration=self.duration, token_usage=self.token_usage)
        _sum_into(out.requests, self.requests, first)
        _sum_into(out.tokens, self.tokens, first)
        _sum_into(out.cost, self.cost, first)
        for _family, column in _BUSINESS_COUNTERS:
            _sum_into(out.per_business[column], self.per_business[column], first)
        for label_values, histogram in self.response_time.items():
            _merge_histogram(out.response_time, first(label_values), histogram)
        return out

    def text(self) -> str:
        """The families as exposition text, in the order /metrics has always listed them."""
        out: list[str] = []
        _counter_text(out, AI_REQUESTS, self.requests)
        _histogram_text(out, AI_RESPONSE_TIME, self.response_time, DURATION_BUCKETS, seconds=True)
        _counter_text(out, AI_TOKENS, self.tokens)
        _counter_text(out, AI_COST, self.cost)
        for family, column in _BUSINESS_COUNTERS:
            _counter_text(out, family, self.per_business[column])
        _histogram_text(out, GEN_AI_DURATION, self.duration, DURATION_BUCKETS, seconds=True)
        _histogram_text(out, GEN_AI_TOKENS, self.token_usage, TOKEN_BUCKETS, seconds=False)
        return "".join(out)


def _memoized(pick: Callable[[str], str]) -> Callable[[str], str]:
    found: dict[str, str] = {}

    def cached(value: str) -> str:
        label = found.get(value)
        if label is None:
            label = found[value] = pick(value)
        return label

    return cached


_Value = TypeVar("_Value", int, Decimal)


def _sum_into(
    into: defaultdict[_Labels, _Value], values: Mapping[_Labels, _Value], relabel: Callable[[_Labels], _Labels]
) -> None:
    for label_values, value in values.items():
        into[relabel(label_values)] += value


def _merge_histogram(into: dict[_Labels, Histogram], series: _Labels, histogram: Histogram) -> None:
    mine = into.get(series)
    if mine is None:
        into[series] = histogram
    else:
        mine.merge(histogram)


def _add_histogram(into: dict[_Labels, Histogram], series: _Labels, key: str, stored: dict[str, Any]) -> None:
    histogram = into.get(series)
    if histogram is None:
        histogram = into[series] = Histogram.empty(totals.histogram_bounds(key))
    histogram.add_stored(key, stored)


# The text of the folded series is written here rather than by prometheus_client's generate_latest, which
# took 28 ms for the 7,000 samples of 200 businesses x 10 intents x 5 models; this takes about 5.


@functools.lru_cache(maxsize=262_144)  # labels are bounded, so the texts to remember are too
def _series_prefix(sample: str, names: tuple[str, ...], values: _Labels) -> str:
    """The text of a sample line before its value."""
    return f"{sample}{labels_text(tuple(zip(names, values, strict=True)))} "


def _header(name: str, typ: str, help_text: str) -> str:
    return f"# HELP {name} {escape_help(help_text)}\n# TYPE {name} {typ}\n"


def _counter_text(out: list[str], family: _Family, values: Mapping[_Labels, int | Decimal]) -> None:
    name = f"{family.name}_total"
    out.append(_header(name, "counter", family.help))
    out.extend(
        f"{_series_prefix(name, family.labels, label_values)}{floatToGoString(float(value))}\n"
        for label_values, value in sorted(values.items())
    )


def _histogram_text(
    out: list[str], family: _Family, values: dict[_Labels, Histogram], buckets: tuple[float, ...], *, seconds: bool
) -> None:
    """Running totals over the buckets, then count and sum; latency is stored in whole ms and exposed in seconds
    (the sum divided once, so it is exact to the millisecond)."""
    out.append(_header(family.name, "histogram", family.help))
    bucket, with_le = f"{family.name}_bucket", (*family.labels, "le")
    edges = [floatToGoString(bound) for bound in buckets] + ["+Inf"]
    for label_values, histogram in sorted(values.items()):
        cumulative = histogram.cumulative()
        for edge, count in zip(edges, cumulative, strict=True):
            out.append(f"{_series_prefix(bucket, with_le, (*label_values, edge))}{floatToGoString(float(count))}\n")
        out.append(f"{_series_prefix(f'{family.name}_count', family.labels, label_values)}"
                   f"{floatToGoString(float(cumulative[-1]))}\n")
        total_sum = histogram.sum / 1000 if seconds else float(histogram.sum)
        out.append(f"{_series_prefix(f'{family.name}_sum', family.labels, label_values)}{floatToGoString(total_sum)}\n")


def read_folded_series() -> FoldedSeries | None:
    """The folded series, or None when they could not be read (logged and counted, never raised).

    A ValueError is a stored histogram that this code does not know or whose buckets no longer match the code's
    (rebuild_analytics mends it).
    """
    try:
        return FoldedSeries.read()
    except (DatabaseError, ValueError):
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
    counts = (answer.duplicates, answer.rejected, answer.skipped)
    for outcome, count in zip(PER_PROCESS_OUTCOMES, counts, strict=True):
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
    if folded is not None:
        text = with_created_events(text, folded.events) + folded.text()
    return (text + folder_text()).encode()


def folder_text() -> str:
    """The folder's progress: the same on every instance (it is the database's), so scrape or aggregate with max."""
    try:
        folder = folding.status()
    except DatabaseError:
        logger.warning("/metrics could not read the folder's state", exc_info=True)
        return ""
    lines = []
    for name, typ, help_text, value in (
        ("mlops_folder_backlog_events", "gauge", "Events stored but not folded yet", folder.backlog_events),
        ("mlops_folder_lag_seconds", "gauge", "Age of the oldest event not folded yet, in seconds",
         round(folder.lag_seconds, 3)),
        ("mlops_folder_running", "gauge", "1 while a folder holds its lease", int(folder.running)),
        ("mlops_folder_events_folded_total", "counter", "Events folded", folder.events_folded),
        ("mlops_folder_errors_total", "counter", "Fold attempts that failed", folder.errors),
    ):
        lines.append(f"{_header(name, typ, help_text)}{name} {value}\n")
    return "".join(lines)


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
