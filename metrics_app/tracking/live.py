"""Each prompt and knowledge-base version's live figures, logged to MLflow once a day per business.

One MLflow experiment per business (`business/<id>`), one run per version of
each dimension (`prompt_version v7`, `kb_version kb-3f2a...`), and each of its
figures a metric whose step is the day (days since 1970-01-01) and whose
timestamp is the day's start, in the business's time zone: the MLflow UI then draws a version's figures over
days and sets versions side by side. The figures are the analytics API's own
(`analytics.selectors.summary` for the business, the day and the version), so
MLflow shows what the dashboard shows.

A day is logged once: MLflow keeps every point it is sent, and a second point
with other values at the same step would draw two, so a day whose `events`
point a run already holds is skipped. This is an operator's tool: it reads
every business, and MLflow has no tenancy of its own.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.utils import timezone

from metrics_app.analytics.selectors import Filters, breakdown, summary
from metrics_app.models import Business
from metrics_app.tracking.client import configured, experiment_id, tracking_client

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

DIMENSIONS = ("prompt_version", "kb_version")
# MLflow metric name -> the analytics summary's figure. Rates are per conversation (booking, handoff) or per
# reply (error); a figure with nothing to divide by that day (no conversation, no booking) is left out.
FIGURES = {
    "booking_rate": "booking_rate",
    "handoff_rate": "handoff_rate",
    "error_rate": "error_rate",
    "latency_p50_ms": "latency_p50_ms",
    "latency_p95_ms": "latency_p95_ms",
    "cost_per_booking_usd": "cost_per_booked_appointment_usd",
    "conversations": "conversations",
    "events": "events",
}
# Every logged day has this point: its steps say which days a run already holds.
DAY_MARKER = "events"
# More versions of one dimension in one day than this are not a release history but a misuse of the field.
MAX_VERSIONS_A_DAY = 200
EPOCH = date(1970, 1, 1)
TAG_BUSINESS = "mlops.business_id"
TAG_DIMENSION = "mlops.dimension"
TAG_VERSION = "mlops.version"


def experiment_name(business_id: str) -> str:
    return f"business/{business_id}"


def step_of(day: date) -> int:
    """The day as a metric step: days since 1970-01-01, the same for every run."""
    return (day - EPOCH).days


def day_start(day: date, tz: zoneinfo.ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=tz)


def finished_days(count: int, tz: zoneinfo.ZoneInfo, now: datetime | None = None) -> list[date]:
    """The `count` days before today in `tz`, oldest first: days over, whose figures will not grow."""
    today = (now or timezone.now()).astimezone(tz).date()
    return [today - timedelta(days=back) for back in range(count, 0, -1)]


def day_filters(business_id: str, day: date, tz: zoneinfo.ZoneInfo) -> Filters:
    start = day_start(day, tz)
    return Filters(businesses=frozenset({business_id}), start=start, end=day_start(day + timedelta(days=1), tz), tz=tz)


def versions_of_day(filters: Filters, dimension: str) -> list[str]:
    """The versions of `dimension` that the day's replies carried (replies without one are not a version)."""
    return [row["key"] for row in breakdown(filters, dimension, MAX_VERSIONS_A_DAY) if row["key"]]


def figures_of(filters: Filters, dimension: str, version: str) -> dict[str, float]:
    """The version's figures for the filters' day, as MLflow metric values; figures without a value are left out."""
    if dimension == "prompt_version":
        figures = summary(replace(filters, prompt_version=version))
    else:
        figures = summary(replace(filters, kb_version=version))
    return {name: float(figures[source]) for name, source in FIGURES.items() if figures.get(source) is not None}


@dataclass
class LogResult:
    businesses: int = 0  # businesses with something logged
    runs: set[str] = field(default_factory=set)  # MLflow runs written to
    days_logged: int = 0  # (version, day) pairs logged now
    days_already_there: int = 0  # (version, day) pairs MLflow held already
    points: int = 0

    def line(self) -> str:
        return (
            f"logged {self.days_logged} version-days ({self.points} points) of {self.businesses} businesses in "
            f"{len(self.runs)} MLflow runs at {settings.MLFLOW_TRACKING_URI}; "
            f"{self.days_already_there} version-days were there already"
        )


