"""Cost options: what a business's own token mix cost, would cost at the other prices, and would save with more caching.

Every figure is the price of the period's tokens under the price table, not
a forecast (docs/analytics.md, "Cost options"):

- `current`: the period's events, the priced ones' tokens by rate and their cost.
- `models`: the priced events' same tokens at every price row in force at the
  period's end (the latest row of each pattern), each part at that row's rate.
- `cache`: the share of input read from the cache, and what reading a larger
  share at the cached-input price instead of the input price would have saved.
- `top_replies`: per intent, the replies with the most tokens.

The sums come from the raw rows, grouped by model, cost basis, which side of
the input/output split was sent, and local day: one scan of the business +
timestamp index. The rollups hold the same token sums per model, but neither
apart for the priced and unpriced events of one model (a model whose price
begins inside the period has both) nor with the side that the pricing derives
from `tokens_used`, so they cannot give the priced tokens exactly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import BooleanField, Count, ExpressionWrapper, F, Q, Sum, Window
from django.db.models.functions import RowNumber, TruncDate

from metrics_app import database
from metrics_app.analytics.selectors import Filters, events_in
from metrics_app.models import ModelPrice
from metrics_app.pricing.services import MILLION, Price, PriceTable, TokenParts, table_from, token_parts
from metrics_app.replica import reading
from metrics_app.rules import UNPRICED_BASES, CostBasis

# The cached shares the what-ifs try, besides the business's own best day.
CACHE_STEPS = (Decimal("0.25"), Decimal("0.50"), Decimal("0.75"))
TOP_REPLIES_PER_INTENT = 5
TOP_INTENTS = 10

MODELS_BASIS = (
    "Same tokens: each price row's rates applied to the period's priced tokens (fresh input, cache reads, cache "
    "writes, output with reasoning, and tokens_used of estimated events at the input price). Cache reads and "
    "writes cost the row's cached-input and cache-write prices where it has them, else its input price. A "
    "different model would answer with different token counts and quality: this is the price of the tokens, "
    "not a prediction."
)
CACHE_BASIS = (
    "A larger cached share moves that many input tokens from the input price to the model's cached-input price "
    "(the model's price row in force at the period's end); a model without a cached-input price saves nothing. "
    "The cache writes that would fill the cache are not counted. A prompt's cacheable part is at most its stable "
    "prefix (system prompt and knowledge base), and the service cannot know how much of the prompt is stable, so "
    "a step above that part cannot be reached. Events sent without the input/output split have no cached part "
    "and are left out."
)
TOP_REPLIES_BASIS = (
    f"Per intent (the {TOP_INTENTS} with the most events), the replies with the most tokens_used; "
    "cost is the event's analytics cost."
)


@dataclass
class _ModelSums:
    """The priced events of one model name in the period."""

    parts: TokenParts = field(default_factory=TokenParts)
    cost: Decimal = Decimal(0)
    cache_savings: Decimal = Decimal(0)
    reasoning: int = 0
    days: dict[date, TokenParts] = field(default_factory=lambda: defaultdict(TokenParts))


@dataclass
class _PeriodSums:
    events: int = 0
    unpriced: int = 0
    cost: Decimal = Decimal(0)
    models: dict[str, _ModelSums] = field(default_factory=lambda: defaultdict(_ModelSums))


def _decimal(value: Any) -> Decimal:
    # SQLite sums decimal columns as floats; repr keeps the digits it has.
    if value is None:
        return Decimal(0)
    return value if isinstance(value, Decimal) else Decimal(repr(value))


def _group_parts(row: Mapping[str, Any]) -> TokenParts:
    """The token parts of a group of events priced alike, from their column sums.

    A group holds one cost basis and one pattern of sent sides, so a side the
    pricing derived from tokens_used for each event derives the same way from
    the sums. Estimated events are all their tokens_used at the input price.
    """
    if row["cost_basis"] == CostBasis.ESTIMATED:
        return TokenParts(estimated=int(row["tokens_used"] or 0), estimated_events=row["events"])
    return token_parts({
        "tokens_used": int(row["tokens_used"] or 0),
        "input_tokens": None if row["no_input"] else int(row["input_tokens"] or 0),
        "output_tokens": None if row["no_output"] else int(row["output_tokens"] or 0),
        "cache_read_input_tokens": int(row["cache_read"] or 0),
        "cache_write_input_tokens": int(row["cache_write"] or 0),
    })


def _is_null(column: str) -> ExpressionWrapper:
    return ExpressionWrapper(Q(**{f"{column}__isnull": True}), output_field=BooleanField())


def _period_sums(filters: Filters) -> _PeriodSums:
    rows = (
        events_in(filters)
        .annotate(day=TruncDate("timestamp", tzinfo=filters.tz), no_input=_is_null("input_tokens"),
                  no_output=_is_null("output_tokens"))
        .values("model_name", "cost_basis", "no_input", "no_output", "day")
        .annotate(
            events=Count("id"), tokens_used=Sum("tokens_used"), input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"), cache_read=Sum("cache_read_input_tokens"),
            cache_write=Sum("cache_write_input_tokens"), reasoning=Sum("reasoning_output_tokens"),
            cost=Sum("cost_usd"), cache_savings=Sum("cache_savings_usd"),
        )
        .order_by()
    )
    sums = _PeriodSums()
    for row in rows:
        sums.events += row["events"]
        sums.cost += _decimal(row["cost"])
        if row["cost_basis"] in UNPRICED_BASES:
            sums.unpriced += row["events"]
            continue
        model = sums.models[row["model_name"] or ""]
        parts = _group_parts(row)
        model.parts += parts
        model.days[row["day"]] += parts
        model.cost += _decimal(row["cost"])
        model.cache_savings += _decimal(row["cache_savings"])
        model.reasoning += int(row["reasoning"] or 0)
    return sums


def _prices_at(moment: datetime) -> list[Price]:
    """The latest row of each pattern in force at `moment`."""
    latest: dict[str, Price] = {}
    for price in table_from(ModelPrice.objects.filter(valid_from__lte=moment)).prices:
        if price.pattern not in latest or price.valid_from > latest[price.pattern].valid_from:
            latest[price.pattern] = price
    return list(latest.values())


def _usd(value: Decimal) -> float:
    return float(value)


def _rates(price: Price) -> dict[str, Any]:
    return {
        "price_id": price.id,
        "model_pattern": price.pattern,
        "valid_from": price.valid_from.isoformat(),
        "input_usd_per_mtok": float(price.input_per_mtok),
        "output_usd_per_mtok": float(price.output_per_mtok),
        "cache_read_usd_per_mtok": float(price.cache_read_per_mtok),
        "cache_write_usd_per_mtok": float(price.cache_write_rate_per_mtok),
        "cache_read_priced_as_input": price.cached_input_per_mtok is None,
        "cache_write_priced_as_input": price.cache_write_per_mtok is None,
    }


def _current(sums: _PeriodSums, total: TokenParts, priced_cost: Decimal) -> dict[str, Any]:
    priced_events = sums.events - sums.unpriced
    return {
        "events": sums.events,
        "priced_events": priced_events,
        "unpriced_events": sums.unpriced,
        "estimated_cost_events": total.estimated_events,
        "fresh_input_tokens": total.fresh_input,
        "cache_read_input_tokens": total.cache_read,
        "cache_write_input_tokens": total.cache_write,
        "output_tokens": total.output,
        "reasoning_output_tokens": sum(model.reasoning for model in sums.models.values()),
        "estimated_tokens": total.estimated,
        "cost_usd": _usd(sums.cost),
        "priced_cost_usd": _usd(priced_cost),
        "unpriced_note": (
            f"{sums.unpriced} unpriced event(s) (no price in force for their model) are left out of every "
            "what-if; cost_usd includes the client's figures for them" if sums.unpriced else None
        ),
    }


def _models(prices: list[Price], total: TokenParts, priced_cost: Decimal, in_use: set[int]) -> list[dict[str, Any]]:
    options = []
    for price in prices:
        cost = total.cost(price)
        options.append({
            **_rates(price),
            "in_use": price.id in in_use,
            "cost_usd": cost,
            "difference_usd": cost - priced_cost,
        })
    options.sort(key=lambda option: (option["cost_usd"], option["model_pattern"]))
    for option in options:
        option["cost_usd"] = _usd(option["cost_usd"])
        option["difference_usd"] = _usd(option["difference_usd"])
    return options


def _share(parts: TokenParts) -> Decimal | None:
    return Decimal(parts.cache_read) / parts.split_input if parts.split_input else None


def _ratio(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _saving(parts: TokenParts, price: Price, target: Decimal) -> tuple[Decimal, Decimal]:
    """(extra cached tokens, their saving) when the cached share of `parts` rises to `target`."""
    extra = max(target * parts.split_input - parts.cache_read, Decimal(0))
    return extra, extra * (price.input_per_mtok - price.cache_read_per_mtok) / MILLION


def _cache(sums: _PeriodSums, table: PriceTable, at: datetime, total: TokenParts) -> dict[str, Any]:
    step_totals = {step: Decimal(0) for step in CACHE_STEPS}
    models = []
    for name in sorted(sums.models):
        model = sums.models[name]
        price = table.price_for(name, at)
        if price is None or not model.parts.split_input:
            continue
        best = max((s for s in map(_share, model.days.values()) if s is not None), default=None)
        scenarios = []
        targets = [(f"{int(step * 100)}%", step) for step in CACHE_STEPS]
        if best is not None:
            targets.append(("best day", best))
        for step in CACHE_STEPS:
            step_totals[step] += _saving(model.parts, price, step)[1]
        for label, target in targets:
            extra, saving = _saving(model.parts, price, target)
            scenarios.append({"target": label, "cached_share": float(target), "extra_cached_tokens": float(extra),
                              "savings_usd": _usd(saving)})
        models.append({
            "model_name": name or None,
            **_rates(price),
            "input_tokens": model.parts.split_input,
            "cache_read_input_tokens": model.parts.cache_read,
            "cached_input_share": _ratio(_share(model.parts)),
            "best_day_cached_input_share": _ratio(best),
            "cache_savings_usd": _usd(model.cache_savings),
            "scenarios": scenarios,
        })
    return {
        "input_tokens": total.split_input,
        "cache_read_input_tokens": total.cache_read,
        "cached_input_share": _ratio(_share(total)),
        "cache_savings_usd": _usd(sum((model.cache_savings for model in sums.models.values()), Decimal(0))),
        "scenarios": [{"target": f"{int(step * 100)}%", "cached_share": float(step),
                       "savings_usd": _usd(saving)} for step, saving in step_totals.items()],
        "models": models,
        "basis": CACHE_BASIS,
    }


def top_replies(filters: Filters, per_intent: int = TOP_REPLIES_PER_INTENT,
                intents: int = TOP_INTENTS) -> list[dict[str, Any]]:
    """Per intent (the most events first, at most `intents`), its `per_intent` replies with the most tokens.

    Two reads of the period's rows through the business + timestamp index: the
    intents' event counts, then one ranking window over those intents' events.
    """
    events = events_in(filters)
    chosen = list(
        events.values("intent_detected").annotate(n=Count("id"))
        .order_by("-n", F("intent_detected").asc(nulls_first=True))
        .values_list("intent_detected", "n")[:intents]
    )
    if not chosen:
        return []
    names = [name for name, _ in chosen if name is not None]
    in_chosen = Q(intent_detected__in=names)
    if len(names) < len(chosen):
        in_chosen |= Q(intent_detected__isnull=True)
    ranked = (
        events.filter(in_chosen)
        .annotate(rank=Window(RowNumber(), partition_by=[F("intent_detected")],
                              order_by=[F("tokens_used").desc(), F("id").asc()]))
        .filter(rank__lte=per_intent)
        .values("intent_detected", "rank", "event_id", "business_id", "conversation_id", "timestamp", "tokens_used",
                "input_tokens", "output_tokens", "cache_read_input_tokens", "model_name", "cost_usd")
    )
    replies: dict[str | None, list[Mapping[str, Any]]] = defaultdict(list)
    for row in ranked:
        replies[row["intent_detected"]].append(row)
    result = []
    for name, count in chosen:
        rows = sorted(replies[name], key=lambda row: row["rank"])
        result.append({
            "intent": name,
            "events": count,
            "replies": [{
                "event_id": str(row["event_id"]),
                "business_id": row["business_id"],
                "conversation_id": row["conversation_id"],
                "timestamp": row["timestamp"].isoformat(),
                "tokens": row["tokens_used"],
                "input_tokens": row["input_tokens"],
                "output_tokens": row["output_tokens"],
                "cache_read_input_tokens": row["cache_read_input_tokens"],
                "model_name": row["model_name"],
                "cost_usd": None if row["cost_usd"] is None else float(row["cost_usd"]),
            } for row in rows],
        })
    return result


def cost_options(filters: Filters, per_intent: int = TOP_REPLIES_PER_INTENT,
                 intents: int = TOP_INTENTS) -> dict[str, Any]:
    """The period's costs, their what-ifs at the other prices and with more caching, and the largest replies."""
    with database.snapshot(reading()):
        sums = _period_sums(filters)
        # The last moment of the period: its end is exclusive.
        at = filters.end - timedelta(microseconds=1)
        prices = _prices_at(at)
        table = PriceTable(prices)
        replies = top_replies(filters, per_intent, intents)
    total = sum((model.parts for model in sums.models.values()), TokenParts())
    priced_cost = sum((model.cost for model in sums.models.values()), Decimal(0))
    in_use = {price.id for name in sums.models if (price := table.price_for(name, at)) is not None}
    return {
        "current": _current(sums, total, priced_cost),
        "models": _models(prices, total, priced_cost, in_use),
        "models_basis": MODELS_BASIS,
        "cache": _cache(sums, table, at, total),
        "top_replies": replies,
        "top_replies_basis": TOP_REPLIES_BASIS,
    }

