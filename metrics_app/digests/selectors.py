"""The weekly digest's figures: one business, one week, read through the analytics selectors.

A week runs from Monday 00:00 to the next Monday 00:00 on the business's own
wall clock (Business.time_zone), so a week across a daylight-saving change
is 167 or 169 hours long. Every figure is the analytics API's own: the
summary for replies, conversations, bookings, handoffs and cost, the
opening-hours split for the after-hours demand, the daily time series for
the chart. Nothing here sums events itself, so the digest always says what
the dashboard says for the same week.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.utils import timezone

from metrics_app.analytics import after_hours
from metrics_app.analytics.selectors import Filters, summary, timeseries
from metrics_app.models import Business

# The first week a digest may be asked for: events are refused before 2000-01-01.
FIRST_WEEK = date(2000, 1, 3)
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class BadWeek(ValueError):
    """A week that cannot have a digest: not ended yet, or before any event could exist."""


def week_of(day: date) -> date:
    """The Monday of the week holding `day`."""
    return day - timedelta(days=day.weekday())


def week_start_moment(monday: date, tz: zoneinfo.ZoneInfo) -> datetime:
    return datetime.combine(monday, time(), tzinfo=tz)


def due_week(tz: zoneinfo.ZoneInfo, now: datetime | None = None) -> date:
    """The Monday of the last week that has ended in `tz`."""
    today = (now or timezone.now()).astimezone(tz).date()
    return week_of(today) - timedelta(days=7)


def check_week(monday: date, tz: zoneinfo.ZoneInfo, now: datetime | None = None) -> None:
    """Raise BadWeek unless the week of `monday` has ended in `tz` and lies in the calendar events can have."""
    if monday < FIRST_WEEK:
        raise BadWeek(f"the week of {monday} is before {FIRST_WEEK}, when no event can exist")
    if monday > due_week(tz, now):
        raise BadWeek(f"the week of {monday} has not ended yet in {tz.key}; the last week that has is "
                      f"the week of {due_week(tz, now)}")


def week_filters(business_id: str, monday: date, tz: zoneinfo.ZoneInfo) -> Filters:
    return Filters(businesses=frozenset({business_id}), start=week_start_moment(monday, tz),
                   end=week_start_moment(monday + timedelta(days=7), tz), tz=tz)


@dataclass(frozen=True)
class Change:
    """A figure this week beside last week, and the difference."""

    current: int
    previous: int

    @property
    def difference(self) -> int:
        return self.current - self.previous

    @property
    def percent(self) -> float | None:
        """The change as a percentage of last week; None when last week had none."""
        return 100.0 * self.difference / self.previous if self.previous else None


@dataclass(frozen=True)
class AfterHours:
    """Demand outside the opening hours: conversations begun then, those that asked for and got a booking."""

    hours_set: bool
    conversations: int = 0
    requests: int = 0
    bookings: int = 0


@dataclass(frozen=True)
class Digest:
    business_id: str
    business_name: str
    tz: str
    week_start: date
    starts: datetime
    ends: datetime
    replies: Change
    conversations: Change
    bookings: Change
    handoffs: int
    cost_usd: float
    cost_per_booking_usd: float | None
    unpriced_replies: int
    after_hours: AfterHours
    # Replies per local day, Monday first: this week and the week before.
    replies_by_day: tuple[int, ...]
    previous_replies_by_day: tuple[int, ...]

    @property
    def week_end(self) -> date:
        """The Sunday the week ends on."""
        return self.week_start + timedelta(days=6)


def _replies_by_day(filters: Filters) -> tuple[int, ...]:
    series = timeseries(filters, "day", percentiles=False)
    by_day = dict.fromkeys(range(7), 0)
    for bucket in series:
        day = datetime.fromisoformat(bucket["start"]).date()
        by_day[(day - filters.start.date()).days] += bucket["events"]
    return tuple(by_day[day] for day in range(7))


def _after_hours(filters: Filters) -> AfterHours:
    split: dict[str, Any] = after_hours.opening_hours_split(filters)
    if not split["opening_hours_set"]:
        return AfterHours(hours_set=False)
    closed = split[after_hours.AFTER_HOURS]
    return AfterHours(hours_set=True, conversations=closed["conversations"],
                      requests=closed["conversations_with_request"], bookings=closed["conversations_booked"])


def weekly_digest(business: Business, monday: date) -> Digest:
    """The digest of `business` for the week beginning on `monday` (a Monday) in the business's zone."""
    tz = zoneinfo.ZoneInfo(business.time_zone or "UTC")
    this_week = week_filters(business.pk, monday, tz)
    last_week = week_filters(business.pk, monday - timedelta(days=7), tz)
    now, before = summary(this_week), summary(last_week)
    return Digest(
        business_id=business.pk,
        business_name=str(business),
        tz=tz.key,
        week_start=monday,
        starts=this_week.start,
        ends=this_week.end,
        replies=Change(now["events"], before["events"]),
        conversations=Change(now["conversations"], before["conversations"]),
        bookings=Change(now["conversations_booked"], before["conversations_booked"]),
        handoffs=now["conversations_handed_off"],
        cost_usd=now["cost_usd"],
        cost_per_booking_usd=now["cost_per_booked_appointment_usd"],
        unpriced_replies=now["unpriced_events"],
        after_hours=_after_hours(this_week),
        replies_by_day=_replies_by_day(this_week),
        previous_replies_by_day=_replies_by_day(last_week),
    )
