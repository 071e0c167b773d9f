"""manage.py generate_demo_data: realistic traffic, stored through the ingest path."""

from __future__ import annotations

import io
import zoneinfo
from collections import defaultdict

import pytest
from django.core.management import CommandError, call_command

from metrics_app.management.commands.generate_demo_data import BUSINESSES
from metrics_app.models import AIMetric, Business

pytestmark = pytest.mark.django_db


def generate(*args: str) -> str:
    out = io.StringIO()
    call_command("generate_demo_data", *args, "--no-progress", stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_it_stores_exactly_the_requested_number_of_events_and_says_so():
    output = generate("--events", "1234", "--seed", "7")

    assert AIMetric.objects.count() == 1234
    conversations = AIMetric.objects.values("business_id", "conversation_id").distinct().count()
    assert output.strip() == (
        f"Stored 1234 new events (0 duplicates) in {conversations} conversations for {len(BUSINESSES)} businesses "
        f"over the last 30 days in {output.split(' in ')[-1].strip()}"
    )


def test_it_creates_the_demo_businesses_with_names_and_time_zones():
    generate("--events", "300", "--seed", "1", "--businesses", "3")

    assert sorted(Business.objects.values_list("id", "name", "time_zone")) == sorted(
        (b.id, b.name, b.time_zone) for b in BUSINESSES[:3]
    )
    assert set(AIMetric.objects.values_list("business_id", flat=True)) <= {b.id for b in BUSINESSES[:3]}


def test_a_rerun_with_the_same_seed_stores_only_duplicates():
    generate("--events", "700", "--seed", "42")
    output = generate("--events", "700", "--seed", "42")

    assert AIMetric.objects.count() == 700
    assert output.startswith("Stored 0 new events (700 duplicates)")


def test_conversations_read_like_real_ones():
    generate("--events", "3000", "--seed", "3")
    by_conversation = defaultdict(list)
    for event in AIMetric.objects.order_by("timestamp", "id"):
        by_conversation[(event.business_id, event.conversation_id)].append(event)

    assert len(by_conversation) > 300
    for events in by_conversation.values():
        # One model and one session per conversation; a booking is never made before it was asked for.
        assert len({e.model_name for e in events}) == 1
        assert len({e.session_id for e in events}) == 1
        first_request = next((i for i, e in enumerate(events) if e.appointment_requested), None)
        for i, event in enumerate(events):
            if event.appointment_booked:
                assert first_request is not None and first_request <= i
    flags = AIMetric.objects.all()
    booked = flags.filter(appointment_booked=True).count()
    requested_conversations = flags.filter(appointment_requested=True).values("conversation_id").distinct().count()
    assert 0 < booked < requested_conversations
    assert 0 < flags.filter(human_handoff_requested=True).count() < 3000 * 0.1
    failures = flags.filter(success_rate=0)
    assert 0 < failures.count() < 3000 * 0.05
    assert set(failures.values_list("response_type", flat=True)) == {"error"}
    assert flags.values("intent_detected").distinct().count() >= 8
    assert flags.values("model_name").distinct().count() >= 3


def test_traffic_follows_each_business_local_day():
    generate("--events", "4000", "--seed", "11")
    day = night = 0
    for business_id, moment in AIMetric.objects.values_list("business_id", "timestamp"):
        zone = zoneinfo.ZoneInfo(Business.objects.get(id=business_id).time_zone)
        hour = moment.astimezone(zone).hour
        if 9 <= hour < 18:
            day += 1
        elif hour < 6:
            night += 1
    # Nine busy daytime hours carry far more traffic than six night hours.
    assert day > 8 * night


def test_latencies_and_tokens_are_in_plausible_ranges():
    generate("--events", "2000", "--seed", "5")
    latencies = sorted(AIMetric.objects.values_list("response_time_ms", flat=True))
    median = latencies[len(latencies) // 2]
    assert 500 <= median <= 2500
    assert latencies[-1] <= 120_000 * 3
    for event in AIMetric.objects.exclude(success_rate=0)[:500]:
        assert event.input_tokens + event.output_tokens == event.tokens_used
        assert event.output_tokens < event.input_tokens


@pytest.mark.parametrize("args", [("--events", "0"), ("--events", "-5"), ("--days", "0"), ("--businesses", "99")])
def test_it_refuses_bad_arguments_with_a_clear_message(args):
    with pytest.raises(CommandError, match="must be between"):
        generate(*args)
    assert AIMetric.objects.count() == 0


def test_a_seed_gives_the_same_event_ids_whatever_the_clock_says():
    from datetime import UTC, datetime

    from metrics_app.management.commands.generate_demo_data import demo_events

    def ids(end: datetime) -> list[tuple[str, str]]:
        return [(e["business_id"], e["event_id"]) for e in demo_events(500, days=30, seed=9, businesses=6, end=end)]

    assert ids(datetime(2026, 1, 1, 12, 0, tzinfo=UTC)) == ids(datetime(2026, 3, 9, 17, 31, 7, tzinfo=UTC))
    other_seed = [(e["business_id"], e["event_id"]) for e in demo_events(500, days=30, seed=10, businesses=6)]
    assert not set(other_seed) & set(ids(datetime(2026, 1, 1, tzinfo=UTC)))
