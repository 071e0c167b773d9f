"""Load the published model prices, price the events already stored, and build their conversations."""

from django.db import migrations
from django.db.models import Count, Max, Min, Q


def load_prices_and_backfill(apps, schema_editor):
    from metrics_app.pricing import services as pricing

    ModelPrice = apps.get_model("metrics_app", "ModelPrice")
    AIMetric = apps.get_model("metrics_app", "AIMetric")
    Conversation = apps.get_model("metrics_app", "Conversation")
    for values in pricing.published_prices():
        ModelPrice.objects.get_or_create(
            model_pattern=values["model_pattern"], valid_from=values["valid_from"], defaults=values
        )
    pricing.reprice(AIMetric.objects.all(), pricing.table_from(ModelPrice.objects.all()), update_rollups=False)

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
