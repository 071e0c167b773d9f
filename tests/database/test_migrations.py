"""`migrate` works from an empty database and from a database at every released migration.

Each migration runs only its own frozen code, so a later change to the
service's modules cannot change what an old migration does: the rows it
leaves are checked against what today's code computes for the same events.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from metrics_app.folding import services as folding
from metrics_app.models import AIMetric, Conversation, ConversationRollup, EventRollup, LatencySketch, ModelPrice
from metrics_app.models import StaffBusinessAccess as Access
from metrics_app.pricing import services as pricing
from tests.helpers import ROOT

PROJECT_PACKAGES = ("metrics_app", "documents_app", "mlops_site", "tests")
APPS = ("metrics_app", "documents_app")
AT = datetime(2025, 3, 4, 9, 7, tzinfo=UTC)

pytestmark = pytest.mark.django_db(transaction=True)


def released(app: str) -> list[str]:
    loader = MigrationLoader(None, ignore_no_migrations=True)
    return sorted(name for label, name in loader.disk_migrations if label == app)


def migrate(targets: list[tuple[str, str | None]]) -> Any:
    """Migrate to `targets`; the historical app registry of the state reached."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    named = [(label, name) for label, name in targets if name is not None]
    return executor.loader.project_state(named).apps


def latest() -> list[tuple[str, str | None]]:
    graph = MigrationLoader(None, ignore_no_migrations=True).graph
    return [node for node in graph.leaf_nodes() if node[0] in APPS]


@pytest.fixture
def back_to_latest() -> Iterator[None]:
    yield
    migrate(latest())
    _leave_this_months_partitions()


def _leave_this_months_partitions() -> None:
    """PostgreSQL: drop the month partitions made for this test's old events, and those made since them.

    Migration 0019 makes a partition for each month of the events it finds, and `migrate` then makes every
    month from there until two months ahead. The tests after this one would otherwise plan every query of
    ai_metrics over two years of empty partitions. Its rows are about to be flushed anyway.
    """
    from metrics_app.retention import partitions

    if not partitions.is_partitioned():
        return
    with connection.cursor() as cursor:
        for partition in partitions.partitions():
            if not partition.is_default:
                cursor.execute(f"DROP TABLE {connection.ops.quote_name(partition.name)}")
    partitions.ensure()


# (business, conversation, minutes after AT, model, tokens_used, input, output, api cost, flags)
EVENTS: list[tuple[str, str | None, int, str | None, int | None, int | None, int | None, str | None, str]] = [
    ("clinic-a", "c1", 0, "gemini-1.5-flash-002", 1000, 700, 300, "0.5", "requested"),
    ("clinic-a", "c1", 3, "gemini-1.5-flash-002", 900, 900, None, None, "requested booked"),
    ("clinic-a", "c2", 16, "GPT-4o-2024-08-06", 2000, None, None, None, "error"),
    ("clinic-a", None, 40, "house-model", 10, None, None, "0.01", ""),
    ("clinic-b", "c1", 95, None, None, None, None, None, "handoff failed"),
    ("clinic-b", "c3", 60 * 24 + 5, "claude-3-5-haiku-latest", 400, 100, 300, None, "requested"),
]


def historical_price_table(apps: Any) -> pricing.PriceTable:
    """The price table of a past state: its events carry no cached tokens, so the base prices price them."""
    rows = apps.get_model("metrics_app", "ModelPrice").objects.order_by("id").values_list(
        "id", "model_pattern", "valid_from", "input_usd_per_mtok", "output_usd_per_mtok"
    )
    return pricing.PriceTable(pricing.Price(i, p.lower(), start, pin, pout) for i, p, start, pin, pout in rows)


