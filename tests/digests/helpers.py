"""A business in America/New_York, its replies over three weeks around a daylight-saving change, and the
digest's figures computed independently from the raw rows.

The expected figures are plain Python over `AIMetric` rows and the opening
hours written here (no ORM aggregates, no selectors), so a wrong read in the
service cannot agree with them by sharing code.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from metrics_app.models import AIMetric, Business, OpeningHours
from tests.analytics.helpers import store

BUSINESS = "harbor-dental"
TZ = ZoneInfo("America/New_York")
# The week of the spring change: clocks go from 02:00 to 03:00 on Sunday 8 March 2026, so it lasts 167 hours.
WEEK = date(2026, 3, 2)
PREVIOUS_WEEK = date(2026, 2, 23)
# A Thursday of the week after: the week of WEEK is the last one ended.
NOW = datetime(2026, 3, 12, 15, 0, tzinfo=UTC)
# Open Monday to Friday 09:00-17:00, Saturday 10:00-14:00; closed on Sunday.
HOURS = {**{day: (time(9), time(17)) for day in range(1, 6)}, 6: (time(10), time(14))}
MODELS = ["gpt-4o-mini", "gemini-1.5-flash", "in-house-llm", None]


def local(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=TZ)


def make_business(business_id: str = BUSINESS, name: str = "Harbor Dental") -> Business:
    business = Business.objects.create(id=business_id, name=name, time_zone=TZ.key)
    for weekday, (opens, closes) in HOURS.items():
        OpeningHours.objects.create(business=business, weekday=weekday, opens=opens, closes=closes)
    return business


def _conversation(rng: random.Random, n: int, start: datetime, business_id: str) -> list[dict[str, Any]]:
    events = []
    for turn in range(rng.randint(1, 4)):
        moment = start + timedelta(minutes=2 * turn, seconds=rng.randrange(60))
        event: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "business_id": business_id,
            "conversation_id": f"chat-{n}",
            "response_time_ms": rng.randint(200, 4000),
            "tokens_used": rng.randint(100, 900),
            "timestamp": moment.isoformat(),
            "model_name": rng.choice(MODELS),
            "appointment_requested": rng.random() < 0.35,
            "appointment_booked": rng.random() < 0.2,
            "human_handoff_requested": rng.random() < 0.1,
        }
        if rng.random() < 0.3:
            event["api_cost_usd"] = round(rng.uniform(0, 0.01), 6)
        events.append(event)
    return events


def make_payloads(seed: int = 11, conversations: int = 70, business_id: str = BUSINESS) -> list[dict[str, Any]]:
    """Conversations over the two weeks and a day either side, and some exactly at the weeks' edges."""
    rng = random.Random(seed)
    first, last = local(PREVIOUS_WEEK, 0) - timedelta(days=1), local(WEEK + timedelta(days=8), 0)
    minutes = int((last - first).total_seconds() // 60)
    starts = [first + timedelta(minutes=rng.randrange(minutes)) for _ in range(conversations)]
    # The edges: the week's first and last moments, both sides of the skipped hour, and a conversation that
    # begins on Sunday night and goes on into the next week (it counts in the week it began).
    week_end = local(WEEK + timedelta(days=7), 0)
    starts += [local(WEEK, 0), week_end - timedelta(seconds=1), week_end, local(PREVIOUS_WEEK, 0),
               local(WEEK, 0) - timedelta(seconds=1), local(WEEK + timedelta(days=6), 1, 59),
               local(WEEK + timedelta(days=6), 3, 0), week_end - timedelta(minutes=3)]
    payloads = [event for n, start in enumerate(starts) for event in _conversation(rng, n, start, business_id)]
    # Replies outside any conversation count as replies and cost, never as conversations.
    for _ in range(6):
        moment = local(WEEK, 0) + timedelta(minutes=rng.randrange(7 * 24 * 60 - 60))
        payloads.append({"event_id": str(uuid.UUID(int=rng.getrandbits(128))), "business_id": business_id,
                         "response_time_ms": 500, "tokens_used": 120, "timestamp": moment.isoformat(),
                         "model_name": "gpt-4o-mini"})
    rng.shuffle(payloads)
    return payloads


def load(payloads: list[dict[str, Any]]) -> None:
    store(payloads)


# --- Independent figures.


def week_bounds(monday: date) -> tuple[datetime, datetime]:
    return local(monday, 0), local(monday + timedelta(days=7), 0)


def is_open(moment: datetime) -> bool:
    wall = moment.astimezone(TZ)
    hours = HOURS.get(wall.isoweekday())
    return hours is not None and hours[0] <= wall.time().replace(tzinfo=None) < hours[1]


def _conversations(rows: list[dict[str, Any]], start: datetime, end: datetime) -> list[dict[str, Any]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["conversation_id"]:
            grouped[row["conversation_id"]].append(row)
    found = []
    for events in grouped.values():
        first = min(e["timestamp"] for e in events)
        if start <= first < end:
            found.append({"first": first, "requested": any(e["appointment_requested"] for e in events),
                          "booked": any(e["appointment_booked"] for e in events),
                          "handoff": any(e["human_handoff_requested"] for e in events)})
    return found


def _per_day(rows: list[dict[str, Any]], monday: date) -> list[int]:
    days = [0] * 7
    for row in rows:
        days[(row["timestamp"].astimezone(TZ).date() - monday).days] += 1
    return days


def expected(business_id: str = BUSINESS, monday: date = WEEK) -> dict[str, Any]:
    """The digest's figures for the week of `monday`, from every stored row of the business."""
    rows = list(AIMetric.objects.filter(business_id=business_id).values())
    start, end = week_bounds(monday)
    before_start, _ = week_bounds(monday - timedelta(days=7))
    this_week = [r for r in rows if start <= r["timestamp"] < end]
    last_week = [r for r in rows if before_start <= r["timestamp"] < start]
    conversations = _conversations(rows, start, end)
    previous = _conversations(rows, before_start, start)
    closed = [c for c in conversations if not is_open(c["first"])]
    cost = sum((r["cost_usd"] or Decimal(0) for r in this_week), Decimal(0))
    bookings = sum(c["booked"] for c in conversations)
    return {
        "replies": len(this_week),
        "replies_previous": len(last_week),
        "conversations": len(conversations),
        "conversations_previous": len(previous),
        "bookings": bookings,
        "bookings_previous": sum(c["booked"] for c in previous),
        "after_hours_conversations": len(closed),
        "after_hours_requests": sum(c["requested"] for c in closed),
        "after_hours_bookings": sum(c["booked"] for c in closed),
        "handoffs": sum(c["handoff"] for c in conversations),
        "cost_usd": float(cost),
        "cost_per_booking_usd": float(cost) / bookings if bookings else None,
        "unpriced_replies": sum(r["cost_basis"] in ("client", "none") for r in this_week),
        "replies_by_day": _per_day(this_week, monday),
        "previous_replies_by_day": _per_day(last_week, monday - timedelta(days=7)),
    }


def shown(figures: dict[str, Any]) -> dict[str, str]:
    """The figures as every format writes them: counts with thousands separators, dollars to 4 decimals, and
    each compared figure's change ("+3 (+12.5%)", "none last week" when there was none, "no change")."""
    out = {key: f"{value:,}" for key, value in figures.items() if isinstance(value, int)}
    for key in ("replies", "conversations", "bookings"):
        now, before = figures[key], figures[f"{key}_previous"]
        if now == before:
            out[f"{key}_change"] = "no change"
        elif before == 0:
            out[f"{key}_change"] = f"{now - before:+,} (none last week)"
        else:
            out[f"{key}_change"] = f"{now - before:+,} ({round(100 * (now - before) / before, 1):+.1f}%)"
    out["cost_usd"] = f"${figures['cost_usd']:,.4f}"
    per_booking = figures["cost_per_booking_usd"]
    out["cost_per_booking_usd"] = "no bookings" if per_booking is None else f"${per_booking:,.4f}"
    return out

