"""Configuration from the environment: a bad value stops start-up naming the variable, and production refuses
insecure settings in every command and in gunicorn before it serves."""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, start_service

GOOD_SECRET = "x" * 50
PRODUCTION = {
    "MLOPS_ENV": "production",
    "SECRET_KEY": GOOD_SECRET,
    "ALLOWED_HOSTS": "mlops.example.com",
    "CORS_ALLOWED_ORIGINS": "https://chat.example.com",
}


def environment(env: dict[str, str], tmp_path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "DATABASE_", "DEBUG", "PORT"))}
    clean.update({"MLOPS_ENV_FILE": str(tmp_path / "absent.env"), "DJANGO_SETTINGS_MODULE": "mlops_site.settings"})
    clean.update(env)
    return clean


def load_settings(env: dict[str, str], tmp_path, expr: str = "settings.DATABASES['default']['ENGINE']"):
    """Import the settings in a fresh process; (exit code, output)."""
    code = f"import django; from django.conf import settings; django.setup(); print(({expr}))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment(env, tmp_path), capture_output=True, text=True
    )
    return result.returncode, result.stdout + result.stderr


def run_command(env: dict[str, str], tmp_path, *command: str):
    """Run a `manage.py` command in a fresh process, as an operator would; (exit code, output)."""
    result = subprocess.run(
        [sys.executable, "manage.py", *command], cwd=ROOT, env=environment(env, tmp_path),
        capture_output=True, text=True,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"MLOPS_ENV": "staging"}, "MLOPS_ENV"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u@h/db", "DATABASE_POOLING": "statement"}, "DATABASE_POOLING"),
        ({"DATABASE_POOLING": "transaction"}, "DATABASE_POOLING"),  # the default SQLite file has no pooler
        ({"CORS_ALLOWED_ORIGINS": "chat.example.com"}, "CORS_ALLOWED_ORIGINS"),
        ({"MLOPS_KEY_RATE_LIMIT_PER_MINUTE": "0"}, "MLOPS_KEY_RATE_LIMIT_PER_MINUTE"),
        ({"DATABASE_REPLICA_URL": "postgresql://app@replica.internal/mlops"}, "DATABASE_REPLICA_URL"),  # SQLite
        ({"DATABASE_URL": "postgresql://app@db/mlops", "DATABASE_REPLICA_URL": "not a url"}, "DATABASE_REPLICA_URL"),
        ({"DATABASE_REPLICA_MAX_LAG_SECONDS": "-1"}, "DATABASE_REPLICA_MAX_LAG_SECONDS"),
    ],
)
def test_a_bad_value_stops_start_up_with_a_message_naming_the_variable(tmp_path, env, variable):
    code, output = load_settings(env, tmp_path)
    assert code != 0
    assert "ImproperlyConfigured" in output and variable in output
    # manage.py and gunicorn say it in one line, without a traceback.
    code, output = run_command(env, tmp_path, "check")
    assert code == 1
    assert output.startswith("manage.py: configuration error: ") and variable in output
    assert "Traceback" not in output


def test_gunicorn_names_a_bad_value_of_its_own_variables_in_one_line(tmp_path):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "gunicorn"), "mlops_site.wsgi", "--config", "gunicorn.conf.py", "--check-config"],
        cwd=ROOT, env=environment({"GUNICORN_THREADS": "several"}, tmp_path), capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "gunicorn.conf.py: configuration error: GUNICORN_THREADS must be an integer" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"DEBUG": "true"}, "DEBUG"),
        ({"CORS_ALLOWED_ORIGINS": "*"}, "CORS_ALLOWED_ORIGINS"),
        ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS"),
        ({"MLOPS_ALLOW_ANONYMOUS_CHAT": "true"}, "MLOPS_ALLOW_ANONYMOUS_CHAT"),
    ],
)
def test_production_refuses_insecure_settings(tmp_path, change, problem):
    code, output = run_command({**PRODUCTION, **change}, tmp_path, "check")
    assert code != 0
    assert "SystemCheckError" in output
    assert "MLOPS_ENV=production refuses insecure settings: " + problem in output


def test_production_refuses_insecure_settings_before_migrating(tmp_path):
    database = tmp_path / "refused.sqlite3"
    env = {**PRODUCTION, "DEBUG": "true", "DATABASE_URL": f"sqlite:///{database}"}
    code, output = run_command(env, tmp_path, "migrate", "--noinput")
    assert code != 0
    assert "MLOPS_ENV=production refuses insecure settings: DEBUG must be off" in output
    with sqlite3.connect(database) as stored:
        assert stored.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == []


