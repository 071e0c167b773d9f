"""The README's weekly-digest commands work as written: on a new database with one subscribed user, they list and
send that user's digest, and the file backend writes it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

README = (ROOT / "README.md").read_text(encoding="utf-8")
SUBSCRIBE = (
    "from django.contrib.auth.models import User; from metrics_app.models import Business, StaffBusinessAccess; "
    "b = Business.objects.create(id='acme-dental', name='Acme Dental', time_zone='Europe/London'); "
    "u = User.objects.create_user('owner', 'owner@example.com', 'x', is_staff=True); "
    "StaffBusinessAccess.objects.create(user=u, business=b)"
)


def _section_commands() -> list[str]:
    section = README.split("\n## The weekly digest\n", 1)[1].split("\n## ", 1)[0]
    return [line.strip().partition("  #")[0].strip() for line in section.splitlines()
            if re.match(r"    (EMAIL_BACKEND=\S+ )?\.venv/bin/", line)]


def _run(line: str, env: dict[str, str]) -> str:
    done = subprocess.run(["/bin/sh", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{line!r}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_readme_digest_commands_list_and_send_as_written(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("EMAIL_", "MLOPS_", "DATABASE"))}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'readme.sqlite3'}", EMAIL_FILE_PATH=str(tmp_path / "mail"))
    python = sys.executable
    _run(f"{python} manage.py migrate --noinput", env)
    _run(f"{python} manage.py shell -c \"{SUBSCRIBE}\"", env)
    commands = _section_commands()
    assert [c.split("manage.py ", 1)[1] for c in commands] == ["send_weekly_digests --dry-run",
                                                               "send_weekly_digests"]

    listed = _run(commands[0], env)
    sent = _run(commands[1], env)
    again = _run(commands[1], env)

    assert "acme-dental, week of " in listed and "owner@example.com" in listed
    assert sent.startswith("1 digests sent (1 messages)") and again.startswith("0 digests sent")
    (written,) = (tmp_path / "mail").iterdir()
    mail = written.read_text()
    assert "Subject: Weekly digest: Acme Dental," in mail and "Content-Type: image/png" in mail
