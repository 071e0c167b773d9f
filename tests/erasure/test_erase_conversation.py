"""Erasing a conversation: gone from every table and every figure, the rest as it was, and a record of who did it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from metrics_app.erasure import services as erasure
from metrics_app.folding import services as folding
from metrics_app.models import (
    AIMetric,
    Conversation,
    ConversationRollup,
    ErasureRecord,
    EventRollup,
    LatencySketch,
    conversation_digest,
)
from tests.analytics.helpers import make_events, store
from tests.helpers import assert_stored_nowhere, fold_all

pytestmark = pytest.mark.django_db

SUMS = ("events", "errors", "success_sum", "latency_sum", "latency_n", "tokens", "cost", "cache_savings",
        "client_cost", "unpriced", "estimated", "requested", "booked", "handoffs", "sentiment_sum", "sentiment_n")


def rollups() -> dict[str, set[tuple[Any, ...]]]:
    """Every rollup row as plain values, keyed by table: what two states must share to answer alike."""
    return {
        "events": set(EventRollup.objects.values_list("business_id", "dimension", "value", "bucket", *SUMS)),
        "conversations": set(ConversationRollup.objects.values_list(
            "business_id", "dimension", "value", "bucket", "started", "requested", "booked", "handoffs")),
        "sketches": {(b, d, v, s, t, bytes(bins)) for b, d, v, s, t, bins in LatencySketch.objects.values_list(
            "business_id", "dimension", "value", "span_minutes", "bucket", "bins")},
    }


def of_business(state: dict[str, set[tuple[Any, ...]]], business_id: str) -> dict[str, set[tuple[Any, ...]]]:
    return {table: {row for row in rows if row[0] == business_id} for table, rows in state.items()}


@pytest.fixture
def traffic(db) -> list[dict[str, Any]]:
    payloads = make_events(seed=11, conversations=80)
    store(payloads)
    return payloads


def victim(payloads: list[dict[str, Any]]) -> tuple[str, str]:
    """The busiest conversation: the most slices and buckets to take out."""
    counts: dict[tuple[str, str], int] = {}
    for payload in payloads:
        if not payload.get("conversation_id"):
            continue
        key = (payload["business_id"], payload["conversation_id"])
        counts[key] = counts.get(key, 0) + 1
    return max(counts, key=lambda key: (counts[key], key))


@pytest.mark.parametrize("folded", ["all", "half"])
def test_the_figures_after_an_erasure_are_those_of_the_events_left(traffic, superuser, folded):
    business_id, conversation_id = victim(traffic)
    if folded == "all":
        fold_all()
    else:  # some of its events folded, the others still waiting for the folder
        ids = sorted(AIMetric.objects.filter(conversation_id=conversation_id).values_list("id", flat=True))
        folding.fold_pending(until=ids[len(ids) // 2])
    others_before = {b: of_business(rollups(), b) for b in
                     set(AIMetric.objects.exclude(business_id=business_id).values_list("business_id", flat=True))}
    done = erasure.erase_conversation(superuser, business_id, conversation_id, reason="the customer asked")
    fold_all()
    after = rollups()
    # Independently: the rollups rebuilt from the raw rows that are left.
    folding.rebuild()
    assert after == rollups()
    assert done.events == sum(p.get("conversation_id") == conversation_id for p in traffic) > 1
    assert not AIMetric.objects.filter(conversation_id=conversation_id).exists()
    assert not Conversation.objects.filter(conversation_id=conversation_id).exists()
    assert_stored_nowhere(f"'{conversation_id}'")  # quoted: the id as a whole value, not a part of another
    # Every other business's rows are as they were.
    assert {b: of_business(after, b) for b in others_before} == others_before


def test_the_record_says_who_erased_what_and_when_without_the_id(traffic, superuser):
    fold_all()
    business_id, conversation_id = victim(traffic)
    erasure.erase_conversation(superuser, business_id, conversation_id, reason="the customer asked")
    (record,) = ErasureRecord.objects.all()
    assert (record.kind, record.business_id, record.erased_by, record.erased_by_name, record.conversations,
            record.reason) == ("conversation", business_id, superuser, "boss", 1, "the customer asked")
    assert record.conversation_digest == conversation_digest(business_id, conversation_id)
    assert record.events == sum(p.get("conversation_id") == conversation_id for p in traffic)


def test_only_someone_who_may_write_for_the_business_erases_its_conversations(traffic, staff_factory):
    fold_all()
    business_id, conversation_id = victim(traffic)
    other = next(b for b in AIMetric.objects.values_list("business_id", flat=True) if b != business_id)
    stranger = staff_factory("stranger", businesses=[other])
    with pytest.raises(erasure.ErasureRefused):
        erasure.erase_conversation(stranger, business_id, conversation_id)
    with pytest.raises(erasure.ErasureRefused):
        erasure.erase_conversation(staff_factory("owner", businesses=[business_id]), business_id, "no-such-chat")
    assert AIMetric.objects.filter(conversation_id=conversation_id).exists()
    assert not ErasureRecord.objects.exists()


def _action(client: Client, pks: list[int], **extra: str) -> Any:
    return client.post("/admin/metrics_app/conversation/",
                       {"action": "erase_selected", "_selected_action": [str(pk) for pk in pks], **extra})


def test_the_admin_asks_first_then_erases_and_offers_the_action_only_to_those_allowed(
    traffic, staff_factory, logged_in: Callable[..., Client]
):
    fold_all()
    business_id, conversation_id = victim(traffic)
    pk = Conversation.objects.get(business_id=business_id, conversation_id=conversation_id).pk
    eraser = logged_in(staff_factory("eraser", businesses=[business_id], perms=(
        "metrics_app.view_conversation", "metrics_app.change_conversation", "metrics_app.add_erasurerecord")))
    asked = _action(eraser, [pk])
    assert asked.status_code == 200 and "Erase them everywhere" in asked.content.decode()
    assert AIMetric.objects.filter(conversation_id=conversation_id).exists()
    done = _action(eraser, [pk], confirmed="yes", reason="asked by phone")
    assert done.status_code == 302
    assert not AIMetric.objects.filter(conversation_id=conversation_id).exists()
    assert ErasureRecord.objects.get().reason == "asked by phone"
    # Without the permission the action is not there.
    viewer = logged_in(staff_factory("viewer", businesses=[business_id]))
    page = viewer.get("/admin/metrics_app/conversation/")
    assert page.status_code == 200 and "erase_selected" not in page.content.decode()
