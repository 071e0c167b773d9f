"""Costs: priced by the server from tokens with the price in force, unpriced models never priced at zero."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command

from metrics_app.ingest import services
from metrics_app.ingest.validation import check_event
from metrics_app.models import AIMetric, CostBasis, ModelPrice

WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def ingest(**fields) -> AIMetric:
    payload = {"business_id": "price-test", "response_time_ms": 800, "tokens_used": 1000,
               "timestamp": WHEN.isoformat(), **fields}
    checked = check_event(payload)
    assert checked.ok, checked.errors
    (outcome,) = services.record_events([checked.values])
    return AIMetric.objects.get(event_id=outcome.event_id)


def per_million(tokens: int, price: str) -> Decimal:
    return Decimal(tokens) * Decimal(price) / Decimal(1_000_000)


def test_the_published_prices_ship_with_their_source_and_date(db):
    flash = ModelPrice.objects.get(model_pattern="gemini-1.5-flash*")
    assert flash.input_usd_per_mtok == Decimal("0.075")
    assert flash.output_usd_per_mtok == Decimal("0.30")
    for price in ModelPrice.objects.all():
        assert price.source_url.startswith("https://")
        assert price.source_as_of is not None


def test_input_and_output_tokens_are_priced_apart(db):
    event = ingest(model_name="gemini-1.5-flash", input_tokens=700, output_tokens=300, api_cost_usd=0.5)
    assert event.cost_basis == CostBasis.TOKENS
    assert event.cost_usd == per_million(700, "0.075") + per_million(300, "0.30")
    assert event.api_cost_usd == Decimal("0.5")  # the client's figure is kept beside it


def test_one_side_of_the_split_is_completed_from_tokens_used(db):
    event = ingest(model_name="gpt-4o-mini", input_tokens=900)
    assert event.cost_basis == CostBasis.TOKENS
    assert event.cost_usd == per_million(900, "0.15") + per_million(100, "0.60")


def test_bare_tokens_used_is_priced_at_the_input_price_and_marked_estimated(db):
    event = ingest(model_name="Gemini-1.5-Flash-002")
    assert event.cost_basis == CostBasis.ESTIMATED
    assert event.cost_usd == per_million(1000, "0.075")


def test_the_most_specific_pattern_wins(db):
    mini = ingest(model_name="gpt-4o-mini-2024-07-18", input_tokens=1000, output_tokens=0)
    full = ingest(model_name="gpt-4o-2024-08-06", input_tokens=1000, output_tokens=0)
    assert mini.cost_usd == per_million(1000, "0.15")
    assert full.cost_usd == per_million(1000, "2.50")


@pytest.mark.parametrize("model", ["in-house-llm", None])
def test_an_unpriced_model_keeps_the_clients_cost_and_is_counted_as_unpriced(db, model):
    with_cost = ingest(model_name=model, api_cost_usd=0.0042)
    assert with_cost.cost_basis == CostBasis.UNPRICED_CLIENT
    assert with_cost.cost_usd == Decimal("0.0042")
    without = ingest(model_name=model)
    assert without.cost_basis == CostBasis.UNPRICED_NONE
    assert without.cost_usd is None


def test_the_price_in_force_at_the_event_time_applies(db):
    ModelPrice.objects.create(
        model_pattern="gemini-1.5-flash*", input_usd_per_mtok=Decimal("1"), output_usd_per_mtok=Decimal("2"),
        valid_from=WHEN, source_url="https://example.org/prices", source_as_of=WHEN.date(),
    )
    before = ingest(model_name="gemini-1.5-flash", input_tokens=1000, output_tokens=1000,
                    timestamp=(WHEN - timedelta(seconds=1)).isoformat())
    at = ingest(model_name="gemini-1.5-flash", input_tokens=1000, output_tokens=1000)
    assert before.cost_usd == per_million(1000, "0.075") + per_million(1000, "0.30")
    assert at.cost_usd == per_million(1000, "1") + per_million(1000, "2")


def test_a_new_price_applies_to_the_next_ingest_and_reprice_fixes_older_events(db):
    old = ingest(model_name="acme-receptionist-1", input_tokens=2000, output_tokens=500, api_cost_usd=0.01)
    assert old.cost_basis == CostBasis.UNPRICED_CLIENT
    ModelPrice.objects.create(
        model_pattern="acme-receptionist-*", input_usd_per_mtok=Decimal("0.5"), output_usd_per_mtok=Decimal("1.5"),
        valid_from=WHEN - timedelta(days=30), source_url="https://example.org/acme", source_as_of=WHEN.date(),
    )
    new = ingest(model_name="acme-receptionist-1", input_tokens=2000, output_tokens=500)
    expected = per_million(2000, "0.5") + per_million(500, "1.5")
    assert new.cost_usd == expected
    other = ingest(model_name="in-house-llm", api_cost_usd=0.003)

    out = StringIO()
    call_command("reprice_events", "--model", "acme-receptionist-*", "--quiet-progress", stdout=out)
    assert "Repriced 1 of 2 events" in out.getvalue()
    old.refresh_from_db()
    other.refresh_from_db()
    assert (old.cost_usd, old.cost_basis) == (expected, CostBasis.TOKENS)
    assert (other.cost_usd, other.cost_basis) == (Decimal("0.003"), CostBasis.UNPRICED_CLIENT)


def test_a_corrected_price_reprices_every_affected_event(db):
    events = [ingest(model_name="gemini-2.0-flash", input_tokens=1000, output_tokens=1000) for _ in range(3)]
    price = ModelPrice.objects.get(model_pattern="gemini-2.0-flash*")
    price.output_usd_per_mtok = Decimal("0.80")
    price.save()
    call_command("reprice_events", "--quiet-progress", stdout=StringIO())
    for event in events:
        event.refresh_from_db()
        assert event.cost_usd == per_million(1000, "0.10") + per_million(1000, "0.80")


def test_reprice_refuses_a_bad_date(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--since"):
        call_command("reprice_events", "--since", "last tuesday", stdout=StringIO())


def test_cache_reads_and_writes_are_priced_at_their_own_rates(db):
    # An Anthropic reply: 200 fresh prompt tokens, 3,000 read from the cache, 1,000 written to it.
    event = ingest(model_name="claude-3-5-haiku-20241022", tokens_used=4400, input_tokens=4200, output_tokens=200,
                   cache_read_input_tokens=3000, cache_write_input_tokens=1000, reasoning_output_tokens=50)
    assert event.cost_basis == CostBasis.TOKENS
    assert event.cost_usd == (per_million(200, "0.80") + per_million(3000, "0.08") + per_million(1000, "1.00")
                              + per_million(200, "4.00"))
    # Reads saved 0.72 per million each; writes cost 0.20 per million more than fresh input.
    assert event.cache_savings_usd == per_million(3000, "0.72") - per_million(1000, "0.20")
    assert (event.cache_read_input_tokens, event.cache_write_input_tokens, event.reasoning_output_tokens) == (
        3000, 1000, 50)


def test_a_price_without_a_cache_price_prices_cached_tokens_as_input(db):
    # gemini-2.0-flash-lite publishes no cached price: its cached tokens cost what input costs, and save nothing.
    event = ingest(model_name="gemini-2.0-flash-lite", tokens_used=1000, input_tokens=800, output_tokens=200,
                   cache_read_input_tokens=600)
    assert event.cost_usd == per_million(800, "0.075") + per_million(200, "0.30")
    assert event.cache_savings_usd == 0


def test_openai_cached_tokens_are_a_part_of_the_input_not_extra(db):
    event = ingest(model_name="gpt-4o-mini", tokens_used=1300, input_tokens=1200, output_tokens=100,
                   cache_read_input_tokens=1024)
    assert event.cost_usd == per_million(176, "0.15") + per_million(1024, "0.075") + per_million(100, "0.60")
    assert event.cache_savings_usd == per_million(1024, "0.075")


def test_an_event_without_cached_tokens_or_a_price_has_no_cache_savings(db):
    assert ingest(model_name="gpt-4o-mini", input_tokens=900).cache_savings_usd is None
    assert ingest(model_name="in-house-llm", input_tokens=900, cache_read_input_tokens=500).cache_savings_usd is None


def test_a_new_cache_price_reprices_the_cost_and_the_savings_in_the_summary(superuser, logged_in):
    from tests.helpers import fold_all

    events = [ingest(model_name="gemini-2.0-flash-lite", tokens_used=1000, input_tokens=800, output_tokens=200,
                     cache_read_input_tokens=600) for _ in range(2)]
    fold_all()
    price = ModelPrice.objects.get(model_pattern="gemini-2.0-flash-lite*")
    price.cached_input_usd_per_mtok = Decimal("0.0200")
    price.save()
    call_command("reprice_events", "--quiet-progress", stdout=StringIO())
    saved = per_million(600, "0.055")
    for event in events:
        event.refresh_from_db()
        assert event.cache_savings_usd == saved
        assert event.cost_usd == per_million(200, "0.075") + per_million(600, "0.02") + per_million(200, "0.30")
    summary = logged_in(superuser).get("/api/analytics/summary", {
        "business_id": "price-test", "start": (WHEN - timedelta(hours=1)).isoformat(),
        "end": (WHEN + timedelta(hours=1)).isoformat(),
    }).json()["summary"]
    assert summary["cache_savings_usd"] == pytest.approx(float(2 * saved))
    assert summary["cache_read_input_tokens"] == 1200
    assert summary["cached_input_share"] == pytest.approx(1200 / 1600)
