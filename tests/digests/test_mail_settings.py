"""The mail settings come from the environment: sensible defaults per environment, a bad value named at start-up."""

from __future__ import annotations

import pytest

from tests.site.test_settings import PRODUCTION, load_settings

pytestmark = pytest.mark.slow  # each case imports the settings in a fresh process

EXPR = "settings.EMAIL_BACKEND, settings.MLOPS_WEEKLY_DIGEST, str(settings.EMAIL_FILE_PATH)"


def _clean(env: dict[str, str]) -> dict[str, str]:
    # The run's own mail variables must not leak into the fresh process.
    return {"EMAIL_BACKEND": "", "EMAIL_FILE_PATH": "", **env}


def test_development_prints_mail_and_production_sends_it_by_smtp_with_the_digest_off(tmp_path):
    code, development = load_settings(_clean({}), tmp_path, EXPR)
    assert code == 0, development
    assert "console.EmailBackend', False" in development and development.strip().endswith("data/mail')")

    code, production = load_settings(_clean(PRODUCTION), tmp_path, EXPR)
    assert code == 0, production
    assert "smtp.EmailBackend', False" in production


def test_a_short_backend_name_and_the_switch_are_read(tmp_path):
    code, output = load_settings(_clean({"EMAIL_BACKEND": "file", "MLOPS_WEEKLY_DIGEST": "on",
                                         "EMAIL_FILE_PATH": str(tmp_path / "mail")}), tmp_path, EXPR)

    assert code == 0, output
    assert f"filebased.EmailBackend', True, '{tmp_path / 'mail'}'" in output


@pytest.mark.parametrize(("env", "variable"), [
    ({"EMAIL_BACKEND": "smpt"}, "EMAIL_BACKEND"),
    ({"EMAIL_PORT": "twenty-five"}, "EMAIL_PORT"),
    ({"EMAIL_USE_TLS": "sometimes"}, "EMAIL_USE_TLS"),
    ({"MLOPS_WEEKLY_DIGEST": "weekly"}, "MLOPS_WEEKLY_DIGEST"),
])
def test_a_bad_mail_value_stops_start_up_naming_the_variable(tmp_path, env, variable):
    code, output = load_settings(_clean(env), tmp_path)

    assert code != 0 and "ImproperlyConfigured" in output and variable in output
