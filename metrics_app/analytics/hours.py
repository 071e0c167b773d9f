"""When a business is open: the one rule, from its weekly hours and its exceptions, in its own time zone.

A moment is open when its wall-clock time in the business's zone falls in
one of the intervals [opens, closes) of its local date: the exceptions of
that date when it has any (none open means closed all day), else the
week's intervals of its ISO weekday. On a daylight-saving change the wall
clock decides:

- a local time that does not exist (the hour skipped in spring) is open for
  no moment, so an interval across it is that much shorter in real time;
- a local time that repeats (the hour repeated in autumn) is open both
  times, so an interval across it is that much longer.

Intervals start and end on quarter hours and UTC offsets are multiples of
15 minutes (so are the moments they change, on the calendar the analytics
accept, 2000-2100), so each 15-minute UTC bucket is wholly open or wholly
closed, and the analytics classify whole rollup rows by their bucket.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from metrics_app.analytics.rollups import QUARTER, quarter_of
from metrics_app.models import MIDNIGHT, Business, OpeningException, OpeningHours

Interval = tuple[time, time]  # [opens, closes); closes 00:00 is the midnight ending the day

_STEP = timedelta(minutes=QUARTER)


@dataclass(frozen=True)
class Schedule:
    """A business's hours: its week (ISO weekday -> intervals) and its dates that differ (date -> intervals)."""

    tz: zoneinfo.ZoneInfo
    week: dict[int, tuple[Interval, ...]] = field(default_factory=dict)
    exceptions: dict[date, tuple[Interval, ...]] = field(default_factory=dict)

    @property
    def is_set(self) -> bool:
        """Whether any hours are set at all: without them nothing is open or after hours."""
        return bool(self.week or self.exceptions)

    def intervals_on(self, day: date) -> tuple[Interval, ...]:
        found = self.exceptions.get(day)
        return found if found is not None else self.week.get(day.isoweekday(), ())

    def is_open(self, moment: datetime) -> bool:
        """Whether the business is open at `moment` (an aware datetime)."""
        local = moment.astimezone(self.tz)
        wall = local.time().replace(tzinfo=None)
        return any(opens <= wall and (wall < closes or closes == MIDNIGHT)
                   for opens, closes in self.intervals_on(local.date()))

    def open_quarters(self, start: datetime, end: datetime) -> set[datetime]:
        """The UTC starts of the 15-minute buckets meeting [start, end) in which the business is open.

        About 8 µs a bucket: 5 ms for 7 days, 0.3 s for the longest period (400 days, 38,400 buckets).
        """
        found: set[datetime] = set()
        bucket = quarter_of(start)
        while bucket < end:
            if self.is_open(bucket):
                found.add(bucket)
            bucket += _STEP
        return found


def schedule_of(business_id: str) -> Schedule:
    """The business's hours as stored (an empty Schedule for an unknown business)."""
    zone = Business.objects.filter(pk=business_id).values_list("time_zone", flat=True).first() or "UTC"
    week: dict[int, list[Interval]] = {}
    for weekday, opens, closes in OpeningHours.objects.filter(business_id=business_id).order_by(
        "weekday", "opens"
    ).values_list("weekday", "opens", "closes"):
        week.setdefault(weekday, []).append((opens, closes))
    exceptions: dict[date, list[Interval]] = {}
    closed: set[date] = set()
    for day, starts, ends in OpeningException.objects.filter(business_id=business_id).order_by(
        "date", "opens"
    ).values_list("date", "opens", "closes"):
        exceptions.setdefault(day, [])
        if starts is None or ends is None:  # the constraint gives both or neither: neither is closed all day
            closed.add(day)
        else:
            exceptions[day].append((starts, ends))
    return Schedule(
        tz=zoneinfo.ZoneInfo(zone),
        week={day: tuple(intervals) for day, intervals in week.items()},
        # A date closed all day stays closed whatever intervals it also lists.
        exceptions={day: () if day in closed else tuple(intervals) for day, intervals in exceptions.items()},
    )
