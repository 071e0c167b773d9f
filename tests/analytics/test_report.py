"""manage.py metrics_report: the terminal report's figures, checked against the raw rows."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from metrics_app.models import AIMetric, Business

pytestmark = pytest.mark.django_db

# The report's period: the 7 UTC days 2026-01-04 .. 2026-01-10; the previous one: 2025-12-28 .. 2026-01-03.
PERIOD_START = datetime(2026, 1, 4, tzinfo=UTC)
PERIOD_END = datetime(2026, 1, 11, tzinfo=UTC)


def report(*args: str) -> str:
    out = io.StringIO()
    call_command("metrics_report", "--end", "2026-01-10", "--tz", "UTC", *args, stdout=out)
    return out.getvalue()


def row(output: str, label: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith(label))
    return re.split(r"\s{2,}", line[len(label):].strip())


@pytest.fixture
def history(store_event):
    Business.objects.create(id="acme-dental", name="Acme Dental", time_zone="Europe/London")
    Business.objects.create(id="bloom-florist", name="Bloom Florist", time_zone="UTC")
    day = lambda d, h=10: datetime(2026, 1, d, h, tzinfo=UTC)  # noqa: E731  (a one-line shorthand for the plan below)
    plan = [
        # business, conversation, day, latency, tokens, client cost, intent, flags
        ("acme-dental", "a1", day(5), 800, 400, 0.002, "pricing", {}),
        ("acme-dental", "a1", day(5, 11), 1200, 500, 0.003, "appointment_booking",
         {"appointment_requested": True, "appointment_booked": True}),
        ("acme-dental", "a2", day(8), 3000, 300, 0.001, "pricing", {"success_rate": 0.0, "response_type": "error"}),
        ("bloom-florist", "b1", day(9), 600, 200, 0.001, "opening_hours", {"human_handoff_requested": True}),
        ("bloom-florist", "b2", day(10, 23), 900, 250, 0.001, "pricing", {}),
        # The previous period, and one event after the period that must not count.
        ("acme-dental", "old", datetime(2025, 12, 30, 9, tzinfo=UTC), 700, 100, 0.001, "pricing", {}),
        ("acme-dental", "late", datetime(2026, 1, 11, 0, 30, tzinfo=UTC), 700, 100, 0.001, "pricing", {}),
    ]
    for business, conversation, moment, latency, tokens, cost, intent, flags in plan:
        store_event(business_id=business, conversation_id=conversation, timestamp=moment, response_time_ms=latency,
                    tokens_used=tokens, api_cost_usd=cost, intent_detected=intent, model_name="no-such-model", **flags)


def in_period(**filters):
    return AIMetric.objects.filter(timestamp__gte=PERIOD_START, timestamp__lt=PERIOD_END, **filters)


def test_the_summary_rows_equal_the_raw_rows(history):
    output = report()

    events = in_period()
    assert row(output, "AI replies (events)")[:2] == [str(events.count()), "1"]
    conversations = {(e.business_id, e.conversation_id) for e in events}
    assert row(output, "Conversations")[0] == str(len(conversations))
    failed = [e for e in events if e.success_rate == 0 or e.response_type == "error"]
    assert row(output, "Failed replies")[0] == f"{100 * len(failed) / events.count():.1f}%"
    assert row(output, "Tokens")[0] == f"{sum(e.tokens_used for e in events):,}"
    # An unpriced model: analytics use the client's cost.
    cost = sum(e.api_cost_usd for e in events)
    assert row(output, "Cost")[0] == f"${cost:.4f}"
    booked = {(e.business_id, e.conversation_id) for e in events if e.appointment_booked}
    assert row(output, "Conversations booked")[0] == str(len(booked))
    assert row(output, "Cost per booked appointment")[0] == f"${cost / len(booked):.4f}"
    assert row(output, "Events on unpriced models")[0] == str(events.count())


def test_the_change_against_the_previous_period_is_shown(history):
    output = report()

    now, before = in_period().count(), AIMetric.objects.filter(timestamp__lt=PERIOD_START).count()
    assert row(output, "AI replies (events)") == [str(now), str(before), f"{100 * (now - before) / before:+.1f}%"]
    assert output.strip().splitlines()[-1] == (
        f"{now} replies in 4 conversations, 1 booked, $0.0080 per booked appointment "
        f"({100 * (now - before) / before:+.1f}% change in replies)."
    )


def test_each_business_has_its_own_line(history):
    output = report()

    for business in ("acme-dental", "bloom-florist"):
        events = in_period(business_id=business)
        cells = row(output, business)
        assert cells[0] == str(events.count())
        assert cells[1] == str(events.values("conversation_id").distinct().count())
        assert cells[4] == f"${sum(e.api_cost_usd for e in events):.4f}"


def test_top_intents_are_counted_from_the_rows(history):
    output = report()
    intents = output.split("Top intents", 1)[1]

    total = in_period().count()
    for intent in ("pricing", "appointment_booking", "opening_hours"):
        count = in_period(intent_detected=intent).count()
        assert row(intents, intent)[:2] == [str(count), f"{100 * count / total:.1f}%"]
    names = [line.split()[0] for line in intents.strip().splitlines()[2:] if line and not line[0].isdigit()]
    assert names[0] == "pricing"


def test_a_report_for_one_business_leaves_the_others_out(history):
    output = report("--business", "bloom-florist")

    assert "for business bloom-florist" in output
    assert row(output, "AI replies (events)")[0] == str(in_period(business_id="bloom-florist").count())
    assert "acme-dental" not in output


def test_periods_are_local_days_of_the_chosen_zone(history):
    # 2026-01-10 23:00 UTC is already 2026-01-11 in Kathmandu: it leaves a period that ends on the 10th there.
    output = report("--tz", "Asia/Kathmandu")

    assert "(7 days, Asia/Kathmandu)" in output
    assert row(output, "AI replies (events)")[0] == str(in_period().count() - 1)


def test_an_empty_period_says_so_without_failing(db):
    output = report()

    assert row(output, "AI replies (events)")[:2] == ["0", "0"]
    assert "(no events)" in output


@pytest.mark.parametrize(
    "args, message",
    [
        (("--business", "nobody"), "no business 'nobody'"),
        (("--tz", "Mars/Olympus"), "not an IANA time zone"),
        (("--days", "0"), "between 1 and 366"),
        (("--end", "yesterday"), "a date such as"),
    ],
)
def test_bad_arguments_stop_with_a_clear_message(db, args, message):
    with pytest.raises(CommandError, match=message):
        report(*args)


def test_decimal_costs_are_summed_exactly(store_event):
    for _ in range(3):
        store_event(business_id="acme-dental", timestamp=datetime(2026, 1, 6, tzinfo=UTC), api_cost_usd=0.1,
                    model_name="no-such-model")

    assert row(report(), "Cost")[0] == f"${Decimal('0.3'):.4f}"
