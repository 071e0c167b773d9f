"""Configuration from the environment: a bad value stops start-up naming the variable."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys

import pytest

from tests.helpers import ROOT

GOOD_SECRET = "x" * 50
PRODUCTION = {
    "MLOPS_ENV": "production",
    "SECRET_KEY": GOOD_SECRET,
    "ALLOWED_HOSTS": "mlops.example.com",
    "CORS_ALLOWED_ORIGINS": "https://chat.example.com",
}


def load_settings(env: dict[str, str], tmp_path, expr: str = "settings.DATABASES['default']['ENGINE']"):
    """Import the settings in a fresh process; (exit code, output)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "DATABASE_URL", "DEBUG", "PORT"))}
    clean.update({"MLOPS_ENV_FILE": str(tmp_path / "absent.env"), "DJANGO_SETTINGS_MODULE": "mlops_site.settings"})
    clean.update(env)
    code = f"import django; from django.conf import settings; django.setup(); print(({expr}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True)
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
        ({"CORS_ALLOWED_ORIGINS": "chat.example.com"}, "CORS_ALLOWED_ORIGINS"),
        ({"MLOPS_KEY_RATE_LIMIT_PER_MINUTE": "0"}, "MLOPS_KEY_RATE_LIMIT_PER_MINUTE"),
    ],
)
def test_a_bad_value_stops_start_up_with_a_message_naming_the_variable(tmp_path, env, variable):
    code, output = load_settings(env, tmp_path)
    assert code != 0
    assert "ImproperlyConfigured" in output and variable in output


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
    code, output = load_settings({**PRODUCTION, **change}, tmp_path)
    assert code != 0
    assert "refuses insecure settings" in output and problem in output


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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "DATABASE_URL", "DEBUG", "SECURE_"))}
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