class _BusinessRuns:
    """The runs of one business's experiment, found by their tags, and the days each already holds."""

    def __init__(self, client: MlflowClient, business_id: str) -> None:
        self.client = client
        self.business_id = business_id
        self.experiment = experiment_id(client, experiment_name(business_id))
        self.runs: dict[tuple[str, str], str] = {}
        self.days: dict[str, set[int]] = {}
        token = None
        while True:
            page = client.search_runs([self.experiment], max_results=1000, page_token=token)
            for run in page:
                tags = run.data.tags
                if TAG_DIMENSION in tags and TAG_VERSION in tags:
                    self.runs.setdefault((tags[TAG_DIMENSION], tags[TAG_VERSION]), run.info.run_id)
            token = page.token
            if not token:
                break

    def run_of(self, dimension: str, version: str) -> str:
        run_id = self.runs.get((dimension, version))
        if run_id is None:
            tags = {TAG_BUSINESS: self.business_id, TAG_DIMENSION: dimension, TAG_VERSION: version, dimension: version}
            run_id = self.client.create_run(self.experiment, tags=tags, run_name=f"{dimension} {version}").info.run_id
            self.runs[(dimension, version)] = run_id
            self.days[run_id] = set()
        return run_id

    def logged_days(self, run_id: str) -> set[int]:
        if run_id not in self.days:
            self.days[run_id] = {point.step for point in self.client.get_metric_history(run_id, DAY_MARKER)}
        return self.days[run_id]


def log_live_figures(
    days: Iterable[date] | None = None,
    business_ids: list[str] | None = None,
    tz: zoneinfo.ZoneInfo | None = None,
    progress: Callable[[Iterable[str]], Iterable[str]] = lambda items: items,
    count: int | None = None,
) -> LogResult:
    """Log each version's figures of each day for the businesses (None: every business); days already logged are
    skipped. Days are each business's own (its time zone) unless `tz` is given; without `days`, the `count`
    (default MLFLOW_DAYS) days before today there. Raises MlflowUnavailable when MLflow is not configured or not
    installed, MlflowException when the server refuses."""
    from mlflow.entities import Metric

    client = tracking_client()
    chosen = sorted(set(days)) if days is not None else None
    zones = dict(Business.objects.values_list("id", "time_zone"))
    if business_ids is None:
        business_ids = sorted(zones)
    result = LogResult()
    for business_id in progress(business_ids):
        runs: _BusinessRuns | None = None  # the experiment is made only for a business with something to log
        written: set[str] = set()
        zone = tz or zoneinfo.ZoneInfo(zones.get(business_id) or "UTC")
        for day in chosen if chosen is not None else finished_days(count or settings.MLFLOW_DAYS, zone):
            filters = day_filters(business_id, day, zone)
            for dimension in DIMENSIONS:
                for version in versions_of_day(filters, dimension):
                    runs = runs or _BusinessRuns(client, business_id)
                    run_id = runs.run_of(dimension, version)
                    step = step_of(day)
                    if step in runs.logged_days(run_id):
                        result.days_already_there += 1
                        continue
                    stamp = int(day_start(day, zone).timestamp() * 1000)
                    metrics = [Metric(name, value, stamp, step) for name, value in figures_of(
                        filters, dimension, version).items()]
                    client.log_batch(run_id, metrics=metrics)
                    runs.logged_days(run_id).add(step)
                    written.add(run_id)
                    result.days_logged += 1
                    result.points += len(metrics)
        for run_id in written:
            client.set_terminated(run_id)
        if written:
            result.businesses += 1
            result.runs |= written
    return result


def log_finished_days() -> str:
    """The worker's job: the last MLFLOW_DAYS finished days of every business in its time zone, those not logged."""
    if not configured():
        return "MLflow is not configured (MLFLOW_TRACKING_URI); nothing logged"
    return log_live_figures().line()
