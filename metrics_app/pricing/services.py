"""Model prices: which price is in force for an event, and what the event costs.

Rules (the contract's "Costs"):
- An event is priced by the ModelPrice row whose pattern matches its model name
  (case-insensitive glob) and that is in force at the event's `timestamp`
  (latest `valid_from` not after it). When several patterns match, the most
  specific wins: an exact name over a glob, then the longer pattern.
- With `input_tokens` and `output_tokens` the cost is input x input price +
  output x output price (basis "tokens"). Input tokens read from the prompt
  cache (`cache_read_input_tokens`) are priced at the cached-input price and
  those written to it (`cache_write_input_tokens`) at the cache-write price,
  each at the input price where the row has none; the rest of the input at
  the input price. Reasoning tokens are output and priced as output.
  `cache_savings_usd` is what the cache changed: the cached tokens at the
  input price minus what they cost (None for an event without cached tokens). When only one of the two is sent with
  `tokens_used`, the other is `tokens_used` minus it. With only `tokens_used`,
  every token is priced at the input price and the figure is marked
  "estimated" (a receptionist's prompt, with its instructions and knowledge
  base, is most of its tokens).
- A model with no price in force keeps the client's `api_cost_usd` as its cost
  (basis "client", or "none" when the client sent none); it is counted as
  unpriced, never priced at zero.

The table is cached in each process. At most every CHECK_EVERY_SECONDS an
ingest checks a cheap fingerprint (row count and last change) with one query
on the small price table, so a price edited in the admin applies within that
delay in every worker without a restart (at once in the process that saved it).
"""

from __future__ import annotations

import fnmatch
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from metrics_app.analytics import rollups
from metrics_app.models import CostBasis, ModelPrice

MILLION = Decimal(1_000_000)
PRICE_FILE = Path(settings.BASE_DIR) / "data" / "model_prices.json"
_MAX_CACHED_NAMES = 10_000


@dataclass(frozen=True)
class Price:
    id: int
    pattern: str
    valid_from: datetime
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None

    @property
    def cache_read_per_mtok(self) -> Decimal:
        """The price of an input token read from the cache: the cached-input price, else the input price."""
        return self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok

    @property
    def cache_write_rate_per_mtok(self) -> Decimal:
        """The price of an input token written to the cache: the cache-write price, else the input price."""
        return self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok

    @property
    def specificity(self) -> tuple[int, int]:
        exact = not any(ch in self.pattern for ch in "*?[")
        return (1 if exact else 0, len(self.pattern))


class PriceTable:
    """The price rows, with a per-model-name memo of the rows that match it."""

    def __init__(self, prices: Iterable[Price]) -> None:
        self.prices = list(prices)
        self._by_name: dict[str, list[Price]] = {}

    def _matching(self, model_name: str) -> list[Price]:
        name = model_name.lower()
        rows = self._by_name.get(name)
        if rows is None:
            rows = [p for p in self.prices if fnmatch.fnmatchcase(name, p.pattern)]
            # Most specific first, then the newest: the first row in force wins.
            rows.sort(key=lambda p: (p.specificity, p.valid_from), reverse=True)
            if len(self._by_name) >= _MAX_CACHED_NAMES:
                self._by_name.clear()  # free-text model names must not grow memory without bound
            self._by_name[name] = rows
        return rows

    def price_for(self, model_name: str | None, at: datetime) -> Price | None:
        if not model_name:
            return None
        for price in self._matching(model_name):
            if price.valid_from <= at:
                return price
        return None


def cost_of(event: dict[str, Any], price: Price | None) -> tuple[Decimal | None, str]:
    """(analytics cost, cost basis) of one event under `price` (None: the model is unpriced)."""
    cost, basis, _ = priced(event, price)
    return cost, basis


