"""Open and after hours: every figure against plain Python over the raw rows, with zoneinfo on each timestamp.

Two businesses: one in Asia/Kathmandu (+05:45) with a lunch break, a closed
holiday and a short day; one in Europe/London whose week crosses the last
Sunday of March, when 01:00-02:00 local does not exist, with a bank holiday
and a Sunday night open until midnight. Each test runs with the events all
folded, all unfolded, and half folded (late events of folded conversations).
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from metrics_app.models import Business, OpeningException, OpeningHours
from tests.analytics.helpers import expected_conversations, expected_event_figures, rows, store
from tests.helpers import fold_all, staff_user

START = datetime(2026, 3, 23, 0, 7, 13, tzinfo=UTC)  # partial quarter hours at both ends
END = datetime(2026, 3, 31, 6, 53, 41, tzinfo=UTC)
PERIOD = {"start": START.isoformat(), "end": END.isoformat()}

# Minutes of the local day; 1440 is the midnight that ends it.
HOURS: dict[str, dict[str, Any]] = {
    "kathmandu-salon": {
        "tz": "Asia/Kathmandu",
        "week": {d: [(9 * 60, 12 * 60 + 30), (13 * 60 + 15, 17 * 60 + 45)] for d in range(1, 6)} | {
            6: [(10 * 60, 14 * 60)]},
        "exceptions": {date(2026, 3, 24): ([], "Holiday"), date(2026, 3, 26): ([(11 * 60 + 30, 13 * 60)], "Short day")},
    },
    "london-dental": {
        "tz": "Europe/London",
        "week": {d: [(8 * 60 + 30, 18 * 60)] for d in range(1, 6)} | {
            6: [(9 * 60, 13 * 60)], 7: [(30, 2 * 60 + 30), (23 * 60, 1440)]},
        "exceptions": {date(2026, 3, 30): ([], "Bank holiday")},
    },
}


def _time(minutes: int) -> time:
    return time(0, 0) if minutes == 1440 else time(minutes // 60, minutes % 60)


def _save_hours() -> None:
    for business_id, spec in HOURS.items():
        Business.objects.create(id=business_id, time_zone=spec["tz"])
        for weekday, intervals in spec["week"].items():
            for opens, closes in intervals:
                OpeningHours.objects.create(business_id=business_id, weekday=weekday, opens=_time(opens),
                                            closes=_time(closes))
        for day, (intervals, note) in spec["exceptions"].items():
            if not intervals:
                OpeningException.objects.create(business_id=business_id, date=day, note=note)
            for opens, closes in intervals:
                OpeningException.objects.create(business_id=business_id, date=day, opens=_time(opens),
                                                closes=_time(closes), note=note)


def is_open(business_id: str, moment: datetime) -> bool:
    """Independently of the service: the wall clock of this moment against its local date's intervals."""
    spec = HOURS[business_id]
    local = moment.astimezone(ZoneInfo(spec["tz"]))
    if local.date() in spec["exceptions"]:
        intervals = spec["exceptions"][local.date()][0]
    else:
        intervals = spec["week"].get(local.isoweekday(), [])
    minute = local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60
    return any(opens <= minute < closes for opens, closes in intervals)


