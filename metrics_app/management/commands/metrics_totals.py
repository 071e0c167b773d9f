"""Current totals per business, under the names of the Prometheus counters, without Prometheus."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from django.db.models import Count, Q, Sum

from metrics_app.models import AIMetric
from metrics_app.rules import FAILED_REPLY

# Column -> the Prometheus sample it matches (summed by business_id).
COLUMNS = {
    "events": "ai_requests_total",
    "failed": "ai_failed_replies_total",
    "tokens": "ai_tokens_used_total",
    "cost_usd": "ai_api_cost_usd_total",
    "requested": "appointments_requested_total",
    "booked": "appointments_booked_total",
    "handoffs": "human_handoffs_total",
}
# Every column but the cost counts something, so it is printed as a whole number.
FRACTIONAL = {"cost_usd"}
# Said when /metrics and the database disagree: the counters are the folded totals, under bounded labels.
WHY_THEY_DIFFER = (
    "/metrics and the database disagree{detail}. The counters on /metrics are the totals of the events "
    "that the background folder has folded: events stored in the last moments (normally under a second) "
    "are not in them yet, and after a COPY or a restore run manage.py rebuild_analytics. Businesses beyond "
    "MLOPS_PROMETHEUS_MAX_BUSINESSES are counted under 'other'. Run without --url for the totals over "
    "every stored event."
)

Totals = dict[str, dict[str, int | float]]


def _typed(column: str, value: float) -> int | float:
    return float(value) if column in FRACTIONAL else int(round(value))


def totals_from_database(business_id: str | None) -> Totals:
    """Totals over every stored event: what the counters hold once every event is folded."""
    rows = AIMetric.objects.all()
    if business_id:
        rows = rows.filter(business_id=business_id)
    # By name: "failed" is also AIMetric's property, which a keyword annotation shadows for the type checker.
    aggregates = {
        "events": Count("id"),
        "failed": Count("id", filter=FAILED_REPLY),
        "tokens": Sum("tokens_used"),
        "cost_usd": Sum("api_cost_usd"),
        "requested": Count("id", filter=Q(appointment_requested=True)),
        "booked": Count("id", filter=Q(appointment_booked=True)),
        "handoffs": Count("id", filter=Q(human_handoff_requested=True)),
    }
    grouped: Iterable[Mapping[str, Any]] = rows.values("business_id").order_by("business_id").annotate(**aggregates)
    return {
        row["business_id"]: {column: _typed(column, row[column] or 0) for column in COLUMNS} for row in grouped
    }


def totals_from_metrics(url: str, token: str, business_id: str | None) -> Totals:
    """Totals as the running service's /metrics reports them (the folded events; labels bounded)."""
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise CommandError(f"could not read {url}: {exc}") from None
    wanted = {sample: column for column, sample in COLUMNS.items()}
    found: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(COLUMNS, 0.0))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            column = wanted.get(sample.name)
            business = sample.labels.get("business_id")
            if column and business and (business_id is None or business == business_id):
                found[business][column] += sample.value
    return {
        business: {column: _typed(column, value) for column, value in row.items()}
        for business, row in sorted(found.items())
    }


def disagreement(from_metrics: Totals, from_database: Totals) -> str:
    """Empty when both hold the same counts; otherwise what differs, in a few words."""
    businesses = set(from_metrics) | set(from_database)
    differing = sorted(
        b for b in businesses
        if any(
            from_metrics.get(b, {}).get(c, 0) != from_database.get(b, {}).get(c, 0)
            for c in COLUMNS if c not in FRACTIONAL
        )
    )
    if not differing:
        return ""
    counted = sum(int(row["events"]) for row in from_metrics.values())
    stored = sum(int(row["events"]) for row in from_database.values())
    shown = ", ".join(differing[:5]) + (f" and {len(differing) - 5} more" if len(differing) > 5 else "")
    return f" for {shown} ({counted} events counted, {stored} stored)"


class Command(BaseCommand):
    help = (
        "Print the current totals per business (events, failed replies, tokens, cost, appointments, handoffs), "
        "named as the Prometheus counters. By default from the database; with --url from a running service's "
        "/metrics (the events folded so far, so the last moments' events may be missing there). "
        "Example: manage.py metrics_totals --url http://127.0.0.1:5000/metrics"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--business", help="only this business_id")
        parser.add_argument("--url", help="read a running service's /metrics instead of the database")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def handle(self, *args: Any, **options: Any) -> None:
        business_id = options["business"]
        if options["url"]:
            totals = totals_from_metrics(options["url"], settings.MLOPS_METRICS_TOKEN, business_id)
            source = options["url"]
        else:
            try:
                totals = totals_from_database(business_id)
            except DatabaseError as exc:
                raise CommandError(f"could not read the database: {exc}") from None
            source = "database"
        if options["json"]:
            self.stdout.write(json.dumps(totals, indent=2, sort_keys=True))
        else:
            self._table(totals)
        events = sum(row["events"] for row in totals.values())
        self.stderr.write(f"{len(totals)} businesses, {events} events in all (source: {source}).")
        if options["url"]:
            self._compare_with_database(totals, business_id)

    def _compare_with_database(self, from_metrics: Totals, business_id: str | None) -> None:
        try:
            from_database = totals_from_database(business_id)
        except DatabaseError:
            return  # nothing to compare with; the counters are still worth printing
        detail = disagreement(from_metrics, from_database)
        if detail:
            self.stderr.write(WHY_THEY_DIFFER.format(detail=detail))

    def _table(self, totals: Totals) -> None:
        width = max([len("business_id"), *(len(b) for b in totals)])
        header = f"{'business_id':<{width}}" + "".join(f"{column:>12}" for column in COLUMNS)
        self.stdout.write(header)
        self.stdout.write("-" * len(header))
        for business, row in totals.items():
            cells = "".join(
                f"{row[c]:>12.6f}" if c == "cost_usd" else f"{row[c]:>12.0f}" for c in COLUMNS
            )
            self.stdout.write(f"{business:<{width}}{cells}")