@dataclass(frozen=True, slots=True)
class TokenParts:
    """A priced event's tokens (or the sum over events) by the rate each is charged at.

    Pricing is linear in each part, so the cost of many events at one price is
    the cost of their summed parts.
    """

    fresh_input: int = 0  # input neither read from nor written to the cache: the input price
    cache_read: int = 0  # the cached-input price
    cache_write: int = 0  # the cache-write price
    output: int = 0  # reasoning included: the output price
    estimated: int = 0  # tokens_used of events sent without the split: the input price
    estimated_events: int = 0

    def __add__(self, other: TokenParts) -> TokenParts:
        return TokenParts(
            self.fresh_input + other.fresh_input, self.cache_read + other.cache_read,
            self.cache_write + other.cache_write, self.output + other.output, self.estimated + other.estimated,
            self.estimated_events + other.estimated_events,
        )

    @property
    def split_input(self) -> int:
        """The input tokens of the events sent with the split (fresh, read and written)."""
        return self.fresh_input + self.cache_read + self.cache_write

    def cost(self, price: Price) -> Decimal:
        return (
            (self.fresh_input + self.estimated) * price.input_per_mtok
            + self.cache_read * price.cache_read_per_mtok
            + self.cache_write * price.cache_write_rate_per_mtok
            + self.output * price.output_per_mtok
        ) / MILLION

    def cache_savings(self, price: Price) -> Decimal | None:
        """The cached tokens at the input price minus at their own prices; None when nothing was cached."""
        if not self.cache_read and not self.cache_write:
            return None
        cached = self.cache_read * price.cache_read_per_mtok + self.cache_write * price.cache_write_rate_per_mtok
        return ((self.cache_read + self.cache_write) * price.input_per_mtok - cached) / MILLION


def token_parts(event: dict[str, Any]) -> TokenParts:
    """The event's tokens by rate, as any price row charges them."""
    total = event.get("tokens_used")
    tokens_in = event.get("input_tokens")
    tokens_out = event.get("output_tokens")
    if tokens_in is not None and tokens_out is None and total is not None and total >= tokens_in:
        tokens_out = total - tokens_in
    elif tokens_out is not None and tokens_in is None and total is not None and total >= tokens_out:
        tokens_in = total - tokens_out
    if tokens_in is None or tokens_out is None:
        # Without the split there are no cached parts (they are only taken with input_tokens).
        return TokenParts(estimated=total or 0, estimated_events=1)
    read = event.get("cache_read_input_tokens") or 0
    write = event.get("cache_write_input_tokens") or 0
    return TokenParts(fresh_input=max(tokens_in - read - write, 0), cache_read=read, cache_write=write,
                      output=tokens_out)


def priced(event: dict[str, Any], price: Price | None) -> tuple[Decimal | None, str, Decimal | None]:
    """(analytics cost, cost basis, cache savings) of one event under `price` (None: the model is unpriced)."""
    if price is None:
        client = event.get("api_cost_usd")
        if client is None:
            return None, CostBasis.UNPRICED_NONE, None
        return Decimal(client), CostBasis.UNPRICED_CLIENT, None
    parts = token_parts(event)
    basis = CostBasis.ESTIMATED if parts.estimated_events else CostBasis.TOKENS
    return parts.cost(price), basis, parts.cache_savings(price)


_cache: tuple[tuple[int, Any], PriceTable] | None = None
_checked_at = float("-inf")
# Seconds between two looks at the price table's fingerprint. Looking on every
# request cost a query and half a millisecond of CPU per single-event /track;
# a price changed in another process applies within this delay (and
# reprice_events corrects anything priced in between).
CHECK_EVERY_SECONDS = 2.0


def _fingerprint() -> tuple[int, Any]:
    stats = ModelPrice.objects.aggregate(n=Count("id"), changed=Max("updated_at"))
    return stats["n"], stats["changed"]


def current_table() -> PriceTable:
    """The price table, reloaded when a row was added, changed or deleted."""
    global _cache, _checked_at
    now = time.monotonic()
    if _cache is not None and now - _checked_at < CHECK_EVERY_SECONDS:
        return _cache[1]
    fingerprint = _fingerprint()
    _checked_at = now
    if _cache is None or _cache[0] != fingerprint:
        _cache = (fingerprint, table_from(ModelPrice.objects.all()))
    return _cache[1]


