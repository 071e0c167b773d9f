"""`migrate` adopts a database that already holds the seed's own ai_metrics table, keeping every row."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from contextlib import closing
from decimal import Decimal

import psycopg2
import pytest
from django.db import connection

from tests.helpers import ROOT

SEED_DDL = """
CREATE TABLE IF NOT EXISTS ai_metrics (
    id SERIAL PRIMARY KEY,
    business_id VARCHAR(255) NOT NULL,
    conversation_id VARCHAR(255),
    session_id VARCHAR(255),
    response_time_ms INTEGER,
    success_rate DECIMAL(5,4),
    tokens_used INTEGER,
    api_cost_usd DECIMAL(10,6),
    model_name VARCHAR(100),
    intent_detected VARCHAR(100),
    appointment_requested BOOLEAN DEFAULT FALSE,
    appointment_booked BOOLEAN DEFAULT FALSE,
    human_handoff_requested BOOLEAN DEFAULT FALSE,
    user_message_length INTEGER,
    ai_response_length INTEGER,
    response_type VARCHAR(50),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)
"""
INSERT = """
INSERT INTO ai_metrics (business_id, conversation_id, session_id, response_time_ms, success_rate, tokens_used,
    api_cost_usd, model_name, intent_detected, appointment_requested, appointment_booked,
    human_handoff_requested, user_message_length, ai_response_length, response_type, created_at)
VALUES ({p})
"""
# What users of the seed have: ordinary rows, and the odd ones the seed let through.
SEED_ROWS = [
    ("test-business", "c1", "s1", 1500, Decimal("1.0"), 150, Decimal("0.002"), "gemini-1.5-flash", "general",
     False, False, False, 45, 120, "text", "2026-01-15 10:30:00"),
    ("test-business", "c1", "s1", 2100, Decimal("1.0"), 230, Decimal("0.003"), "gemini-1.5-flash", "booking",
     True, True, False, 60, 200, "appointment_booking", "2026-01-15 10:31:00"),
    ("salon-42", None, "s9", 30, Decimal("0.0"), 0, Decimal("0"), "gemini-1.5-flash", "error",
     False, False, True, 0, 0, "error", "2026-01-16 08:00:00"),
    ("salon-42", None, None, None, None, None, None, None, None, None, None, None, None, None, None,
     "2026-01-16 09:00:00"),
    ("salon-42", "c7", None, -40, Decimal("1.5"), -3, Decimal("5000"), "gpt-4o", "pricing",
     False, False, False, 10, 10, "text", "2026-01-17 12:00:00"),
]


def sqlite_database(tmp_path) -> tuple[str, callable]:
    path = tmp_path / "seed.sqlite3"
    with closing(sqlite3.connect(path)) as db:
        db.execute(SEED_DDL.replace("SERIAL PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT"))
        for row in SEED_ROWS:
            db.execute(INSERT.format(p=", ".join(["?"] * len(row))), [str(v) if isinstance(v, Decimal) else v for v in row])
        db.commit()

    def query(sql: str) -> list[tuple]:
        with closing(sqlite3.connect(path)) as db:
            return db.execute(sql).fetchall()

    return f"sqlite:///{path}", query


def postgres_database() -> tuple[str, callable]:
    s = connection.settings_dict
    name = f"seed_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host=s["HOST"], port=s["PORT"], user=s["USER"], dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    admin.close()
    dsn = dict(host=s["HOST"], port=s["PORT"], user=s["USER"], dbname=name)
    with closing(psycopg2.connect(**dsn)) as db, db.cursor() as cursor:
        cursor.execute(SEED_DDL)
        for row in SEED_ROWS:
            cursor.execute(INSERT.format(p=", ".join(["%s"] * len(row))), row)
        db.commit()

    def query(sql: str) -> list[tuple]:
        with closing(psycopg2.connect(**dsn)) as db, db.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()

    return f"postgresql://{s['USER']}@{s['HOST']}:{s['PORT']}/{name}", query


def manage(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url, "MLOPS_ENV": "development"}
    if url.startswith("sqlite:"):
        env["DATABASE_POOLING"] = "none"  # the PostgreSQL pass sets "transaction" for its PgBouncer
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.django_db
def test_migrate_adopts_the_seeds_table_and_keeps_every_row(tmp_path):
    url, query = postgres_database() if connection.vendor == "postgresql" else sqlite_database(tmp_path)

    result = manage(url, "migrate", "--noinput")
    assert result.returncode == 0, result.stderr

    rows = query(
        "SELECT id, business_id, conversation_id, response_time_ms, success_rate, tokens_used, api_cost_usd, "
        "model_name, appointment_booked, human_handoff_requested, response_type, event_id, timestamp "
        "FROM ai_metrics ORDER BY id"
    )
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert [r[1] for r in rows] == [row[0] for row in SEED_ROWS]
    first, booked, failed, empty, odd = rows
    assert (first[3], float(first[4]), first[5], float(first[6]), first[7]) == (
        1500, 1.0, 150, 0.002, "gemini-1.5-flash"
    )
    assert bool(booked[8]) is True
    assert bool(failed[9]) is True and failed[10] == "error"
    # A row with nothing in it is kept; a missing success_rate takes the seed's default of 1.
    assert (empty[3], empty[5], float(empty[4])) == (None, None, 1.0)
    # Values the new schema refuses are cleared, not the row: the latency, tokens and cost were impossible.
    assert (odd[3], odd[5], odd[6]) == (None, None, None)
    assert float(odd[4]) == 1.0
    # Every row has its own event id, and its timestamp is the seed's created_at.
    assert len({r[11] for r in rows}) == 5
    assert str(first[12]).startswith("2026-01-15 10:30:00")
    assert {r[0] for r in query("SELECT id FROM mlops_business")} == {"test-business", "salon-42"}
    tables = "SELECT name FROM sqlite_master" if url.startswith("sqlite") else "SELECT tablename FROM pg_tables"
    assert "ai_metrics_seed_import" not in {r[0] for r in query(tables)}

    # New events go on after the adopted ids.
    result = manage(
        url, "shell", "-c",
        "from metrics_app.ingest.services import record_events; from metrics_app.ingest.validation import check_event; "
        "record_events([check_event({'business_id': 'salon-42', 'response_time_ms': 5, 'tokens_used': 5}).values])",
    )
    assert result.returncode == 0, result.stderr
    assert query("SELECT MAX(id), COUNT(*) FROM ai_metrics")[0] == (6, 6)


@pytest.mark.django_db
def test_migrate_on_an_empty_database_creates_the_schema(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    result = manage(url, "migrate", "--noinput")
    assert result.returncode == 0, result.stderr
    assert manage(url, "migrate", "--check").returncode == 0


def test_every_model_change_has_its_migration():
    result = manage("sqlite:///:memory:", "makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
