"""Cost options: every figure of /api/analytics/costs equals plain Decimal arithmetic over the raw rows and the prices."""

from __future__ import annotations

import fnmatch
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from metrics_app.models import AIMetric, Business, ModelPrice
from tests.conftest import store

START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 3, 8, tzinfo=UTC)
PERIOD = {"start": START.isoformat(), "end": END.isoformat()}
LONDON = ZoneInfo("Europe/London")
MILLION = Decimal(1_000_000)


def at(day: int, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def price_row(pattern: str, valid_from: datetime, pin: str, pout: str, cached: str | None = None,
              write: str | None = None) -> ModelPrice:
    return ModelPrice.objects.create(
        model_pattern=pattern, input_usd_per_mtok=Decimal(pin), output_usd_per_mtok=Decimal(pout),
        cached_input_usd_per_mtok=None if cached is None else Decimal(cached),
        cache_write_input_usd_per_mtok=None if write is None else Decimal(write),
        valid_from=valid_from, source_url="https://example.org/prices", source_as_of=valid_from.date(),
    )


@pytest.fixture
def traffic(db, published_prices) -> None:
    """Two priced models with cache reads, writes and reasoning, an unpriced one, one priced from mid-period,
    estimated events, prices that change inside and after the period, and another business beside it."""
    Business.objects.create(id="acme-dental", time_zone="Europe/London")
    Business.objects.create(id="other-clinic", time_zone="UTC")
    # A new haiku price from mid-period: events before it keep the old one, the what-ifs use the new one.
    price_row("claude-3-5-haiku*", at(4), "1.00", "5.00", cached="0.10", write="1.25")
    price_row("claude-3-5-haiku*", END + timedelta(days=1), "9.00", "9.00")  # not in force at the period's end
    price_row("in-house-llm", at(4), "0.50", "1.50")  # unpriced before the 4th, priced from it
    # Added later than the published row but older: the published one is the pattern's latest.
    price_row("gemini-2.5-flash*", datetime(2025, 1, 1, tzinfo=UTC), "7.00", "7.00")
    events: list[dict[str, Any]] = []
    for day in range(2, 7):
        for i in range(3):
            events.append(dict(
                model_name="claude-3-5-haiku-20241022", intent_detected="booking", timestamp=at(day, 9 + i),
                conversation_id=f"c-{day}-{i}", tokens_used=4000 + 100 * day + i, input_tokens=3500 + 100 * day + i,
                output_tokens=500, cache_read_input_tokens=1000 * (day % 3) + 10 * i,
                cache_write_input_tokens=200 if i == 0 else None, reasoning_output_tokens=120 + i,
            ))
        events.append(dict(
            model_name="gpt-4o-mini-2024-07-18", intent_detected="prices", timestamp=at(day, 15),
            conversation_id=f"g-{day}", tokens_used=2500 + day, input_tokens=2000 + day, output_tokens=500,
            cache_read_input_tokens=300 * day, reasoning_output_tokens=50,
        ))
        # One side sent with tokens_used: the other is derived by the pricing.
        events.append(dict(model_name="gpt-4o-mini", intent_detected="prices", timestamp=at(day, 16),
                           tokens_used=1800, input_tokens=1500))
        # tokens_used alone: estimated, at the input price.
        events.append(dict(model_name="gemini-1.5-flash-002", intent_detected=None, timestamp=at(day, 17),
                           tokens_used=900 + day))
        events.append(dict(model_name="local-llama", intent_detected="booking", timestamp=at(day, 18),
                           tokens_used=9000, input_tokens=8000, output_tokens=1000, api_cost_usd=0.01))
        events.append(dict(model_name="in-house-llm", intent_detected="hours", timestamp=at(day, 19),
                           tokens_used=3000, input_tokens=2600, output_tokens=400, cache_read_input_tokens=600,
                           api_cost_usd=0.002))
        events.append(dict(business_id="other-clinic", model_name="claude-3-5-haiku-20241022",
                           intent_detected="booking", timestamp=at(day, 10), tokens_used=7000, input_tokens=6000,
                           output_tokens=1000, cache_read_input_tokens=5000))
    events.append(dict(model_name="claude-3-5-haiku-20241022", intent_detected="booking", timestamp=END,
                       tokens_used=99000, input_tokens=90000, output_tokens=9000))  # after the period
    events.append(dict(model_name="gpt-4o-mini", intent_detected="booking", timestamp=START - timedelta(seconds=1),
                       tokens_used=99000, input_tokens=90000, output_tokens=9000))  # before it
    for event in events:
        store(**event)


@pytest.fixture
def agency(make_key) -> dict[str, str]:
    _, raw = make_key(None, can_ingest=False, can_read=True)
    return {"Authorization": f"Bearer {raw}"}


def get(api, headers: dict[str, str], **params: Any):
    return api.get("/api/analytics/costs", {**PERIOD, **params}, headers=headers)


# --- The independent computation: the raw rows, the price rows, and Decimal arithmetic.


def raw_rows(businesses: set[str] | None) -> list[AIMetric]:
    rows = AIMetric.objects.filter(timestamp__gte=START, timestamp__lt=END)
    return [row for row in rows if businesses is None or row.business_id in businesses]


def price_in_force(model_name: str | None, moment: datetime, prices: list[ModelPrice]) -> ModelPrice | None:
    if not model_name:
        return None
    name = model_name.lower()
    matching = [p for p in prices if fnmatch.fnmatchcase(name, p.model_pattern.lower()) and p.valid_from <= moment]
    if not matching:
        return None

    def rank(p: ModelPrice) -> tuple[int, int, datetime]:
        exact = not any(ch in p.model_pattern for ch in "*?[")
        return (int(exact), len(p.model_pattern), p.valid_from)

    return max(matching, key=rank)


def split(row: AIMetric) -> tuple[int, int] | None:
    """(input, output) as the pricing completes them from tokens_used; None without the split."""
    tokens_in, tokens_out = row.input_tokens, row.output_tokens
    if tokens_in is not None and tokens_out is None:
        tokens_out = row.tokens_used - tokens_in
    if tokens_out is not None and tokens_in is None:
        tokens_in = row.tokens_used - tokens_out
    return None if tokens_in is None or tokens_out is None else (tokens_in, tokens_out)


def cost_at(row: AIMetric, p: ModelPrice) -> Decimal:
    parts = split(row)
    if parts is None:
        return row.tokens_used * p.input_usd_per_mtok / MILLION
    tokens_in, tokens_out = parts
    read, write = row.cache_read_input_tokens or 0, row.cache_write_input_tokens or 0
    cached = p.cached_input_usd_per_mtok if p.cached_input_usd_per_mtok is not None else p.input_usd_per_mtok
    written = p.cache_write_input_usd_per_mtok if p.cache_write_input_usd_per_mtok is not None else p.input_usd_per_mtok
    return ((tokens_in - read - write) * p.input_usd_per_mtok + read * cached + write * written
            + tokens_out * p.output_usd_per_mtok) / MILLION


def priced_rows(rows: list[AIMetric], prices: list[ModelPrice]) -> list[tuple[AIMetric, ModelPrice]]:
    found = [(row, price_in_force(row.model_name, row.timestamp, prices)) for row in rows]
    return [(row, p) for row, p in found if p is not None]


def latest_rows_at_end(prices: list[ModelPrice]) -> list[ModelPrice]:
    latest: dict[str, ModelPrice] = {}
    for p in prices:
        if p.valid_from < END and (p.model_pattern.lower() not in latest
                                   or p.valid_from > latest[p.model_pattern.lower()].valid_from):
            latest[p.model_pattern.lower()] = p
    return list(latest.values())


def close(actual: float, expected: Decimal) -> bool:
    """Equal to float precision (SQLite sums decimal columns as floats)."""
    return actual == pytest.approx(float(expected), rel=1e-9, abs=1e-15)


# --- The figures.


def test_current_counts_and_sums_the_priced_tokens_and_says_what_is_left_out(api, agency, traffic):
    response = get(api, agency, business_id="acme-dental")
    assert response.status_code == 200, response.content
    current = response.json()["current"]
    rows = raw_rows({"acme-dental"})
    prices = list(ModelPrice.objects.all())
    priced = priced_rows(rows, prices)
    with_split = [(row, split(row)) for row, _ in priced if split(row) is not None]
    assert current["events"] == len(rows)
    assert current["priced_events"] == len(priced)
    # local-llama every day, in-house-llm on the 2nd and 3rd (its price begins on the 4th).
    assert current["unpriced_events"] == len(rows) - len(priced) == 5 + 2
    assert current["estimated_cost_events"] == sum(1 for row, _ in priced if split(row) is None) == 5
    assert current["cache_read_input_tokens"] == sum(row.cache_read_input_tokens or 0 for row, _ in with_split)
    assert current["cache_write_input_tokens"] == sum(row.cache_write_input_tokens or 0 for row, _ in with_split)
    assert current["fresh_input_tokens"] == sum(
        parts[0] - (row.cache_read_input_tokens or 0) - (row.cache_write_input_tokens or 0)
        for row, parts in with_split
    )
    assert current["output_tokens"] == sum(parts[1] for _, parts in with_split)
    assert current["reasoning_output_tokens"] == sum(row.reasoning_output_tokens or 0 for row, _ in priced) > 0
    assert current["estimated_tokens"] == sum(row.tokens_used for row, _ in priced if split(row) is None)
    assert close(current["priced_cost_usd"], sum((cost_at(row, p) for row, p in priced), Decimal(0)))
    unpriced = [row for row in rows if price_in_force(row.model_name, row.timestamp, prices) is None]
    assert close(current["cost_usd"], sum((cost_at(row, p) for row, p in priced), Decimal(0))
                 + sum((row.api_cost_usd or Decimal(0) for row in unpriced), Decimal(0)))
    assert "7 unpriced event(s)" in current["unpriced_note"]


def test_every_price_row_in_force_at_the_end_prices_the_same_tokens_cheapest_first(api, agency, traffic):
    body = get(api, agency, business_id="acme-dental").json()
    prices = list(ModelPrice.objects.all())
    priced = priced_rows(raw_rows({"acme-dental"}), prices)
    actual_cost = sum((cost_at(row, p) for row, p in priced), Decimal(0))
    expected = {p.id: sum((cost_at(row, p) for row, _ in priced), Decimal(0)) for p in latest_rows_at_end(prices)}
    options = body["models"]
    assert [o["price_id"] for o in options] == sorted(expected, key=lambda i: (expected[i], ModelPrice.objects.get(
        id=i).model_pattern.lower()))
    for option in options:
        assert close(option["cost_usd"], expected[option["price_id"]]), option["model_pattern"]
        assert close(option["difference_usd"], expected[option["price_id"]] - actual_cost)
    haiku = [o for o in options if o["model_pattern"] == "claude-3-5-haiku*"]
    assert len(haiku) == 1 and haiku[0]["input_usd_per_mtok"] == 1.0  # the row in force at the end, not later
    assert haiku[0]["in_use"] and haiku[0]["cache_write_usd_per_mtok"] == 1.25
    mini = next(o for o in options if o["model_pattern"] == "gpt-4o-mini*")
    assert mini["cache_write_priced_as_input"] and mini["cache_write_usd_per_mtok"] == mini["input_usd_per_mtok"]
    newest_flash = next(o for o in options if o["model_pattern"] == "gemini-2.5-flash*")
    assert newest_flash["valid_from"].startswith("2025-06-17") and not newest_flash["in_use"]
    assert "not a prediction" in body["models_basis"]


@pytest.mark.parametrize("tz", [None, "Pacific/Kiritimati"])  # the business's zone (UTC+0 in March), and UTC+14
def test_the_cached_share_and_what_larger_shares_would_save(api, agency, traffic, tz):
    params = {"tz": tz} if tz else {}
    cache = get(api, agency, business_id="acme-dental", **params).json()["cache"]
    zone = ZoneInfo(tz) if tz else LONDON
    prices = list(ModelPrice.objects.all())
    priced = [(row, split(row)) for row, _ in priced_rows(raw_rows({"acme-dental"}), prices)]
    with_split = [(row, parts) for row, parts in priced if parts is not None]
    read = sum(row.cache_read_input_tokens or 0 for row, _ in with_split)
    total_input = sum(parts[0] for _, parts in with_split)
    assert cache["input_tokens"] == total_input
    assert cache["cached_input_share"] == pytest.approx(read / total_input, rel=1e-12)
    assert close(cache["cache_savings_usd"], sum(
        (row.cache_savings_usd or Decimal(0) for row, _ in priced), Decimal(0)))
    assert cache["cache_savings_usd"] > 0
    by_model: dict[str, list[tuple[AIMetric, tuple[int, int]]]] = defaultdict(list)
    for row, parts in with_split:
        by_model[row.model_name].append((row, parts))
    assert sorted(m["model_name"] for m in cache["models"]) == sorted(by_model)
    step_totals: Counter[str] = Counter()
    for model in cache["models"]:
        events = by_model[model["model_name"]]
        p = latest_in_force_at_end(model["model_name"], prices)
        assert model["price_id"] == p.id
        model_input = sum(parts[0] for _, parts in events)
        model_read = sum(row.cache_read_input_tokens or 0 for row, _ in events)
        assert model["input_tokens"] == model_input and model["cache_read_input_tokens"] == model_read
        days: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
        for row, parts in events:
            day = days[row.timestamp.astimezone(zone).date()]
            day[0] += row.cache_read_input_tokens or 0
            day[1] += parts[0]
        best = max(Decimal(r) / i for r, i in days.values())
        assert model["best_day_cached_input_share"] == pytest.approx(float(best), rel=1e-12)
        cached_price = p.cached_input_usd_per_mtok if p.cached_input_usd_per_mtok is not None else p.input_usd_per_mtok
        targets = {"25%": Decimal("0.25"), "50%": Decimal("0.5"), "75%": Decimal("0.75"), "best day": best}
        assert [s["target"] for s in model["scenarios"]] == list(targets)
        for scenario in model["scenarios"]:
            extra = max(targets[scenario["target"]] * model_input - model_read, Decimal(0))
            saving = extra * (p.input_usd_per_mtok - cached_price) / MILLION
            assert scenario["extra_cached_tokens"] == pytest.approx(float(extra), rel=1e-12)
            assert close(scenario["savings_usd"], saving), (model["model_name"], scenario["target"])
            if scenario["target"] != "best day":
                step_totals[scenario["target"]] += saving  # type: ignore[assignment]
    assert any(s["savings_usd"] > 0 for m in cache["models"] for s in m["scenarios"])
    assert [s["target"] for s in cache["scenarios"]] == ["25%", "50%", "75%"]
    for scenario in cache["scenarios"]:
        assert close(scenario["savings_usd"], Decimal(step_totals[scenario["target"]]))
    assert "stable prefix" in cache["basis"]


def latest_in_force_at_end(model_name: str, prices: list[ModelPrice]) -> ModelPrice:
    found = price_in_force(model_name, END - timedelta(microseconds=1), prices)
    assert found is not None
    return found


def test_the_largest_replies_per_intent_come_from_the_raw_rows(api, agency, traffic):
    body = get(api, agency, business_id="acme-dental", replies_per_intent=2, intents=3).json()
    rows = raw_rows({"acme-dental"})
    counts = Counter(row.intent_detected for row in rows)
    intents = sorted(counts, key=lambda name: (-counts[name], name is not None, name or ""))[:3]
    assert [group["intent"] for group in body["top_replies"]] == intents
    for group in body["top_replies"]:
        assert group["events"] == counts[group["intent"]]
        mine = sorted((row for row in rows if row.intent_detected == group["intent"]),
                      key=lambda row: (-row.tokens_used, row.id))[:2]
        assert [r["event_id"] for r in group["replies"]] == [str(row.event_id) for row in mine]
        for reply, row in zip(group["replies"], mine, strict=True):
            assert reply["tokens"] == row.tokens_used
            assert reply["model_name"] == row.model_name
            assert reply["conversation_id"] == row.conversation_id
            assert datetime.fromisoformat(reply["timestamp"]) == row.timestamp
            assert reply["cost_usd"] == (None if row.cost_usd is None else pytest.approx(float(row.cost_usd)))


# --- Access and input.


def test_an_agency_key_sees_every_business_and_a_business_key_its_own(api, agency, make_key, traffic):
    everything = get(api, agency).json()
    assert everything["current"]["events"] == len(raw_rows(None))
    assert everything["period"]["business_ids"] is None
    other, raw = make_key(Business.objects.get(id="other-clinic"), can_ingest=False, can_read=True)
    own = get(api, {"Authorization": f"Bearer {raw}"}).json()
    assert own["current"]["events"] == len(raw_rows({"other-clinic"}))
    assert own["period"]["business_ids"] == ["other-clinic"]


def test_another_businesss_key_is_refused(api, make_key, traffic):
    _, raw = make_key(Business.objects.get(id="other-clinic"), can_ingest=False, can_read=True)
    response = get(api, {"Authorization": f"Bearer {raw}"}, business_id="acme-dental")
    assert response.status_code == 403
    assert set(response.json()) == {"error", "errors"}


def test_it_needs_credentials(api, traffic):
    assert get(api, {}).status_code == 401


@pytest.mark.parametrize(("params", "field"), [
    ({"start": END.isoformat(), "end": START.isoformat()}, "start"),
    ({"tz": "Mars/Olympus"}, "tz"),
    ({"replies_per_intent": "0"}, "replies_per_intent"),
    ({"intents": "51"}, "intents"),
    ({"end": "yesterday"}, "end"),
])
def test_bad_input_is_a_400_in_the_error_shape(api, agency, db, params, field):
    response = get(api, agency, **params)
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_an_empty_period_answers_zeros_and_every_price(api, agency, db, published_prices):
    body = get(api, agency).json()
    assert body["current"]["events"] == 0 and body["current"]["unpriced_note"] is None
    assert body["cache"]["cached_input_share"] is None and body["cache"]["models"] == []
    assert body["top_replies"] == []
    assert {o["cost_usd"] for o in body["models"]} == {0.0}
    assert len(body["models"]) == ModelPrice.objects.values("model_pattern").distinct().count()