def put_events(apps: Any, state: set[str]) -> None:
    """The events (and what the service kept beside them at that state) of EVENTS, with historical models."""
    Business = apps.get_model("metrics_app", "Business")
    Event = apps.get_model("metrics_app", "AIMetric")
    priced = "0004_published_prices_and_backfill" in state
    table = historical_price_table(apps) if priced else None
    for business_id in ("clinic-a", "clinic-b"):
        Business.objects.create(id=business_id)
    for n, (business_id, conversation, minutes, model, tokens, tokens_in, tokens_out, cost, flags) in enumerate(EVENTS):
        values: dict[str, Any] = {
            "business_id": business_id, "conversation_id": conversation, "timestamp": AT + timedelta(minutes=minutes),
            "response_time_ms": None if "error" in flags else 250 + 100 * n, "model_name": model,
            "success_rate": Decimal(0) if "failed" in flags else Decimal("0.9"),
            "response_type": "error" if "error" in flags else "answer", "tokens_used": tokens,
            "input_tokens": tokens_in, "output_tokens": tokens_out,
            "api_cost_usd": None if cost is None else Decimal(cost),
            "appointment_requested": "requested" in flags, "appointment_booked": "booked" in flags,
            "human_handoff_requested": "handoff" in flags,
        }
        if table is not None:  # priced at ingest, as the service did from 0004 on
            price = table.price_for(model, values["timestamp"])
            values["cost_usd"], values["cost_basis"] = pricing.cost_of(values, price)
        Event.objects.create(**values)
    if priced:
        put_conversations(apps)
    if "0009_folder_state_totals_rate_limit_slots" in state:  # from 0009 on the folder says what it has folded
        highest = Event.objects.order_by("-id").values_list("id", flat=True).first()
        apps.get_model("metrics_app", "FolderState").objects.update_or_create(
            name="events", defaults={"folded_through": highest}
        )


def expected_conversations() -> dict[tuple[str, str], dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for business_id, conversation, minutes, *_, flags in EVENTS:
        if conversation is None:
            continue
        at = AT + timedelta(minutes=minutes)
        row = rows.setdefault((business_id, conversation), {"first_at": at, "last_at": at, "turns": 0,
                                                            "appointment_requested": False,
                                                            "appointment_booked": False,
                                                            "human_handoff_requested": False})
        row["first_at"], row["last_at"] = min(row["first_at"], at), max(row["last_at"], at)
        row["turns"] += 1
        row["appointment_requested"] |= "requested" in flags
        row["appointment_booked"] |= "booked" in flags
        row["human_handoff_requested"] |= "handoff" in flags
    return rows


def put_conversations(apps: Any) -> None:
    Stored = apps.get_model("metrics_app", "Conversation")
    for (business_id, conversation), values in expected_conversations().items():
        Stored.objects.create(business_id=business_id, conversation_id=conversation, **values)


def stored_conversations() -> dict[tuple[str, str], dict[str, Any]]:
    fields = ("first_at", "last_at", "turns", "appointment_requested", "appointment_booked", "human_handoff_requested")
    return {
        (row["business_id"], row["conversation_id"]): {name: row[name] for name in fields}
        for row in Conversation.objects.values("business_id", "conversation_id", *fields)
    }


def rollup_rows() -> dict[str, set[tuple[Any, ...]]]:
    def rows(model: Any) -> set[tuple[Any, ...]]:
        names = [f.name for f in model._meta.concrete_fields if f.name != "id"]
        return {tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                for row in model.objects.values_list(*names)}

    return {model.__name__: rows(model) for model in (EventRollup, LatencySketch, ConversationRollup)}


def assert_events_kept_and_priced_as_today() -> None:
    table = pricing.table_from(ModelPrice.objects.all())
    events = list(AIMetric.objects.order_by("id").values())
    kept = [(e["business_id"], e["conversation_id"], e["timestamp"], e["model_name"]) for e in events]
    assert kept == [(b, c, AT + timedelta(minutes=m), model) for b, c, m, model, *_ in EVENTS]
    for event in events:
        cost, basis = pricing.cost_of(event, table.price_for(event["model_name"], event["timestamp"]))
        assert (event["cost_usd"], event["cost_basis"]) == (cost, basis)
    flash = events[0]
    assert flash["cost_basis"] == "tokens"
    assert flash["cost_usd"] == (700 * Decimal("0.075") + 300 * Decimal("0.30")) / 1_000_000


def as_stored(price: dict[str, Any]) -> dict[str, Any]:
    """A price's field values as the database keeps them: decimals at the column's places."""
    def column(name: str, value: Any) -> Any:
        if not isinstance(value, Decimal):
            return value
        places = ModelPrice._meta.get_field(name).decimal_places  # type: ignore[union-attr]  # decimal columns only
        return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)

    return {name: column(name, value) for name, value in price.items()}


