"""Conversations, model prices and staff access in the staff console."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from metrics_app.models import AIMetric, Conversation, ModelPrice, StaffBusinessAccess

pytestmark = pytest.mark.django_db
CONVERSATIONS = reverse("admin:metrics_app_conversation_changelist")


@pytest.fixture
def chats(store_event):
    now = timezone.now()
    for turn, (latency, tokens, flags) in enumerate([
        (900, 300, {}),
        (1500, 500, {"appointment_requested": True, "response_type": "appointment_booking"}),
        (1200, 400, {"appointment_requested": True}),
    ]):
        store_event(business_id="acme-dental", conversation_id="c-acme", response_time_ms=latency,
                    tokens_used=tokens, api_cost_usd=0.001 * (turn + 1), timestamp=now - timedelta(minutes=10 - turn),
                    **flags)
    store_event(business_id="bloom-florist", conversation_id="c-bloom", timestamp=now - timedelta(minutes=3))
    return Conversation.objects.get(conversation_id="c-acme")


def cell(html: str, field: str, conversation_id: str) -> str:
    row = next(r for r in html.split("<tr") if f">{conversation_id}<" in r)
    return re.search(rf'class="field-{field}[^"]*">(.*?)</td>', row).group(1)


def test_conversations_list_their_figures_from_their_events(superuser, chats, logged_in):
    html = logged_in(superuser).get(CONVERSATIONS).content.decode()

    events = AIMetric.objects.filter(conversation_id="c-acme")
    assert cell(html, "turns", "c-acme") == str(events.count())
    assert cell(html, "tokens", "c-acme") == str(sum(e.tokens_used for e in events))
    expected_cost = sum((e.cost_usd or Decimal(0)) for e in events)
    assert cell(html, "cost", "c-acme") == f"{expected_cost:.6f}"
    assert cell(html, "mean_latency_ms", "c-acme") == f"{sum(e.response_time_ms for e in events) / 3:.0f}"
    assert 'alt="True"' in cell(html, "appointment_requested", "c-acme")
    assert 'alt="False"' in cell(html, "appointment_booked", "c-acme")


def test_a_conversation_page_lists_its_events_in_order(superuser, chats, logged_in):
    html = logged_in(superuser).get(reverse("admin:metrics_app_conversation_change", args=[chats.pk])).content.decode()

    table = html.split('class="mlops-events"', 1)[1].split("</table>", 1)[0]
    latencies = re.findall(r"<tr><td><a [^>]+>[^<]+</a></td>(?:<td>[^<]*</td>){3}<td>(\d+)</td>", table)
    assert latencies == ["900", "1500", "1200"]
    for event in AIMetric.objects.filter(conversation_id="c-acme"):
        assert reverse("admin:metrics_app_aimetric_change", args=[event.pk]) in table


def test_recording_a_booking_from_the_list_marks_the_conversation_booked(superuser, chats, logged_in):
    response = logged_in(superuser).post(
        CONVERSATIONS, {"action": "mark_booked", "_selected_action": [chats.pk]}, follow=True
    )

    assert "Recorded a booking for 1 conversation" in response.content.decode()
    chats.refresh_from_db()
    assert chats.appointment_booked
    assert AIMetric.objects.filter(conversation_id="c-acme", appointment_booked=True).count() == 1


def test_a_limited_staff_member_sees_only_their_conversations(staff_factory, chats, logged_in):
    limited = staff_factory("bloom-only", businesses=["bloom-florist"],
                            perms=("metrics_app.view_conversation", "metrics_app.change_conversation"))
    client = logged_in(limited)

    html = client.get(CONVERSATIONS).content.decode()
    assert ">c-bloom<" in html and ">c-acme<" not in html
    assert client.get(reverse("admin:metrics_app_conversation_change", args=[chats.pk])).status_code == 302
    client.post(CONVERSATIONS, {"action": "mark_booked", "_selected_action": [chats.pk]})
    chats.refresh_from_db()
    assert not chats.appointment_booked


def test_conversations_are_searched_by_exact_id(superuser, chats, logged_in):
    html = logged_in(superuser).get(CONVERSATIONS, {"q": "c-bloom"}).content.decode()

    assert ">c-bloom<" in html and ">c-acme<" not in html


def test_model_prices_show_their_source_and_date(superuser, logged_in):
    price = ModelPrice.objects.create(
        model_pattern="demo-model-x*", input_usd_per_mtok=Decimal("0.1"), output_usd_per_mtok=Decimal("0.4"),
        valid_from=timezone.now() - timedelta(days=1), source_url="https://example.com/pricing",
        source_as_of=timezone.now().date(),
    )
    html = logged_in(superuser).get(reverse("admin:metrics_app_modelprice_changelist"), {"q": "demo-model"}).content.decode()

    assert "demo-model-x*" in html
    assert 'href="https://example.com/pricing" rel="noopener noreferrer"' in html
    assert price.source_as_of.strftime("%b") in html


def test_only_superusers_grant_staff_access_to_businesses(staff_factory, superuser, chats, logged_in):
    limited = staff_factory(
        "acme-only", businesses=["acme-dental"],
        perms=("metrics_app.view_staffbusinessaccess", "metrics_app.add_staffbusinessaccess"),
    )
    add = reverse("admin:metrics_app_staffbusinessaccess_add")

    response = logged_in(limited).post(add, {"user": limited.pk, "business": "bloom-florist"})

    assert response.status_code == 403
    assert not StaffBusinessAccess.objects.filter(user=limited, business_id="bloom-florist").exists()
    assert logged_in(superuser).get(add).status_code == 200