@receiver([post_save, post_delete], sender=ModelPrice)
def forget_table(**kwargs: Any) -> None:
    """A price written by this process applies to its next event at once."""
    global _cache
    _cache = None


def price_events(events: list[dict[str, Any]], table: PriceTable | None = None) -> None:
    """Set `cost_usd` and `cost_basis` on each validated event, in place."""
    table = table or current_table()
    for event in events:
        price = table.price_for(event.get("model_name"), event["timestamp"])
        event["cost_usd"], event["cost_basis"], event["cache_savings_usd"] = priced(event, price)


def published_prices() -> list[dict[str, Any]]:
    """The published prices shipped in data/model_prices.json, as ModelPrice field values."""
    data = json.loads(PRICE_FILE.read_text())
    rows = []
    for item in data["prices"]:
        cached, write = item.get("cached_input"), item.get("cache_write_input")
        rows.append(
            {
                "model_pattern": item["model_pattern"],
                "input_usd_per_mtok": Decimal(item["input"]),
                "output_usd_per_mtok": Decimal(item["output"]),
                "cached_input_usd_per_mtok": Decimal(cached) if cached is not None else None,
                "cache_write_input_usd_per_mtok": Decimal(write) if write is not None else None,
                "valid_from": datetime.fromisoformat(item["valid_from"]).replace(tzinfo=UTC),
                "source_url": item["source_url"],
                "source_as_of": datetime.fromisoformat(item["source_as_of"]).date(),
                "notes": item.get("notes", ""),
            }
        )
    return rows


_PRICED_FIELDS = (
    "id", "model_name", "timestamp", "tokens_used", "input_tokens", "output_tokens", "cache_read_input_tokens",
    "cache_write_input_tokens", "api_cost_usd",
)
_PRICE_COLUMNS = ("cost_usd", "cost_basis", "cache_savings_usd")


def reprice(events: Any, table: PriceTable, chunk: int = 2000, progress: Any = None) -> tuple[int, int]:
    """Recompute cost_usd and cost_basis of the events in a queryset; (examined, changed).

    Walks the rows by id in chunks and writes only those whose figures change,
    moving the rollups' cost figures of the folded ones with them in the same transaction.
    """
    model = events.model
    examined = changed = 0
    last_id = 0
    while True:
        rows = list(
            events.filter(id__gt=last_id).order_by("id")
            .values(*_PRICED_FIELDS, "business_id", *_PRICE_COLUMNS, *rollups.DIMENSION_COLUMNS)[:chunk]
        )
        if not rows:
            return examined, changed
        last_id = rows[-1]["id"]
        examined += len(rows)
        if progress is not None:
            progress(len(rows))
        updates = []
        before, after = [], []
        for row in rows:
            figures = dict(zip(_PRICE_COLUMNS, priced(row, table.price_for(row["model_name"], row["timestamp"])),
                               strict=True))
            if any(figures[column] != row[column] for column in _PRICE_COLUMNS):
                updates.append(model(id=row["id"], **figures))
                before.append(row)
                after.append({**row, **figures})
        if updates:
            with transaction.atomic():
                # The rollups hold the folded events only; the folder prices the others as they now are.
                folded_through = rollups.folded_through(hold=True)
                model.objects.bulk_update(updates, list(_PRICE_COLUMNS), batch_size=500)
                folded = [i for i, row in enumerate(before) if row["id"] <= folded_through]
                if folded:
                    rollups.replace_costs([before[i] for i in folded], [after[i] for i in folded])
            changed += len(updates)


def table_from(prices: Any) -> PriceTable:
    """A PriceTable from a ModelPrice queryset."""
    rows = prices.order_by("id").values_list(
        "id", "model_pattern", "valid_from", "input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok",
        "cache_write_input_usd_per_mtok",
    )
    return PriceTable(
        Price(i, pattern.lower(), start, pin, pout, cached, write)
        for i, pattern, start, pin, pout, cached, write in rows
    )