def test_an_empty_database_migrates_from_zero_and_ships_the_published_prices(back_to_latest):
    migrate([(app, None) for app in APPS])
    assert not {"ai_metrics", "mlops_model_price"} & set(connection.introspection.table_names())

    migrate(latest())

    assert MigrationExecutor(connection).migration_plan(latest()) == []
    shipped = {(p["model_pattern"], p["valid_from"]): as_stored(p) for p in pricing.published_prices()}
    fields = next(iter(shipped.values()))
    stored = {(p["model_pattern"], p["valid_from"]): p for p in ModelPrice.objects.values(*fields)}
    assert len(stored) == 12
    assert stored == shipped
    assert rollup_rows() == {"EventRollup": set(), "LatencySketch": set(), "ConversationRollup": set()}


@pytest.mark.parametrize(("app", "name"), [(app, name) for app in APPS for name in released(app)])
def test_a_database_at_a_released_migration_migrates_forward_keeping_its_rows(app, name, back_to_latest):
    migrate([(label, None) for label in APPS])
    apps = migrate([(app, name)])
    applied = MigrationRecorder(connection).applied_migrations()
    state = {migration for label, migration in applied if label == "metrics_app"}
    put_events(apps, state)
    User = apps.get_model("auth", "User")
    User.objects.create(username="staff-before", is_staff=True)

    migrate(latest())

    assert_events_kept_and_priced_as_today()
    conversations = stored_conversations()
    assert conversations == expected_conversations()
    # 0010 and 0013 changed what the rollups hold: they ask for the rebuild that start.sh runs after migrating.
    layout_changes = {"0010_rollups_per_dimension_value_and_packed_sketches", "0014_user_sentiment"}
    assert folding.rebuild_needed() == (not layout_changes <= state)
    call_command("rebuild_analytics", "--if-needed", "--quiet-progress", stdout=StringIO())
    assert not folding.rebuild_needed()
    folding.fold_pending()  # nothing is left to fold: the conversations are kept, not counted twice
    assert stored_conversations() == conversations
    if "0010_rollups_per_dimension_value_and_packed_sketches" not in state:  # rebuilt as 0010 asked
        built = rollup_rows()
        assert built["EventRollup"] and built["LatencySketch"] and built["ConversationRollup"]
        call_command("rebuild_analytics", "--quiet-progress", stdout=StringIO())
        assert rollup_rows() == built
    if "0007_staff_access_explicit_grants" not in state:  # staff who saw everything keep an explicit grant
        grants = Access.objects.filter(user__username="staff-before").values_list("business_id", flat=True)
        assert list(grants) == [None]


def live_imports(path: Path) -> list[str]:
    """The project modules a migration imports for anything but a field's `validators`."""
    tree = ast.parse(path.read_text(), str(path))
    imported: dict[str, str] = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PROJECT_PACKAGES:
            found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PROJECT_PACKAGES:
                    if alias.asname or node.col_offset:
                        found.append(f"line {node.lineno}: import {alias.name}")
                    imported[alias.name.split(".")[0]] = alias.name
    # A validator named in a field's definition is stored, not run, by the migration.
    validators = {id(n) for kw in ast.walk(tree) if isinstance(kw, ast.keyword) and kw.arg == "validators"
                  for n in ast.walk(kw.value)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in imported and id(node) not in validators:
            found.append(f"line {node.lineno}: {imported[node.id]} used outside a field's validators")
    return found


def test_no_migration_imports_the_services_live_code():
    modules = sorted(path for app in APPS for path in (ROOT / app / "migrations").glob("*.py"))
    assert len(modules) > len(APPS)
    offenders = {str(path.relative_to(ROOT)): found for path in modules if (found := live_imports(path))}
    assert offenders == {}
