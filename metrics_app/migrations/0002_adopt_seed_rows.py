"""Copy the rows of the seed's own `ai_metrics` table into the new schema.

Every row is kept, with its id. A value that breaks a range the new schema
enforces (a negative latency, say) is stored as NULL rather than dropping the
row; a success_rate outside 0..1 is clamped into it, and a missing one becomes
1, the seed's own default. Each adopted
row gets a fresh event_id, its `timestamp` is its `created_at` (the seed wrote
UTC), and each business id gets a Business row.
"""

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from django.core.management.color import no_style
from django.db import migrations

SEED_IMPORT_TABLE = "ai_metrics_seed_import"
CHUNK = 5000
SEED_COLUMNS = (
    "id", "business_id", "conversation_id", "session_id", "response_time_ms", "success_rate", "tokens_used",
    "api_cost_usd", "model_name", "intent_detected", "appointment_requested", "appointment_booked",
    "human_handoff_requested", "user_message_length", "ai_response_length", "response_type", "created_at",
)
LIMITS = {
    "response_time_ms": (0, 3_600_000),
    "tokens_used": (0, 10_000_000),
    "api_cost_usd": (0, 1000),
    "user_message_length": (0, 1_000_000),
    "ai_response_length": (0, 1_000_000),
}


def _within(name, value):
    if value is None or name not in LIMITS:
        return value
    low, high = LIMITS[name]
    return value if low <= value <= high else None


def _aware(value):
    if value is None:
        return datetime.now(UTC)
    if isinstance(value, str):  # SQLite hands back text
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _flag(value):
    return bool(value) if value is not None else False


def adopt_seed_rows(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if SEED_IMPORT_TABLE not in connection.introspection.table_names(cursor):
            return
    AIMetric = apps.get_model("metrics_app", "AIMetric")
    Business = apps.get_model("metrics_app", "Business")
    table = schema_editor.quote_name(SEED_IMPORT_TABLE)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT DISTINCT business_id FROM {table} WHERE business_id IS NOT NULL")
        businesses = [row[0] for row in cursor.fetchall()]
    Business.objects.bulk_create([Business(id=b) for b in businesses], ignore_conflicts=True)

    last_id = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {', '.join(SEED_COLUMNS)} FROM {table} WHERE id > %s ORDER BY id LIMIT %s", [last_id, CHUNK]
            )
            rows = cursor.fetchall()
        if not rows:
            break
        objects = []
        for row in rows:
            seed = dict(zip(SEED_COLUMNS, row))
            if seed["business_id"] is None:
                continue
            rate = seed["success_rate"]
            rate = Decimal(1) if rate is None else Decimal(str(rate))
            moment = _aware(seed["created_at"])
            objects.append(
                AIMetric(
                    id=seed["id"],
                    event_id=uuid.uuid4(),
                    business_id=seed["business_id"],
                    conversation_id=seed["conversation_id"],
                    session_id=seed["session_id"],
                    response_time_ms=_within("response_time_ms", seed["response_time_ms"]),
                    success_rate=rate if 0 <= rate <= 1 else Decimal(1 if rate > 1 else 0),
                    tokens_used=_within("tokens_used", seed["tokens_used"]),
                    api_cost_usd=_within("api_cost_usd", seed["api_cost_usd"]),
                    model_name=seed["model_name"],
                    intent_detected=seed["intent_detected"],
                    appointment_requested=_flag(seed["appointment_requested"]),
                    appointment_booked=_flag(seed["appointment_booked"]),
                    human_handoff_requested=_flag(seed["human_handoff_requested"]),
                    user_message_length=_within("user_message_length", seed["user_message_length"]),
                    ai_response_length=_within("ai_response_length", seed["ai_response_length"]),
                    response_type=seed["response_type"],
                    timestamp=moment,
                    created_at=moment,
                )
            )
        AIMetric.objects.bulk_create(objects)
        last_id = rows[-1][0]

    with connection.cursor() as cursor:
        for statement in connection.ops.sequence_reset_sql(no_style(), [AIMetric]):
            cursor.execute(statement)
    schema_editor.execute(f"DROP TABLE {table}")


class Migration(migrations.Migration):
    dependencies = [("metrics_app", "0001_initial")]

    operations = [migrations.RunPython(adopt_seed_rows, migrations.RunPython.noop)]
