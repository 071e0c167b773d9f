"""`manage.py metrics_report`: how the AI receptionist did over a period, in the terminal.

The figures are the analytics API's own (metrics_app.analytics.selectors), so the report,
the API and the dashboard always agree.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from django.utils import timezone

from metrics_app.analytics import selectors
from metrics_app.models import Business

Formatter = Callable[[Any], str]


def _count(value: Any) -> str:
    return f"{value:,}"


def _ms(value: Any) -> str:
    return f"{value:,.0f} ms"


def _usd(value: Any) -> str:
    return f"${value:,.2f}" if value >= 100 else f"${value:,.4f}"


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}%"


# (key in the selectors' summary, label, format): the report's rows, in order.
SUMMARY_ROWS: tuple[tuple[str, str, Formatter], ...] = (
    ("events", "AI replies (events)", _count),
    ("conversations", "Conversations", _count),
    ("success_rate", "Success rate", _percent),
    ("error_rate", "Failed replies", _percent),
    ("latency_p50_ms", "Latency p50", _ms),
    ("latency_p95_ms", "Latency p95", _ms),
    ("latency_p99_ms", "Latency p99", _ms),
    ("tokens", "Tokens", _count),
    ("cost_usd", "Cost", _usd),
    ("cost_per_conversation_usd", "Cost per conversation", _usd),
    ("conversations_booked", "Conversations booked", _count),
    ("cost_per_booked_appointment_usd", "Cost per booked appointment", _usd),
    ("booking_rate", "Booking rate (of conversations)", _percent),
    ("handoff_rate", "Handoff rate (of conversations)", _percent),
    ("unpriced_events", "Events on unpriced models", _count),
)


def _show(value: Any, formatter: Formatter) -> str:
    return "n/a" if value is None else formatter(value)


def _change(now: Any, before: Any) -> str:
    if now is None or before is None or before == 0:
        return ""
    return f"{100 * (now - before) / abs(before):+.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Plain columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        cells = [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        return "  ".join(cells).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


class Command(BaseCommand):
    help = (
        "Print a summary report of the AI receptionist over a period: replies, conversations, success, latency, "
        "cost, bookings and handoffs, compared with the period before, per business and per intent."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--business", help="One business id (default: every business).")
        parser.add_argument("--days", type=int, default=7, help="Length of the period in days (default 7).")
        parser.add_argument(
            "--end", help="Last day of the period, YYYY-MM-DD (default today); periods are whole local days."
        )
        parser.add_argument("--tz", help="IANA time zone of the days (default the business's zone, else UTC).")

    def handle(self, *args: Any, business: str | None, days: int, end: str | None, tz: str | None,
               **options: Any) -> None:
        if not 1 <= days <= 366:
            raise CommandError("--days must be between 1 and 366")
        try:
            if business is not None and not Business.objects.filter(id=business).exists():
                raise CommandError(f"no business {business!r}; see the businesses in the admin")
            zone_name = tz or selectors.time_zone_of([business] if business else None)
            try:
                zone = zoneinfo.ZoneInfo(zone_name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise CommandError(f"--tz {zone_name!r} is not an IANA time zone such as Europe/London") from None
            try:
                last_day = date.fromisoformat(end) if end else timezone.now().astimezone(zone).date()
            except ValueError:
                raise CommandError("--end must be a date such as 2026-03-31") from None
            start = datetime.combine(last_day - timedelta(days=days - 1), time(), tzinfo=zone)
            stop = datetime.combine(last_day + timedelta(days=1), time(), tzinfo=zone)
            self._report(business, start, stop, zone, days)
        except DatabaseError as exc:
            raise CommandError(f"the database could not be read: {exc}") from exc

    def _filters(self, business: str | None, start: datetime, end: datetime, zone: zoneinfo.ZoneInfo,
                 **extra: Any) -> selectors.Filters:
        businesses = frozenset([business]) if business else None
        return selectors.Filters(businesses=businesses, start=start, end=end, tz=zone, **extra)

    def _report(self, business: str | None, start: datetime, end: datetime, zone: zoneinfo.ZoneInfo,
                days: int) -> None:
        current = self._filters(business, start, end, zone)
        previous = self._filters(business, start - (end - start), start, zone)
        now, before = selectors.summary(current), selectors.summary(previous)
        scope = f"business {business}" if business else "all businesses"
        last = (end - timedelta(days=1)).date()
        out = self.stdout.write
        out(f"AI receptionist report for {scope}")
        out(f"{start.date()} to {last} ({days} days, {zone.key}), compared with the {days} days before")
        out("")
        rows = [
            [label, _show(now[key], fmt), _show(before[key], fmt), _change(now[key], before[key])]
            for key, label, fmt in SUMMARY_ROWS
        ]
        for line in _table(["", "this period", "previous", "change"], rows):
            out(line)

        if not business:
            out("")
            out("Per business")
            rows = []
            for row in selectors.breakdown(current, "business", 100):
                one = selectors.summary(self._filters(row["key"], start, end, zone))
                rows.append([
                    row["key"], _count(one["events"]), _count(one["conversations"]),
                    _show(one["success_rate"], _percent), _show(one["latency_p95_ms"], _ms), _usd(one["cost_usd"]),
                    _count(one["conversations_booked"]), _show(one["cost_per_booked_appointment_usd"], _usd),
                    _show(one["handoff_rate"], _percent),
                ])
            header = ["business", "events", "conversations", "success", "p95", "cost", "booked", "cost/booked",
                      "handoffs"]
            for line in _table(header, rows) if rows else ["(no events)"]:
                out(line)

        out("")
        out("Top intents")
        intents = selectors.breakdown(current, "intent", 10)
        rows = [
            [row["key"] or "(none)", _count(row["events"]), _percent(row["events"] / now["events"]),
             _show(row["latency_p95_ms"], _ms), _count(row["appointments_booked"])]
            for row in intents
        ]
        for line in _table(["intent", "events", "share", "p95", "booked"], rows) if rows else ["(no events)"]:
            out(line)
        out("")
        cost_per_booking = _show(now["cost_per_booked_appointment_usd"], _usd)
        self.stdout.write(self.style.SUCCESS(
            f"{_count(now['events'])} replies in {_count(now['conversations'])} conversations, "
            f"{_count(now['conversations_booked'])} booked, {cost_per_booking} per booked appointment "
            f"({_change(now['events'], before['events']) or 'no'} change in replies)."
        ))