def test_development_allows_what_production_refuses(tmp_path):
    assert run_command({"DEBUG": "true", "CORS_ALLOWED_ORIGINS": "*"}, tmp_path, "check")[0] == 0


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MLOPS_METRICS_TOKEN": "too-short"}, "MLOPS_METRICS_TOKEN must be at least 16 characters when set"),
        (
            {"MLOPS_PROMETHEUS_MODELS": ",".join(f"model-{n}" for n in range(201))},
            "MLOPS_PROMETHEUS_MODELS may list at most 200 values of at most 100 characters",
        ),
        (
            {"MLOPS_PROMETHEUS_INTENTS": "x" * 101},
            "MLOPS_PROMETHEUS_INTENTS may list at most 200 values of at most 100 characters",
        ),
    ],
)
def test_prometheus_settings_that_would_expose_or_flood_metrics_are_refused(tmp_path, env, message):
    code, output = run_command(env, tmp_path, "check")
    assert code != 0
    assert message in output


def test_production_with_sound_settings_starts_and_needs_keys(tmp_path):
    code, output = load_settings(
        PRODUCTION, tmp_path, "settings.MLOPS_ALLOW_ANONYMOUS_CHAT, settings.HOST, settings.SESSION_COOKIE_SECURE"
    )
    assert code == 0, output
    assert output.strip() == "(False, '0.0.0.0', True)"


def test_production_sends_hsts_for_a_year_unless_turned_off_and_redirects_only_when_asked(tmp_path):
    expr = "settings.SECURE_HSTS_SECONDS, settings.SECURE_SSL_REDIRECT"
    assert load_settings(PRODUCTION, tmp_path, expr) == (0, "(31536000, False)\n")
    changed = {**PRODUCTION, "SECURE_HSTS_SECONDS": "0", "SECURE_SSL_REDIRECT": "true"}
    assert load_settings(changed, tmp_path, expr) == (0, "(0, True)\n")
    code, output = load_settings({**PRODUCTION, "SECURE_HSTS_SECONDS": "-1"}, tmp_path)
    assert code != 0 and "SECURE_HSTS_SECONDS" in output


def test_check_deploy_in_production_warns_only_of_what_the_readme_explains(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "DATABASE_", "DEBUG", "SECURE_"))}
    env.update(PRODUCTION, SECRET_KEY=secrets.token_urlsafe(50), MLOPS_ENV_FILE=str(tmp_path / "absent.env"),
               DATABASE_URL=f"sqlite:///{tmp_path / 'check.sqlite3'}")
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "ERROR"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reported = set(re.findall(r"\(([a-z_]+\.[WE]\d{3})\)", result.stdout + result.stderr))
    assert not reported & {"security.W004", "security.W009"}, reported
    readme = (ROOT / "README.md").read_text()
    assert {warning for warning in reported if f"`{warning}`" not in readme} == set()


def test_the_api_docs_are_closed_in_production_unless_opened(tmp_path):
    assert load_settings({}, tmp_path, "settings.MLOPS_PUBLIC_API_DOCS") == (0, "True\n")
    assert load_settings(PRODUCTION, tmp_path, "settings.MLOPS_PUBLIC_API_DOCS") == (0, "False\n")
    opened = {**PRODUCTION, "MLOPS_PUBLIC_API_DOCS": "true"}
    assert load_settings(opened, tmp_path, "settings.MLOPS_PUBLIC_API_DOCS") == (0, "True\n")


def test_development_defaults_to_sqlite_on_loopback_port_5000(tmp_path):
    code, output = load_settings(
        {}, tmp_path,
        "settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[1], settings.HOST, settings.PORT, settings.DEBUG",
    )
    assert code == 0, output
    assert output.strip() == "('sqlite3', '127.0.0.1', 5000, False)"


def test_a_postgresql_url_selects_postgresql(tmp_path):
    code, output = load_settings(
        {"DATABASE_URL": "postgresql://app:pw@db.internal:6543/mlops"}, tmp_path,
        "[settings.DATABASES['default'][k] for k in ('ENGINE', 'HOST', 'PORT', 'NAME', 'USER')]",
    )
    assert code == 0, output
    assert output.strip().endswith("postgresql', 'db.internal', 6543, 'mlops', 'app']")


def test_a_replica_url_adds_a_replica_database_that_reads_are_routed_to(tmp_path):
    code, output = load_settings(
        {"DATABASE_URL": "postgresql://app:pw@db.internal:6543/mlops",
         "DATABASE_REPLICA_URL": "postgresql://app:pw@replica.internal:6543/mlops"}, tmp_path,
        "[settings.DATABASES['replica'][k] for k in ('HOST', 'NAME')], settings.DATABASE_ROUTERS",
    )
    assert code == 0, output
    assert output.strip().endswith("(['replica.internal', 'mlops'], ['metrics_app.replica.Router'])")

def test_a_database_behind_a_transaction_pooler_reads_without_server_side_cursors(tmp_path):
    expr = "settings.DATABASES['default']['DISABLE_SERVER_SIDE_CURSORS']"
    url = "postgresql://app@pgbouncer.internal:6432/mlops"
    assert load_settings({"DATABASE_URL": url}, tmp_path, expr) == (0, "False\n")
    assert load_settings({"DATABASE_URL": url, "DATABASE_POOLING": "transaction"}, tmp_path, expr) == (0, "True\n")