def _events(seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    payloads = []
    first = datetime(2026, 3, 22, 18, 0, tzinfo=UTC)
    for n in range(260):
        business_id = rng.choice(list(HOURS))
        begun = first + timedelta(seconds=rng.randrange(int((END - first).total_seconds()) + 3600))
        for turn in range(rng.randint(1, 4)):
            payloads.append({
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "business_id": business_id,
                "conversation_id": f"conv-{n}",
                "timestamp": (begun + timedelta(minutes=4 * turn, seconds=rng.randrange(60))).isoformat(),
                "response_time_ms": rng.randint(150, 6000),
                "tokens_used": rng.randint(100, 900),
                "api_cost_usd": round(rng.uniform(0, 0.01), 6),
                "model_name": rng.choice(["gpt-4o-mini", "in-house-llm"]),
                "response_type": rng.choice(["text", "text", "error", "appointment"]),
                "success_rate": rng.choice([1, 1, 0.5, 0]),
                "appointment_requested": rng.random() < 0.3,
                "appointment_booked": rng.random() < 0.15,
                "human_handoff_requested": rng.random() < 0.1,
            })
    # Events in the hours the rule must get right: the London Sunday across the skipped hour, the holidays.
    for business_id, moment in [
        ("london-dental", datetime(2026, 3, 29, 0, 40, tzinfo=UTC)),  # 00:40 GMT: open
        ("london-dental", datetime(2026, 3, 29, 1, 20, tzinfo=UTC)),  # 02:20 BST: open
        ("london-dental", datetime(2026, 3, 29, 1, 40, tzinfo=UTC)),  # 02:40 BST: closed
        ("london-dental", datetime(2026, 3, 30, 10, 0, tzinfo=UTC)),  # a Monday, but the bank holiday
        ("kathmandu-salon", datetime(2026, 3, 24, 5, 0, tzinfo=UTC)),  # 10:45 on the holiday
        ("kathmandu-salon", datetime(2026, 3, 26, 6, 0, tzinfo=UTC)),  # 11:45 on the short day: open
        ("kathmandu-salon", datetime(2026, 3, 25, 7, 0, tzinfo=UTC)),  # 12:45, the lunch break
    ]:
        payloads.append({
            "event_id": str(uuid.uuid4()), "business_id": business_id, "conversation_id": f"edge-{moment:%d%H%M}",
            "timestamp": moment.isoformat(), "response_time_ms": 500, "tokens_used": 100,
            "appointment_requested": True, "appointment_booked": True,
        })
    rng.shuffle(payloads)
    return payloads


@pytest.fixture(params=["folded", "unfolded", "half-folded"])
def hours_data(request, db) -> list[dict[str, Any]]:
    _save_hours()
    payloads = _events()
    if request.param == "half-folded":
        store(payloads[::2])
        fold_all()
        store(payloads[1::2])  # stored after the fold and left unfolded: late turns of folded conversations too
    else:
        store(payloads)
        if request.param == "folded":
            fold_all()
    return payloads


@pytest.fixture
def agency(make_key) -> dict[str, str]:
    _, raw = make_key(None, can_ingest=False, can_read=True)
    return {"Authorization": f"Bearer {raw}"}


def _get(api, headers: dict[str, str], **params: Any):
    return api.get("/api/analytics/opening-hours", params, headers=headers)


EVENT_FIGURES = ("events", "errors", "latency_mean_ms", "tokens", "cost_usd", "client_cost_usd",
                 "appointments_booked", "human_handoffs")


def _expected_side(business_id: str, side_open: bool) -> dict[str, Any]:
    all_rows = rows()
    chosen = [r for r in all_rows if r["business_id"] == business_id and START <= r["timestamp"] < END
              and is_open(business_id, r["timestamp"]) == side_open]
    events = expected_event_figures(chosen)
    started = [c for c in expected_conversations(all_rows, START, END, {business_id})
               if is_open(business_id, c["first"]) == side_open]
    booked = sum(c["booked"] for c in started)
    expected = {name: events[name] for name in EVENT_FIGURES}
    expected.update({
        "error_rate": events["errors"] / events["events"] if events["events"] else None,
        "conversations": len(started),
        "conversations_with_request": sum(c["requested"] for c in started),
        "conversations_booked": booked,
        "conversations_handed_off": sum(c["handoff"] for c in started),
        "booking_rate": booked / len(started) if started else None,
    })
    return expected


@pytest.mark.parametrize("business_id", list(HOURS))
def test_open_and_after_hours_figures_match_the_raw_rows(api, agency, hours_data, business_id):
    answer = _get(api, agency, business_id=business_id, **PERIOD)
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["opening_hours_set"] is True and body["note"] is None
    for side, side_open in (("open", True), ("after_hours", False)):
        expected = _expected_side(business_id, side_open)
        got = {name: body[side][name] for name in expected}
        assert got == pytest.approx(expected), side
        assert expected["events"] > 0 and expected["conversations"] > 0, "each side must have data"
    summary = api.get("/api/analytics/summary", {"business_id": business_id, **PERIOD}, headers=agency).json()
    for name in ("events", "conversations", "conversations_booked"):
        assert body["open"][name] + body["after_hours"][name] == summary["summary"][name]


@pytest.mark.parametrize(("business_id", "tz"), [
    ("kathmandu-salon", None), ("london-dental", None), ("kathmandu-salon", "Asia/Kolkata"), ("london-dental", "UTC"),
])
def test_hour_of_week_cells_count_demand_on_each_side_by_the_quarter_hour(api, agency, hours_data, business_id, tz):
    params = {"business_id": business_id, **PERIOD} | ({"tz": tz} if tz else {})
    body = _get(api, agency, **params).json()
    zone = ZoneInfo(tz or HOURS[business_id]["tz"])
    expected: dict[tuple[int, int, str], list[int]] = {}
    for conversation in expected_conversations(rows(), START, END, {business_id}):
        local = conversation["first"].astimezone(zone)
        side = "open" if is_open(business_id, conversation["first"]) else "after_hours"
        counts = expected.setdefault((local.isoweekday(), local.hour, side), [0, 0, 0])
        counts[0] += 1
        counts[1] += conversation["requested"]
        counts[2] += conversation["booked"]
    cells = body["by_hour_of_week"]
    assert [(c["weekday"], c["hour"]) for c in cells] == [(d, h) for d in range(1, 8) for h in range(24)]
    for cell in cells:
        for side in ("open", "after_hours"):
            want = expected.get((cell["weekday"], cell["hour"], side), [0, 0, 0])
            got = cell[side]
            assert [got["conversations"], got["conversations_with_request"], got["conversations_booked"]] == want, (
                cell["weekday"], cell["hour"], side)
    assert sum(c["after_hours"]["conversations"] for c in cells) == body["after_hours"]["conversations"]


def test_the_rule_follows_the_wall_clock_across_the_skipped_hour_and_the_holidays(db):
    from metrics_app.analytics import hours

    _save_hours()
    london, kathmandu = hours.schedule_of("london-dental"), hours.schedule_of("kathmandu-salon")
    assert london.is_open(datetime(2026, 3, 29, 0, 40, tzinfo=UTC))  # 00:40 GMT
    assert london.is_open(datetime(2026, 3, 29, 1, 20, tzinfo=UTC))  # 02:20 BST: the interval lost an hour
    assert not london.is_open(datetime(2026, 3, 29, 1, 30, tzinfo=UTC))  # 02:30 BST: closes
    assert london.is_open(datetime(2026, 3, 29, 23, 59, tzinfo=UTC)) is False  # 00:59 BST Monday
    assert london.is_open(datetime(2026, 3, 29, 22, 59, tzinfo=UTC))  # 23:59 BST Sunday, open until midnight
    assert not london.is_open(datetime(2026, 3, 30, 10, 0, tzinfo=UTC))  # bank holiday
    assert not kathmandu.is_open(datetime(2026, 3, 24, 5, 0, tzinfo=UTC))  # holiday
    assert kathmandu.is_open(datetime(2026, 3, 26, 6, 0, tzinfo=UTC))  # short day, 11:45
    assert not kathmandu.is_open(datetime(2026, 3, 26, 4, 0, tzinfo=UTC))  # short day, 09:45: not the week's hours
    assert not kathmandu.is_open(datetime(2026, 3, 25, 7, 0, tzinfo=UTC))  # lunch break, 12:45
    assert kathmandu.is_open(datetime(2026, 3, 25, 7, 30, tzinfo=UTC))  # 13:15, back from lunch
    quarters = kathmandu.open_quarters(START, END)
    assert quarters and all(q.minute % 15 == 0 and q.second == 0 for q in quarters)


def test_a_business_without_hours_says_so(api, agency, db):
    Business.objects.create(id="no-hours", time_zone="Asia/Kathmandu")
    body = _get(api, agency, business_id="no-hours", **PERIOD).json()
    assert body["opening_hours_set"] is False
    assert body["note"] == "no opening hours set"
    assert body["open"] is None and body["after_hours"] is None and body["by_hour_of_week"] == []


def test_a_period_shorter_than_a_quarter_hour_is_split_from_the_raw_rows(api, agency, hours_data):
    start, end = datetime(2026, 3, 25, 3, 16, tzinfo=UTC), datetime(2026, 3, 25, 3, 29, tzinfo=UTC)  # 09:01-09:14
    body = _get(api, agency, business_id="kathmandu-salon", start=start.isoformat(), end=end.isoformat()).json()
    expected = [r for r in rows() if r["business_id"] == "kathmandu-salon" and start <= r["timestamp"] < end]
    assert body["open"]["events"] == len(expected)
    assert body["after_hours"]["events"] == 0


def test_one_business_is_required(api, agency, db):
    response = _get(api, agency, **PERIOD)
    assert response.status_code == 400
    assert "business_id" in response.content.decode()


def test_a_key_of_another_business_is_refused(api, make_key, hours_data):
    _, raw = make_key(Business.objects.get(pk="london-dental"), can_ingest=False, can_read=True)
    headers = {"Authorization": f"Bearer {raw}"}
    assert _get(api, headers, business_id="kathmandu-salon", **PERIOD).status_code == 403
    assert _get(api, headers, business_id="london-dental", **PERIOD).status_code == 200


def test_staff_limited_to_another_business_are_refused(api, logged_in, hours_data):
    client = logged_in(staff_user("limited", businesses=["london-dental"]))
    assert client.get("/api/analytics/opening-hours", {"business_id": "kathmandu-salon", **PERIOD}).status_code == 403
    assert client.get("/api/analytics/opening-hours", {"business_id": "london-dental", **PERIOD}).status_code == 200


def test_an_interval_across_a_dst_change_is_shorter_in_spring_and_longer_in_autumn(db):
    from metrics_app.analytics import hours

    _save_hours()
    london = hours.schedule_of("london-dental")  # Sundays 00:30-02:30 local

    def open_quarters_that_night(day: date) -> int:
        evening = datetime.combine(day, time(20), tzinfo=UTC) - timedelta(days=1)
        return len(london.open_quarters(evening, evening + timedelta(hours=8)))

    assert open_quarters_that_night(date(2026, 3, 22)) == 8  # no change: two hours
    assert open_quarters_that_night(date(2026, 3, 29)) == 4  # 01:00-02:00 skipped: one hour
    assert open_quarters_that_night(date(2026, 10, 25)) == 12  # 01:00-02:00 twice: three hours
