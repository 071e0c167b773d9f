"""Load the published model prices, price the events already stored, and build their conversations.

Frozen: the prices are those data/model_prices.json held when this migration
was written, and the pricing rule is a copy of the service's at that time, so
a later edit of either cannot change what this migration does to an older
database. It uses only the historical models of its own state.
"""

import fnmatch
from datetime import UTC, date, datetime
from decimal import Decimal

from django.db import migrations
from django.db.models import Count, Max, Min, Q

# (model_pattern, input, output, cached_input USD per million tokens, valid_from, source_url, source_as_of, notes)
PUBLISHED_PRICES = (
    ("gemini-1.5-flash*", "0.075", "0.30", "0.01875", "2024-08-12", "https://ai.google.dev/gemini-api/docs/pricing",
     "2024-10-03", "The seed's default model."),
    ("gemini-1.5-flash-8b*", "0.0375", "0.15", "0.01", "2024-10-03", "https://ai.google.dev/gemini-api/docs/pricing",
     "2024-10-03", ""),
    ("gemini-1.5-pro*", "1.25", "5.00", "0.3125", "2024-10-01", "https://ai.google.dev/gemini-api/docs/pricing",
     "2024-10-03", ""),
    ("gemini-2.0-flash*", "0.10", "0.40", "0.025", "2025-02-05", "https://ai.google.dev/gemini-api/docs/pricing",
     "2025-02-05", ""),
    ("gemini-2.0-flash-lite*", "0.075", "0.30", None, "2025-02-25", "https://ai.google.dev/gemini-api/docs/pricing",
     "2025-02-25", ""),
    ("gemini-2.5-flash*", "0.30", "2.50", "0.075", "2025-06-17", "https://ai.google.dev/gemini-api/docs/pricing",
     "2025-06-17", ""),
    ("gpt-4o-mini*", "0.15", "0.60", "0.075", "2024-07-18", "https://openai.com/api/pricing/", "2024-10-01", ""),
    ("gpt-4o*", "2.50", "10.00", "1.25", "2024-10-01", "https://openai.com/api/pricing/", "2024-10-01", ""),
    ("gpt-4.1-mini*", "0.40", "1.60", "0.10", "2025-04-14", "https://openai.com/api/pricing/", "2025-04-14", ""),
    ("claude-3-5-haiku*", "0.80", "4.00", "0.08", "2024-11-04", "https://www.anthropic.com/pricing", "2024-11-04",
     "Cached input is the cache read price."),
    ("claude-3-5-sonnet*", "3.00", "15.00", "0.30", "2024-06-20", "https://www.anthropic.com/pricing", "2024-10-22",
     "Cached input is the cache read price."),
    ("claude-sonnet-4*", "3.00", "15.00", "0.30", "2025-05-22", "https://www.anthropic.com/pricing", "2025-05-22",
     "Cached input is the cache read price."),
)
MILLION = Decimal(1_000_000)
CHUNK = 2000


def published_prices():
    """PUBLISHED_PRICES as ModelPrice field values."""
    for pattern, price_in, price_out, cached, valid_from, url, as_of, notes in PUBLISHED_PRICES:
        yield {
            "model_pattern": pattern,
            "input_usd_per_mtok": Decimal(price_in),
            "output_usd_per_mtok": Decimal(price_out),
            "cached_input_usd_per_mtok": Decimal(cached) if cached is not None else None,
            "valid_from": datetime.fromisoformat(valid_from).replace(tzinfo=UTC),
            "source_url": url,
            "source_as_of": date.fromisoformat(as_of),
            "notes": notes,
        }


def price_table(ModelPrice):
    """(pattern, valid_from, input, output) rows: most specific pattern first (exact, then longer), newest first."""
    rows = [
        (pattern.lower(), start, price_in, price_out)
        for pattern, start, price_in, price_out in ModelPrice.objects.order_by("id").values_list(
            "model_pattern", "valid_from", "input_usd_per_mtok", "output_usd_per_mtok"
        )
    ]

    def rank(row):
        exact = not any(ch in row[0] for ch in "*?[")
        return (1 if exact else 0, len(row[0])), row[1]

    return sorted(rows, key=rank, reverse=True)


