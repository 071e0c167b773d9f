"""Open and after hours: a business's figures split by its opening hours, and its demand by hour of the week.

The hours rule (metrics_app/analytics/hours.py) makes every 15-minute UTC
bucket wholly open or wholly closed, so the read computes the open buckets
of the period once and sums each rollup row (every event of the business,
dimension "") on its side. The partial quarter hours at the period's ends
and the events not folded yet are read raw and classified by their own
quarter hour, and the conversations those unfolded events touch are
corrected as the summary corrects them, all in the summary's one snapshot:
open plus after hours is exactly the summary of the period.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.db.models.functions import Trunc

from metrics_app.analytics import hours, rollups, tail
from metrics_app.analytics.selectors import (
    Filters,
    _conversation_figures,
    _corrections,
    _count,
    _dict_rows,
    _event_aggregates,
    _event_figures,
    _folded_conversations,
    _in_snapshot,
    _merge,
    _named,
    _rollup,
    _split,
    _tail,
    events_in,
)
from metrics_app.models import ConversationRollup, EventRollup

OPEN, AFTER_HOURS = "open", "after_hours"
NO_HOURS = "no opening hours set"
Cell = tuple[int, int]  # (ISO weekday, local hour)


def _sides() -> dict[str, dict[str, Any]]:
    return {OPEN: {}, AFTER_HOURS: {}}


class _Tally:
    """Sums on each side of the hours, and the conversations per hour-of-week cell and side."""

    def __init__(self, open_quarters: set[datetime], filters: Filters) -> None:
        self.open_quarters = open_quarters
        self.events = _sides()
        self.conversations = _sides()
        self.cells: dict[Cell, dict[str, dict[str, Any]]] = defaultdict(_sides)
        self.cell_of = _cell_finder(filters)

    def side(self, moment: datetime) -> str:
        return OPEN if rollups.quarter_of(moment) in self.open_quarters else AFTER_HOURS

    def add_events(self, moment: datetime, sums: dict[str, Any]) -> None:
        _merge(self.events[self.side(moment)], sums)

    def add_conversations(self, moment: datetime, sums: dict[str, Any]) -> None:
        where = self.side(moment)
        _merge(self.conversations[where], sums)
        _merge(self.cells[self.cell_of(moment)][where], sums)

    def answer(self) -> dict[str, Any]:
        result: dict[str, Any] = {"opening_hours_set": True, "note": None}
        for where in (OPEN, AFTER_HOURS):
            figures = _event_figures(defaultdict(lambda: None, self.events[where]))
            figures.update(_conversation_figures(defaultdict(lambda: None, self.conversations[where]),
                                                 figures["cost_usd"]))
            result[where] = figures
        result["by_hour_of_week"] = [
            {"weekday": weekday, "hour": hour,
             **{where: _cell_figures(self.cells.get((weekday, hour), _sides())[where])
                for where in (OPEN, AFTER_HOURS)}}
            for weekday in range(1, 8) for hour in range(24)
        ]
        return result


@_in_snapshot
def opening_hours_split(filters: Filters) -> dict[str, Any]:
    """The period's figures in opening hours and after hours, and 168 hour-of-week cells of conversations.

    `filters` names one business and no event filter. Cells are in `filters.tz`;
    open or closed is always in the business's own zone, by the quarter hour,
    so a cell the business opens in at :30 counts its first two quarter hours
    after hours and the last two open.
    """
    if filters.businesses is None or len(filters.businesses) != 1 or filters.event_filters:
        raise ValueError("the opening-hours split is for one business, without event filters")
    (business_id,) = filters.businesses
    schedule = hours.schedule_of(business_id)
    if not schedule.is_set:
        return {"opening_hours_set": False, "note": NO_HOURS, OPEN: None, AFTER_HOURS: None, "by_hour_of_week": []}
    tally = _Tally(schedule.open_quarters(filters.start, filters.end), filters)
    middle, edges = _split(filters)
    if middle is None:
        raw_parts, conversation_edges = [filters], [filters]
    else:
        raw_parts, conversation_edges = [*edges, _tail(filters, middle)], edges
        for bucket, *values in _rollup(EventRollup, filters, *middle).order_by().values_list(
            "bucket", *rollups.EVENT_SUMS
        ):
            tally.add_events(bucket, dict(zip(rollups.EVENT_SUMS, values, strict=True)))
        for bucket, *values in _rollup(ConversationRollup, filters, *middle).order_by().values_list(
            "bucket", *rollups.CONVERSATION_SUMS
        ):
            tally.add_conversations(bucket, _named(dict(zip(rollups.CONVERSATION_SUMS, values, strict=True))))
    for part in raw_parts:
        for minute, sums in _raw_minute_sums(part):
            tally.add_events(minute, sums)
    # Conversations of the raw ends as folded, and those the unfolded events touch as all their events make them.
    entries: list[tail.Correction] = [c for edge in conversation_edges for c in _folded_conversations(edge)]
    entries += [c for c in _corrections(filters) if filters.start <= c.moment < filters.end]
    for entry in entries:
        tally.add_conversations(entry.moment, entry.sums())
    return tally.answer()


def _cell_finder(filters: Filters) -> Callable[[datetime], Cell]:
    """(ISO weekday, hour) of a moment in the answer's zone; a period repeats the same buckets, so remembered."""
    found: dict[datetime, Cell] = {}

    def cell_of(moment: datetime) -> Cell:
        cell = found.get(moment)
        if cell is None:
            local = moment.astimezone(filters.tz)
            cell = found[moment] = (local.isoweekday(), local.hour)
        return cell

    return cell_of


def _raw_minute_sums(part: Filters) -> list[tuple[datetime, dict[str, Any]]]:
    """Event sums of a raw part per UTC minute: fine enough to put each on the side of its quarter hour."""
    rows = events_in(part).annotate(minute=Trunc("timestamp", "minute", tzinfo=UTC)).values("minute")
    return [(row.pop("minute"), row) for row in _dict_rows(rows.annotate(**_event_aggregates()).order_by())]


def _cell_figures(sums: dict[str, Any]) -> dict[str, int]:
    return {
        "conversations": _count(sums.get("conversations")),
        "conversations_with_request": _count(sums.get("conv_requested")),
        "conversations_booked": _count(sums.get("conv_booked")),
    }