@pytest.mark.parametrize("query", ["options=-c%20statement_timeout%3D5000", "assume_role=reporting"])
def test_connection_options_that_set_session_state_are_refused_behind_a_transaction_pooler(tmp_path, query):
    url = f"postgresql://app@pgbouncer.internal:6432/mlops?{query}"
    code, output = run_command({"DATABASE_URL": url, "DATABASE_POOLING": "transaction"}, tmp_path, "check")
    assert code == 1 and "metrics_app.E008" in output, output
    name = query.split("=", 1)[0]
    assert f"DATABASE_URL sets {name}" in output
    assert run_command({"DATABASE_URL": url}, tmp_path, "check")[0] == 0


def test_a_dotenv_file_is_read_and_the_environment_wins_over_it(tmp_path):
    env_file = tmp_path / "service.env"
    env_file.write_text("PORT=5123\nLOG_LEVEL=DEBUG\nCORS_ALLOWED_ORIGINS=https://from-file.example\n")
    code, output = load_settings(
        {"MLOPS_ENV_FILE": str(env_file), "PORT": "5999"}, tmp_path, "settings.PORT, settings.CORS_ALLOWED_ORIGINS"
    )
    assert code == 0, output
    assert output.strip() == "(5999, ['https://from-file.example'])"


@pytest.mark.django_db
def test_cors_allows_the_configured_chat_origin_only(client):
    allowed = client.options(
        "/track", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    )
    assert allowed["Access-Control-Allow-Origin"] == "http://localhost:3000"
    other = client.options(
        "/track", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "Access-Control-Allow-Origin" not in other


# --- gunicorn runs the system checks before it serves


def test_gunicorn_refuses_to_serve_an_insecure_production_configuration(transactional_db, tmp_path):
    insecure = {**PRODUCTION, "ALLOWED_HOSTS": "127.0.0.1", "DEBUG": "true"}
    with pytest.raises(RuntimeError) as refused:
        start_service(tmp_path, workers=1, extra_env=insecure)
    assert "gunicorn exited with 1" in str(refused.value)
    assert "MLOPS_ENV=production refuses insecure settings: DEBUG must be off" in str(refused.value)
    assert "Refusing to serve" in str(refused.value)


def test_gunicorn_serves_a_sound_production_configuration(live_service):
    service = live_service(workers=1, extra_env={**PRODUCTION, "ALLOWED_HOSTS": "127.0.0.1"})
    status, headers, body = service.request("GET", "/health")
    assert status == 200 and body["database"]["status"] == "ok"
    # Production's own headers: the service really runs with the production settings.
    assert service.request("POST", "/track", {"business_id": "acme"})[0] == 401


# --- Every variable is read by the typed helpers and documented


READERS = ("envstr", "envbool", "envint", "envchoice", "envlist", "envorigins")
ENTRY_POINTS = ("mlops_site/settings.py", "gunicorn.conf.py")


def variables_read(path: str) -> set[str]:
    return set(re.findall(rf"\b(?:{'|'.join(READERS)})\(\s*\"([A-Z0-9_]+)\"", (ROOT / path).read_text()))


def test_the_entry_points_read_the_environment_only_through_the_typed_helpers():
    for path in ENTRY_POINTS:
        source = (ROOT / path).read_text()
        assert not re.search(r"os\.(?:getenv|environ\.get)\(|os\.environ\[[^]]+\](?!\s*=)", source), path
    assert {"PORT", "DATABASE_URL"} <= variables_read("mlops_site/settings.py")
    assert {"WEB_CONCURRENCY", "GUNICORN_TIMEOUT"} <= variables_read("gunicorn.conf.py")


def test_every_variable_the_service_reads_is_in_the_readme_configuration_table():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    documented = {name for row in section.splitlines() if row.startswith("| `") for name in re.findall(
        r"`([A-Z0-9_]+)`", row.split("|")[1])}
    read = set().union(*(variables_read(path) for path in ENTRY_POINTS))
    assert read - documented == set()


def test_any_wsgi_server_is_refused_an_insecure_production_configuration(tmp_path):
    # Not only gunicorn with gunicorn.conf.py: loading the WSGI application itself refuses.
    env = environment({**PRODUCTION, "DEBUG": "true"}, tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", "import mlops_site.wsgi"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "MLOPS_ENV=production refuses insecure settings: DEBUG must be off" in result.stderr
    sound = subprocess.run(
        [sys.executable, "-c", "import mlops_site.wsgi"], cwd=ROOT, env=environment(PRODUCTION, tmp_path),
        capture_output=True, text=True, timeout=60,
    )
    assert sound.returncode == 0, sound.stderr