def price_for(table, model_name, at):
    """The row in force at `at` for this model name, or None (the model is unpriced)."""
    if not model_name:
        return None
    name = model_name.lower()
    for pattern, start, price_in, price_out in table:
        if fnmatch.fnmatchcase(name, pattern) and start <= at:
            return price_in, price_out
    return None


def cost_of(event, price):
    """(analytics cost, cost basis) of one event under `price` (None: the model is unpriced)."""
    if price is None:
        client = event["api_cost_usd"]
        return (None, "none") if client is None else (Decimal(client), "client")
    price_in, price_out = price
    total, tokens_in, tokens_out = event["tokens_used"], event["input_tokens"], event["output_tokens"]
    if tokens_in is not None and tokens_out is None and total is not None and total >= tokens_in:
        tokens_out = total - tokens_in
    elif tokens_out is not None and tokens_in is None and total is not None and total >= tokens_out:
        tokens_in = total - tokens_out
    if tokens_in is not None and tokens_out is not None:
        return (tokens_in * price_in + tokens_out * price_out) / MILLION, "tokens"
    return Decimal(total or 0) * price_in / MILLION, "estimated"


def price_stored_events(AIMetric, table):
    """Set cost_usd and cost_basis of every stored event, walking the rows by id in chunks."""
    fields = ("id", "model_name", "timestamp", "tokens_used", "input_tokens", "output_tokens", "api_cost_usd")
    last_id = 0
    while True:
        rows = list(
            AIMetric.objects.filter(id__gt=last_id).order_by("id").values(*fields, "cost_usd", "cost_basis")[:CHUNK]
        )
        if not rows:
            return
        last_id = rows[-1]["id"]
        updates = []
        for row in rows:
            cost, basis = cost_of(row, price_for(table, row["model_name"], row["timestamp"]))
            if cost != row["cost_usd"] or basis != row["cost_basis"]:
                updates.append(AIMetric(id=row["id"], cost_usd=cost, cost_basis=basis))
        AIMetric.objects.bulk_update(updates, ["cost_usd", "cost_basis"], batch_size=500)


def load_prices_and_backfill(apps, schema_editor):
    ModelPrice = apps.get_model("metrics_app", "ModelPrice")
    AIMetric = apps.get_model("metrics_app", "AIMetric")
    Conversation = apps.get_model("metrics_app", "Conversation")
    for values in published_prices():
        ModelPrice.objects.get_or_create(
            model_pattern=values["model_pattern"], valid_from=values["valid_from"], defaults=values
        )
    price_stored_events(AIMetric, price_table(ModelPrice))

    grouped = (
        AIMetric.objects.exclude(conversation_id__isnull=True).exclude(conversation_id="")
        .values("business_id", "conversation_id")
        .annotate(
            first=Min("timestamp"), last=Max("timestamp"), turns=Count("id"),
            requested=Count("id", filter=Q(appointment_requested=True)),
            booked=Count("id", filter=Q(appointment_booked=True)),
            handoff=Count("id", filter=Q(human_handoff_requested=True)),
        )
        .order_by()
    )
    Conversation.objects.bulk_create(
        [
            Conversation(
                business_id=row["business_id"], conversation_id=row["conversation_id"],
                first_at=row["first"], last_at=row["last"], turns=row["turns"],
                appointment_requested=row["requested"] > 0, appointment_booked=row["booked"] > 0,
                human_handoff_requested=row["handoff"] > 0, outcome_note="",
            )
            for row in grouped.iterator(chunk_size=5000)
        ],
        batch_size=5000,
        ignore_conflicts=True,
    )


class Migration(migrations.Migration):
    dependencies = [("metrics_app", "0003_analytics_costs_conversations")]

    operations = [migrations.RunPython(load_prices_and_backfill, migrations.RunPython.noop)]
