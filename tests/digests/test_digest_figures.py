"""Every figure of the weekly digest equals the same figure computed from the raw rows, in the business's weeks."""

from __future__ import annotations

from datetime import UTC, date, timedelta

import pytest

from metrics_app.digests.selectors import BadWeek, check_week, due_week, week_filters, week_of, weekly_digest
from tests.digests.helpers import NOW, PREVIOUS_WEEK, TZ, WEEK, expected, local


def _figures(digest) -> dict:
    return {
        "replies": digest.replies.current, "replies_previous": digest.replies.previous,
        "conversations": digest.conversations.current, "conversations_previous": digest.conversations.previous,
        "bookings": digest.bookings.current, "bookings_previous": digest.bookings.previous,
        "after_hours_conversations": digest.after_hours.conversations,
        "after_hours_requests": digest.after_hours.requests,
        "after_hours_bookings": digest.after_hours.bookings,
        "handoffs": digest.handoffs, "cost_usd": digest.cost_usd,
        "cost_per_booking_usd": digest.cost_per_booking_usd, "unpriced_replies": digest.unpriced_replies,
        "replies_by_day": list(digest.replies_by_day),
        "previous_replies_by_day": list(digest.previous_replies_by_day),
    }


def test_every_figure_of_the_week_equals_the_raw_rows(digest_data):
    digest = weekly_digest(digest_data, WEEK)

    want = expected()
    assert want["replies"] > 20 and want["conversations"] > 10 and want["bookings"] > 0  # the data says something
    assert want["after_hours_conversations"] > 0 and want["unpriced_replies"] > 0
    got = _figures(digest)
    for name in ("cost_usd", "cost_per_booking_usd"):
        assert got.pop(name) == pytest.approx(want.pop(name), rel=1e-9, abs=1e-12), name
    assert got == want
    assert digest.after_hours.hours_set


def test_the_previous_week_is_its_own_digest_s_week(digest_data):
    digest = weekly_digest(digest_data, PREVIOUS_WEEK)

    want = expected(monday=PREVIOUS_WEEK)
    assert digest.replies.current == want["replies"] == weekly_digest(digest_data, WEEK).replies.previous
    assert digest.conversations.current == want["conversations"]
    assert list(digest.replies_by_day) == want["replies_by_day"]


def test_a_week_runs_monday_to_monday_on_the_business_s_wall_clock_across_the_spring_change(db):
    filters = week_filters("harbor-dental", WEEK, TZ)

    assert filters.start == local(WEEK, 0) and filters.start.utcoffset() == timedelta(hours=-5)
    assert filters.end == local(WEEK + timedelta(days=7), 0) and filters.end.utcoffset() == timedelta(hours=-4)
    # Subtracting in one zone counts wall-clock time (7 days); in UTC it is the real length.
    assert filters.end.astimezone(UTC) - filters.start.astimezone(UTC) == timedelta(hours=167)


def test_the_digest_due_is_the_last_week_ended_in_the_business_s_zone():
    # Monday 04:30 UTC is still Sunday in New York: the week of 2 March has not ended there yet.
    monday_early = local(date(2026, 3, 9), 0) - timedelta(minutes=30)
    assert due_week(TZ, monday_early) == date(2026, 2, 23)
    assert due_week(TZ, local(date(2026, 3, 9), 0)) == WEEK
    assert due_week(TZ, NOW) == WEEK
    assert week_of(date(2026, 3, 8)) == WEEK and week_of(WEEK) == WEEK


def test_a_week_not_ended_or_before_any_event_has_no_digest():
    with pytest.raises(BadWeek, match="not ended"):
        check_week(date(2026, 3, 9), TZ, NOW)
    with pytest.raises(BadWeek, match="before 2000"):
        check_week(date(1999, 12, 27), TZ, NOW)
    check_week(WEEK, TZ, NOW)


def test_a_business_without_opening_hours_says_so_rather_than_counting_nothing(db, published_prices):
    from metrics_app.models import Business

    business = Business.objects.create(id="no-hours", time_zone="Europe/Berlin")

    digest = weekly_digest(business, WEEK)

    assert not digest.after_hours.hours_set
    assert digest.replies.current == 0 and digest.cost_per_booking_usd is None


def test_the_autumn_week_holds_the_repeated_hour_twice_and_its_169_hours(db, published_prices):
    from metrics_app.digests.selectors import week_filters as filters_of
    from tests.digests.helpers import load, make_business

    autumn = date(2026, 10, 26)  # clocks go back from 02:00 to 01:00 on Sunday 1 November
    business = make_business()
    first, second = local(date(2026, 11, 1), 1, 30), local(date(2026, 11, 1), 1, 30).replace(fold=1)
    moments = [local(autumn, 0), first, second, local(autumn + timedelta(days=7), 0) - timedelta(seconds=1),
               local(autumn + timedelta(days=7), 0), local(autumn, 0) - timedelta(seconds=1)]
    load([{"business_id": business.pk, "conversation_id": f"c{n}", "response_time_ms": 300, "tokens_used": 10,
           "event_id": f"00000000-0000-4000-8000-{n:012d}", "timestamp": moment.isoformat()}
          for n, moment in enumerate(moments)])

    digest = weekly_digest(business, autumn)

    window = filters_of(business.pk, autumn, TZ)
    assert window.end.astimezone(UTC) - window.start.astimezone(UTC) == timedelta(hours=169)
    assert second.astimezone(UTC) - first.astimezone(UTC) == timedelta(hours=1)
    want = expected(monday=autumn)
    assert want["replies"] == 4 and want["replies_by_day"] == [1, 0, 0, 0, 0, 0, 3]
    assert digest.replies.current == 4 and list(digest.replies_by_day) == want["replies_by_day"]
    assert digest.conversations.current == want["conversations"] == 4
    assert digest.replies.previous == 1
